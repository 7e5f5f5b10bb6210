// Command consul-lock is flock(1) for a whole cluster, on HashiCorp Consul.
//
//	consul-lock exec [flags] KEY -- COMMAND [ARG...]   run a command under a lock
//	consul-lock status [-json] [-watch] KEY             who holds a lock, and who waits
//	consul-lock list [-json] [PREFIX]                   the locks and semaphores held now
//	consul-lock release [-yes] KEY                      force-release a lock
//	consul-lock dev                                     a local Consul for trying it out
//	consul-lock demo                                    watch processes take turns
//	consul-lock bench                                   measure, side by side with consul/api
//
// Run `consul-lock COMMAND -h` for a command's flags and examples. Locks are
// the keys of the library's EphemeralLock (locks/ephemeral/KEY), so Go
// services, python-consul-lock and consul-lock exclude each other.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit statuses, from BSD's sysexits.h as flock(1) users expect, for what is
// not the command's own status.
const (
	exitUsage       = 64  // EX_USAGE: a mistake on the command line
	exitUnavailable = 69  // EX_UNAVAILABLE: Consul unreachable or refusing
	exitSoftware    = 70  // EX_SOFTWARE: anything else that went wrong
	exitConflict    = 75  // EX_TEMPFAIL: the lock was not acquired in time (-conflict-exit-code)
	exitLost        = 76  // the lock was lost while the command ran; the command was stopped
	exitMaxHold     = 124 // -max-hold ran out; the command was stopped (as timeout(1))
	exitNotFound    = 127 // the command could not be started (as a shell)
)

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdio stdio) error
}

// stdio are a command's streams, so tests can drive run in-process.
type stdio struct {
	in          io.Reader
	out, errOut io.Writer
}

var commands = []command{
	{"exec", "run a command while holding a lock", runExec},
	{"status", "show who holds a lock", runStatus},
	{"list", "list the locks held now", runList},
	{"release", "force-release a lock whose holder is gone", runRelease},
	{"dev", "run the pinned Consul as a local dev agent until interrupted", runDev},
	{"demo", "watch processes take turns on one lock", runDemo},
	{"bench", "measure lock cycles against consul/api's Lock and the raw-KV floor", runBench},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], stdio{os.Stdin, os.Stdout, os.Stderr}))
}

func run(ctx context.Context, args []string, s stdio) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
		usage(s.errOut)
		if len(args) == 0 {
			return exitUsage
		}
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] {
			return exitCode(c.run(ctx, args[1:], s), "consul-lock "+c.name, s.errOut)
		}
	}
	if args[0] == demoSectionCommand {
		return exitCode(runDemoSection(ctx, args[1:], s), "consul-lock", s.errOut)
	}
	fmt.Fprintf(s.errOut, "consul-lock: unknown command %q\n\n", args[0])
	usage(s.errOut)
	return exitUsage
}

// exitCode turns a command's error into its exit status, saying why on
// stderr.
func exitCode(err error, who string, stderr io.Writer) int {
	var exit exitError
	var use usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &exit):
		if exit.msg != "" {
			fmt.Fprintf(stderr, "%s: %s\n", who, exit.msg)
		}
		return exit.code
	case errors.As(err, &use):
		fmt.Fprintf(stderr, "%s: %v\n", who, err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "%s: %v\n", who, err)
		return exitSoftware
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: consul-lock COMMAND [flags]\n\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'consul-lock COMMAND -h' for a command's flags and examples.")
}

// usageError is a mistake on the command line: exit status 64.
type usageError struct{ error }

// exitError ends the program with code, after printing msg when not empty.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return fmt.Sprintf("exit %d: %s", e.code, e.msg) }

// parseFlags parses args with fs, whose errors are usage errors, and checks
// the number of positional arguments.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer, minArgs, maxArgs int) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	switch n := fs.NArg(); {
	case n < minArgs:
		return usageError{fmt.Errorf("missing argument (see %s -h)", fs.Name())}
	case maxArgs >= 0 && n > maxArgs:
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(maxArgs))}
	}
	return nil
}
