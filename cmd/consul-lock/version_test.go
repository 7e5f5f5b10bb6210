package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// runBin runs the binary with args and no agent, with env added to a
// scrubbed environment, in dir when not empty.
func runBin(t *testing.T, dir string, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("run consul-lock %q: %v", args, err)
	}
	return result{cmd.ProcessState.ExitCode(), out.String(), errOut.String()}
}

// cleanEnv is the environment without what changes how progress is shown
// and with no agent: the tests set what they test.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "TERM", "NO_COLOR", "COLUMNS", "CONSUL_HTTP_ADDR":
		default:
			env = append(env, kv)
		}
	}
	return append(env, "CONSUL_HTTP_ADDR=127.0.0.1:1")
}

// goVersionM is what `go version -m` reads from the binary: the Go
// version, the main module's version, and the VCS settings.
func goVersionM(t *testing.T) (goVersion, modVersion string, settings map[string]string) {
	t.Helper()
	out, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	settings = map[string]string{}
	for i, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case i == 0 && len(f) == 2:
			goVersion = f[1]
		case len(f) >= 3 && f[0] == "mod":
			modVersion = f[2]
		case len(f) == 2 && f[0] == "build":
			k, v, _ := strings.Cut(f[1], "=")
			settings[k] = v
		}
	}
	return goVersion, modVersion, settings
}

// `consul-lock version`, -version and --version print, on stdout and with
// exit status 0, the versions that `go version -m` reads from the binary,
// the revision or that none was recorded, and the pinned Consul; -json the
// same as JSON.
func TestVersion(t *testing.T) {
	goVer, modVer, settings := goVersionM(t)
	want := versionInfo{
		Version: modVer, Revision: settings["vcs.revision"], Time: settings["vcs.time"],
		Modified: settings["vcs.modified"] == "true", Go: goVer,
		Platform: settings["GOOS"] + "/" + settings["GOARCH"], Consul: "v1.16.3",
	}
	var text bytes.Buffer
	printVersion(&text, want)
	for _, args := range [][]string{{"version"}, {"-version"}, {"--version"}} {
		r := runBin(t, "", nil, args...)
		if r.code != 0 || r.errOut != "" || r.out != text.String() {
			t.Errorf("consul-lock %q exited %d, stdout %q, stderr %q; want 0 and %q", args, r.code, r.out, r.errOut, text.String())
		}
	}
	if !strings.Contains(text.String(), "consul    v1.16.3 ") || !strings.Contains(text.String(), goVer+" ") {
		t.Errorf("version text %q does not name Consul v1.16.3 and %s", text.String(), goVer)
	}
	if want.Revision == "" && !strings.Contains(text.String(), "revision  unknown") {
		t.Errorf("version text %q does not say the revision is unknown", text.String())
	}
	for _, args := range [][]string{{"version", "-json"}, {"-version", "-json"}} {
		r := runBin(t, "", nil, args...)
		var got versionInfo
		if err := json.Unmarshal([]byte(r.out), &got); err != nil || r.code != 0 {
			t.Fatalf("consul-lock %q exited %d, printed %q: %v", args, r.code, r.out, err)
		}
		if got != want {
			t.Errorf("consul-lock %q reported %+v, want %+v", args, got, want)
		}
	}
	if r := runBin(t, "", nil, "version", "extra"); r.code != exitUsage {
		t.Errorf("consul-lock version extra exited %d, want %d", r.code, exitUsage)
	}
}

// A build that recorded its revision prints it, with whether the checkout
// was modified and when it was committed. (go build records none in a git
// worktree, as this test's binary may be built.)
func TestPrintVersionRevision(t *testing.T) {
	var b bytes.Buffer
	printVersion(&b, versionInfo{Version: "v1.2.3", Revision: "abc123", Time: "2026-01-02T03:04:05Z", Modified: true, Go: "go1.26.8", Platform: "linux/amd64", Consul: "v1.16.3"})
	want := "consul-lock v1.2.3\nrevision  abc123 (modified), committed 2026-01-02T03:04:05Z\ngo        go1.26.8 linux/amd64\nconsul    v1.16.3 (the version dev, demo and bench start)\n"
	if b.String() != want {
		t.Errorf("printed %q, want %q", b.String(), want)
	}
}

