// Package consulagent builds the pinned Consul and runs it on loopback: a dev
// agent or a cluster of servers, on free ports, for consullock's tests and
// for `consul-lock dev` and `consul-lock demo`.
package consulagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/consullock/consullock/internal/progress"
)

// Version is the Consul release that consullock is developed and tested
// against: v1.16.3, the newest under MPL-2.0. tools/consul/go.mod pins it.
const Version = "1.16.3"

// EnvBinary names an environment variable that, when set, gives the path of
// a Consul binary to use instead of building the pinned one.
const EnvBinary = "CONSULLOCK_CONSUL_BIN"

// Binary returns the path of the pinned Consul binary, building it from
// tools/consul into the git-ignored bin/ folder when it is missing. Builds
// from concurrent test processes are serialised; the first on a fresh machine
// takes several minutes. Its progress, a line and Go's own output, goes to
// out by the rule of package progress (out may be a *progress.Meter, to be
// quiet); when the build fails, the error ends with the last of Go's output.
func Binary(ctx context.Context, out io.Writer) (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		return p, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(root, "bin", "consul-v"+Version)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	unlock, err := lockFile(filepath.Join(root, "bin", ".build.lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(bin); err == nil { // built while we waited
		return bin, nil
	}
	meter := progress.From(out)
	defer meter.Done()
	meter.Say(fmt.Sprintf("consulagent: building Consul v%s into %s (first use: a few minutes of downloading and compiling)", Version, bin))
	tmp := bin + ".tmp"
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", tmp, ".")
	cmd.Dir = filepath.Join(root, "tools", "consul")
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly -buildvcs=false", "CGO_ENABLED=0")
	var goOut bytes.Buffer // all of it: the meter shows only some lines
	cmd.Stdout = io.MultiWriter(meter, &goOut)
	cmd.Stderr = cmd.Stdout
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build Consul v%s in %s: %w\n%s", Version, cmd.Dir, err, lastLines(goOut.String(), 20))
	}
	return bin, os.Rename(tmp, bin)
}

// lastLines is the end of a failed build's output, where Go says why.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// repoRoot finds the checkout that holds tools/consul: from this source file
// when it was compiled in place, else from the working directory upwards.
func repoRoot() (string, error) {
	var starts []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	for _, dir := range starts {
		for ; ; dir = filepath.Dir(dir) {
			if _, err := os.Stat(filepath.Join(dir, "tools", "consul", "go.mod")); err == nil {
				return dir, nil
			}
			if dir == filepath.Dir(dir) {
				break
			}
		}
	}
	return "", errors.New("no consullock checkout (with tools/consul) found to build Consul in; set " + EnvBinary + " to a Consul v" + Version + " binary")
}

// lockFile takes an exclusive flock on path, creating it and its folder.
func lockFile(path string) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
