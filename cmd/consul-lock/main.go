// Command consul-lock is flock(1) for a whole cluster, on HashiCorp Consul.
//
//	consul-lock exec [flags] KEY -- COMMAND [ARG...]   run a command under a lock
//	consul-lock status [-json] [-watch] KEY             who holds a lock, and who waits
//	consul-lock list [-json] [PREFIX]                   the locks and semaphores held now
//	consul-lock release [-yes] KEY                      force-release a lock
//	consul-lock dev [-servers N] [-clients M]           a local Consul (or cluster) for trying it out
//	consul-lock demo                                    watch processes take turns
//	consul-lock bench                                   measure, side by side with consul/api
//	consul-lock version [-json]                         what to put in a bug report
//	consul-lock help [COMMAND]                          the commands, or a command's flags
//
// Run `consul-lock help COMMAND` (or `consul-lock COMMAND -h`) for a
// command's flags and examples. Locks are
// the keys of the library's EphemeralLock (locks/ephemeral/KEY), so Go
// services, python-consul-lock and consul-lock exclude each other.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
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
	{"dev", "run a local Consul dev agent, or a cluster (-servers, -clients), until interrupted", runDev},
	{"demo", "watch processes take turns on one lock", runDemo},
	{"bench", "measure lock cycles against consul/api's Lock and the raw-KV floor", runBench},
	{"version", "print the versions of consul-lock, its Go and the Consul it starts", runVersion},
}

// helpCommand is handled by run itself: it runs the other commands.
const helpCommand = "help"

func main() {
	// net/http logs a 429 that an agent at its connection limit writes on a
	// connection kept open; the request's own error says what matters.
	log.SetOutput(io.Discard)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], stdio{os.Stdin, os.Stdout, os.Stderr}))
}

func run(ctx context.Context, args []string, s stdio) int {
	if len(args) == 0 {
		usage(s.errOut)
		return exitUsage
	}
	name, args := args[0], args[1:]
	switch name {
	case "-h", "-help", "--help":
		usage(s.out)
		return 0
	case "-version", "--version":
		name = "version"
	case helpCommand:
		return runHelp(ctx, args, s)
	case demoSectionCommand:
		return exitCode(runDemoSection(ctx, args, s), "consul-lock", s.errOut)
	case benchWorkerCommand:
		return exitCode(runBenchWorker(ctx, args, s), "consul-lock", s.errOut)
	}
	c, ok := findCommand(name)
	if !ok {
		return unknownCommand(name, s.errOut)
	}
	return exitCode(c.run(ctx, args, s), "consul-lock "+c.name, s.errOut)
}

// runHelp is `consul-lock help [COMMAND]`: the usage, or COMMAND -h, on
// stdout.
func runHelp(ctx context.Context, args []string, s stdio) int {
	switch {
	case len(args) > 1:
		fmt.Fprintf(s.errOut, "consul-lock help: unexpected argument %q\n", args[1])
		return exitUsage
	case len(args) == 0 || args[0] == helpCommand:
		usage(s.out)
		return 0
	}
	if _, ok := findCommand(args[0]); !ok {
		return unknownCommand(args[0], s.errOut)
	}
	return run(ctx, []string{args[0], "-h"}, s)
}

func findCommand(name string) (command, bool) {
	for _, c := range commands {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// unknownCommand says that name is no command, suggesting the nearest one
// when it looks like a typo, and returns the usage exit status.
func unknownCommand(name string, stderr io.Writer) int {
	if near := nearestCommand(name); near != "" {
		fmt.Fprintf(stderr, "consul-lock: unknown command %q; did you mean %q?\nRun 'consul-lock help' for the list of commands.\n", name, near)
		return exitUsage
	}
	fmt.Fprintf(stderr, "consul-lock: unknown command %q\n\n", name)
	usage(stderr)
	return exitUsage
}

// nearestCommand is the command name closest to name, when at most two
// edits away and those edits change at most half of name: "stauts" is a
// typo of "status", but "-v" is not one of "dev".
func nearestCommand(name string) string {
	name = strings.TrimLeft(name, "-") // --verison is a typo too
	names := []string{helpCommand}
	for _, c := range commands {
		names = append(names, c.name)
	}
	best, bestDist := "", 3
	for _, n := range names {
		if d := levenshtein(name, n); d < bestDist && 2*d <= len(name) {
			best, bestDist = n, d
		}
	}
	return best
}

// levenshtein is the edit distance between a and b: the fewest insertions,
// deletions and substitutions of bytes that turn a into b.
func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
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

// usage lists the commands: on stdout when asked for, else on stderr.
func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: consul-lock COMMAND [flags]\n\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "  %-8s %s\n", helpCommand, "show the commands, or a command's flags and examples")
	fmt.Fprintln(w, "\nRun 'consul-lock help COMMAND' (or 'consul-lock COMMAND -h') for a command's\nflags and examples, and 'consul-lock version' for a bug report.")
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
// the number of positional arguments. The usage goes to stdout when asked
// for with -h, as the output, and to stderr after a mistake.
func parseFlags(fs *flag.FlagSet, args []string, s stdio, minArgs, maxArgs int) error {
	var usage bytes.Buffer
	fs.SetOutput(&usage)
	err := fs.Parse(args)
	fs.SetOutput(s.errOut)
	if errors.Is(err, flag.ErrHelp) {
		s.out.Write(usage.Bytes())
		return err
	}
	s.errOut.Write(usage.Bytes())
	if err != nil {
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