// -h, -help, --help, help and help help print the usage on stdout and exit
// 0; no command at all is a usage error, with the usage on stderr.
func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"-help"}, {"--help"}, {"help"}, {"help", "help"}} {
		r := runBin(t, "", nil, args...)
		if r.code != 0 || r.errOut != "" || !strings.HasPrefix(r.out, "Usage: consul-lock COMMAND") {
			t.Errorf("consul-lock %q exited %d, stdout %q, stderr %q; want 0 and the usage on stdout", args, r.code, r.out, r.errOut)
		}
		for _, c := range append(commands, command{name: "help"}) {
			if !strings.Contains(r.out, "\n  "+c.name+" ") {
				t.Errorf("consul-lock %q does not list %s", args, c.name)
			}
		}
	}
	if r := runBin(t, "", nil); r.code != exitUsage || r.out != "" || !strings.HasPrefix(r.errOut, "Usage: consul-lock COMMAND") {
		t.Errorf("consul-lock exited %d, stdout %q, stderr %q; want %d and the usage on stderr", r.code, r.out, r.errOut, exitUsage)
	}
}

// `consul-lock help COMMAND` is `consul-lock COMMAND -h`: the same usage on
// stdout, nothing on stderr, exit status 0, for every command.
func TestHelpCommand(t *testing.T) {
	for _, c := range commands {
		help, h := runBin(t, "", nil, "help", c.name), runBin(t, "", nil, c.name, "-h")
		if help.code != 0 || help.errOut != "" || !strings.HasPrefix(help.out, "Usage: consul-lock "+c.name) {
			t.Errorf("consul-lock help %s exited %d, stdout %q, stderr %q; want 0 and its usage on stdout", c.name, help.code, help.out, help.errOut)
		}
		if help != h {
			t.Errorf("consul-lock help %s gave %+v, but %s -h %+v", c.name, help, c.name, h)
		}
	}
	for _, args := range [][]string{{"help", "stauts"}, {"help", "exec", "extra"}} {
		if r := runBin(t, "", nil, args...); r.code != exitUsage || r.out != "" {
			t.Errorf("consul-lock %q exited %d with stdout %q, want %d and nothing", args, r.code, r.out, exitUsage)
		}
	}
	// A mistake still prints the usage on stderr, not on stdout.
	r := runBin(t, "", nil, "status", "-no-such-flag")
	if r.code != exitUsage || r.out != "" || !strings.Contains(r.errOut, "Usage: consul-lock status") {
		t.Errorf("consul-lock status -no-such-flag exited %d, stdout %q, stderr %q; want %d and the usage on stderr", r.code, r.out, r.errOut, exitUsage)
	}
}

// An unknown command exits 64 and suggests the nearest command when it
// looks like a typo of one, else lists the commands.
func TestUnknownCommandSuggests(t *testing.T) {
	for typo, want := range map[string]string{
		"stauts": "status", "relase": "release", "lst": "list", "exce": "exec",
		"verison": "version", "hlep": "help", "benhc": "bench", "--versoin": "version",
	} {
		r := runBin(t, "", nil, typo)
		line := `consul-lock: unknown command "` + typo + `"; did you mean "` + want + `"?` + "\n"
		if r.code != exitUsage || r.out != "" || !strings.HasPrefix(r.errOut, line) {
			t.Errorf("consul-lock %s exited %d, stderr %q; want %d and %q", typo, r.code, r.errOut, exitUsage, line)
		}
	}
	for _, far := range []string{"xyzzy", "-v", "ls", "demo-sectio"} {
		r := runBin(t, "", nil, far)
		line := `consul-lock: unknown command "` + far + `"` + "\n\nUsage: consul-lock COMMAND"
		if r.code != exitUsage || !strings.HasPrefix(r.errOut, line) {
			t.Errorf("consul-lock %s exited %d, stderr %q; want %d and %q", far, r.code, r.errOut, exitUsage, line)
		}
	}
}

func TestLevenshtein(t *testing.T) {
	for _, c := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"", "abc", 3}, {"status", "status", 0}, {"stauts", "status", 2}, {"kitten", "sitting", 3}, {"exce", "exec", 2}} {
		if d := levenshtein(c.a, c.b); d != c.d {
			t.Errorf("levenshtein(%q, %q) = %d, want %d", c.a, c.b, d, c.d)
		}
	}
}
