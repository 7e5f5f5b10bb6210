package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/consullock/consullock/internal/consulagent"
)

const versionUsage = `Usage: consul-lock version [-json]

Prints what a bug report needs: consul-lock's module version and the VCS
revision it was built from (as the Go toolchain recorded them in the
binary), the Go version and platform, and the Consul version that dev, demo
and bench start. consul-lock -version is the same.

Flags:
`

// versionInfo is what `consul-lock version` reports.
type versionInfo struct {
	Version  string `json:"version"`                 // a tag, a pseudo-version, or (devel) in a checkout
	Revision string `json:"revision,omitempty"`      // the commit; go build records none in a git worktree or with -buildvcs=false
	Time     string `json:"revision_time,omitempty"` // the commit's time
	Modified bool   `json:"modified,omitempty"`      // the checkout had uncommitted changes
	Go       string `json:"go"`
	Platform string `json:"platform"`
	Consul   string `json:"consul"` // the version dev, demo and bench build and start
}

func runVersion(ctx context.Context, args []string, s stdio) error {
	fs := flag.NewFlagSet("consul-lock version", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() { fmt.Fprint(fs.Output(), versionUsage); fs.PrintDefaults() }
	if err := parseFlags(fs, args, s, 0, 0); err != nil {
		return err
	}
	v := buildVersion()
	if *asJSON {
		printJSON(s.out, v)
	} else {
		printVersion(s.out, v)
	}
	return nil
}

// buildVersion reads the binary's build information.
func buildVersion() versionInfo {
	v := versionInfo{
		Version:  "unknown",
		Go:       runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH,
		Consul:   "v" + consulagent.Version,
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	v.Version = bi.Main.Version
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

func printVersion(w io.Writer, v versionInfo) {
	rev := "unknown (not recorded in this build)"
	if v.Revision != "" {
		rev = v.Revision
		if v.Modified {
			rev += " (modified)"
		}
		if v.Time != "" {
			rev += ", committed " + v.Time
		}
	}
	fmt.Fprintf(w, "consul-lock %s\nrevision  %s\ngo        %s %s\nconsul    %s (the version dev, demo and bench start)\n", v.Version, rev, v.Go, v.Platform, v.Consul)
}
