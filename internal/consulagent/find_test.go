package consulagent

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeConsul writes an executable `consul` into a folder of its own: a
// shell script that runs script.
func fakeConsul(t *testing.T, script string) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "consul")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// pinnedConsul is a fake `consul` that execs the pinned build, as a Consul
// installed on the machine would answer.
func pinnedConsul(t *testing.T) string {
	t.Helper()
	bin, err := Binary(context.Background(), os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	return fakeConsul(t, `exec "`+bin+`" "$@"`)
}

// Find takes $CONSULLOCK_CONSUL_BIN first, then a Consul 1.x on PATH (a
// `consul` that is not 1.x is skipped, and says so), then the checkout's
// build, and without any of them fails with one error naming all three.
func TestFindOrder(t *testing.T) {
	onPath := pinnedConsul(t)
	other := pinnedConsul(t)
	old := fakeConsul(t, `echo "Consul v0.9.4"`)
	built := errors.New("not built in this test")
	var notes strings.Builder
	find := func(env, path string, build error) (Found, error) {
		t.Helper()
		t.Setenv("PATH", path)
		f := finder{
			getenv:   func(string) string { return env },
			lookPath: exec.LookPath,
			build: func(context.Context, io.Writer) (string, error) {
				if build != nil {
					return "", build
				}
				return "/checkout/bin/consul-v" + Version, nil
			},
		}
		return f.find(context.Background(), &notes)
	}

	if f, err := find(other, filepath.Dir(onPath), built); err != nil || f.Source != FromEnv || f.Path != other || f.Version != Version {
		t.Errorf("with %s set and a consul on PATH: %+v, %v; want %s from %s", EnvBinary, f, err, other, FromEnv)
	}
	if f, err := find("", filepath.Dir(onPath)+":"+filepath.Dir(other), built); err != nil || f.Source != FromPath || f.Path != onPath || f.Version != Version {
		t.Errorf("with consul on PATH: %+v, %v; want the first one, %s, v%s from PATH", f, err, onPath, Version)
	}
	if f, err := find("", filepath.Dir(old), nil); err != nil || f.Source != FromBuild {
		t.Errorf("with a Consul v0.9 on PATH: %+v, %v; want the checkout's build", f, err)
	}
	if !strings.Contains(notes.String(), "skipping "+old) {
		t.Errorf("the skipped Consul v0.9 was not reported: %q", notes.String())
	}
	f, err := find("", t.TempDir(), errNoCheckout)
	if !errors.Is(err, ErrNoConsul) {
		t.Fatalf("with no Consul anywhere: %+v, %v; want ErrNoConsul", f, err)
	}
	for _, way := range []string{EnvBinary, "PATH", "checkout"} {
		if !strings.Contains(err.Error(), way) {
			t.Errorf("the error %q does not name %s", err, way)
		}
	}
	if _, err := find(filepath.Join(t.TempDir(), "missing"), filepath.Dir(onPath), nil); err == nil || !strings.Contains(err.Error(), EnvBinary) {
		t.Errorf("with %s naming a missing file: %v; want an error naming it, not another binary", EnvBinary, err)
	}
}

// Find itself, as the command line calls it, finds a consul on PATH.
func TestFindUsesPath(t *testing.T) {
	onPath := pinnedConsul(t)
	t.Setenv(EnvBinary, "")
	t.Setenv("PATH", filepath.Dir(onPath))
	f, err := Find(context.Background(), io.Discard)
	if err != nil || f.Path != onPath || f.Source != FromPath || f.Version != Version {
		t.Fatalf("Find = %+v, %v; want %s, v%s, from PATH", f, err, onPath, Version)
	}
}
