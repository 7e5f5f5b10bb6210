package consulagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"time"
)

// Where a Consul binary that Find returns came from.
const (
	FromEnv   = "$" + EnvBinary
	FromPath  = "PATH"
	FromBuild = "the checkout's pinned build"
)

// Found is a Consul binary that Find chose: its path, the version it
// reports (`consul version`, without the "v") and where it came from.
type Found struct {
	Path    string
	Version string
	Source  string // FromEnv, FromPath or FromBuild
}

func (f Found) String() string {
	return fmt.Sprintf("Consul v%s at %s (from %s)", f.Version, f.Path, f.Source)
}

// ErrNoConsul is Find's error when none of its three ways gives a binary.
var ErrNoConsul = errors.New("no Consul binary: set " + EnvBinary + " to one, put a Consul 1.x `consul` on PATH, or run from a consullock checkout to build the pinned v" + Version)

// Find returns the Consul binary for the command line's dev, demo and bench,
// which should start in seconds on a machine that has Consul already. In
// order: the binary that $CONSULLOCK_CONSUL_BIN names (which must run); a
// `consul` on PATH that reports a 1.x version (another is skipped, with a
// note to progress); the pinned v1.16.3 built from the checkout (see
// Binary, whose progress goes to progress). Otherwise the error wraps
// ErrNoConsul, which names all three. Tests use Binary, the pinned build.
func Find(ctx context.Context, progress io.Writer) (Found, error) {
	return finder{getenv: os.Getenv, lookPath: exec.LookPath, build: buildInCheckout}.find(ctx, progress)
}

// finder is Find with its surroundings made explicit, for tests.
type finder struct {
	getenv   func(string) string
	lookPath func(string) (string, error)
	build    func(ctx context.Context, progress io.Writer) (string, error)
}

func (f finder) find(ctx context.Context, progress io.Writer) (Found, error) {
	if p := f.getenv(EnvBinary); p != "" {
		v, err := versionOf(ctx, p)
		if err != nil {
			return Found{}, fmt.Errorf("%s=%s: %w", EnvBinary, p, err)
		}
		return Found{p, v, FromEnv}, nil
	}
	if p, err := f.lookPath("consul"); err == nil {
		v, err := versionOf(ctx, p)
		if err == nil && major1.MatchString(v) {
			return Found{p, v, FromPath}, nil
		}
		fmt.Fprintf(progress, "consulagent: skipping %s on PATH: not a Consul 1.x (%s)\n", p, orErr(v, err))
	}
	p, err := f.build(ctx, progress)
	if errors.Is(err, errNoCheckout) {
		return Found{}, ErrNoConsul
	}
	if err != nil {
		return Found{}, err
	}
	return Found{p, Version, FromBuild}, nil
}

var major1 = regexp.MustCompile(`^1\.[0-9]+`)

// versionRE finds the version in `consul version`'s first line, "Consul
// v1.16.3" (with a suffix such as "+ent" or "-dev" kept).
var versionRE = regexp.MustCompile(`(?m)^Consul v(\S+)`)

// versionOf runs `consul version`, which answers at once without an agent.
func versionOf(ctx context.Context, bin string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		return "", fmt.Errorf("%s version: %w", bin, err)
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("%s version printed no \"Consul v...\" line: %.100q", bin, out)
	}
	return string(m[1]), nil
}

func orErr(v string, err error) string {
	if err != nil {
		return err.Error()
	}
	return "version " + v
}

// errNoCheckout is buildInCheckout's error outside a consullock checkout.
var errNoCheckout = errors.New("no consullock checkout")

// buildInCheckout is Binary without its environment variable, which Find
// has already looked at.
func buildInCheckout(ctx context.Context, progress io.Writer) (string, error) {
	if _, err := repoRoot(); err != nil {
		return "", errNoCheckout
	}
	return Binary(ctx, progress)
}
