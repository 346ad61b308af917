package soak

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Exit codes of the command.
const (
	ExitOK        = 0
	ExitViolation = 1 // an invariant was violated, or a leg could not run
	ExitUsage     = 2
	ExitCannotRun = 3 // no PostgreSQL, say
)

// Main runs the command with args (without the program name) and returns its exit
// code. In a consumer process (consumerEnv set) it runs the consumer instead.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if raw := os.Getenv(consumerEnv); raw != "" {
		return consumerMain(raw)
	}
	opts, out, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, "idem-soak:", err)
		return ExitUsage
	}
	opts.Log = stderr
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := Run(ctx, opts)
	if err != nil {
		fmt.Fprintln(stderr, "idem-soak:", err)
		return ExitCannotRun
	}
	rep.Command = "idem-soak " + strings.Join(args, " ")
	if err := writeReports(rep, out); err != nil {
		fmt.Fprintln(stderr, "idem-soak:", err)
		return ExitCannotRun
	}
	if err := rep.WriteMarkdown(stdout); err != nil {
		return ExitCannotRun
	}
	passed, failed := tally(rep)
	fmt.Fprintf(stdout, "\nsoak: %d passed, %d failed\n", passed, failed)
	return exitCode(rep)
}

// exitCode is ExitViolation when any invariant was violated or any leg failed.
func exitCode(rep *Report) int {
	if rep.Violations > 0 {
		return ExitViolation
	}
	for _, l := range rep.Legs {
		if l.Error != "" {
			return ExitViolation
		}
	}
	return ExitOK
}

// tally counts the invariants that held and those violated, over every leg; a leg
// that could not run counts as one failure.
func tally(rep *Report) (passed, failed int) {
	for _, l := range rep.Legs {
		if l.Error != "" {
			failed++
		}
		for _, inv := range l.Invariants {
			if inv.Violations > 0 {
				failed++
			} else {
				passed++
			}
		}
	}
	return passed, failed
}

func parseFlags(args []string, stderr io.Writer) (Options, string, error) {
	fs := flag.NewFlagSet("idem-soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: idem-soak [flags]

Runs idem's whole stack against real servers, three consumer processes per leg, with
faults injected, then checks that each event was applied exactly once or dead-lettered
exactly once. It starts private servers of its own on free loopback ports (PostgreSQL,
RabbitMQ, NATS, Redis) unless given URLs, and writes soak-<seed>.json and
soak-<seed>.md. Exit status: 0 every invariant holds, 1 a violation (or a leg failed),
2 usage, 3 could not run.

Flags:
`)
		fs.PrintDefaults()
	}
	var o Options
	var legs, out string
	fs.Uint64Var(&o.Seed, "seed", 1, "`seed` of the events, their copies and the faults")
	fs.IntVar(&o.Events, "events", 10000, "events per leg")
	fs.StringVar(&legs, "legs", strings.Join(AllLegs, ","), "comma-separated `legs` to run: "+strings.Join(AllLegs, ", "))
	fs.IntVar(&o.Consumers, "consumers", 3, "consumer processes per leg")
	fs.Float64Var(&o.Rate, "rate", 0, "publish at most this many messages per second (0: as fast as the broker takes them)")
	fs.IntVar(&o.Publishers, "publishers", 4, "concurrent publishing goroutines")
	fs.BoolVar(&o.Chaos, "chaos", true, "inject faults: kill and stop consumers, terminate their database connections, restart the private servers")
	fs.DurationVar(&o.ChaosInterval, "chaos-interval", 3*time.Second, "mean time between two faults")
	fs.IntVar(&o.MaxAttempts, "max-attempts", 5, "the consumers' Retry.MaxAttempts")
	fs.IntVar(&o.CrashGuard, "crash-guard", 3, "the consumers' CrashGuard")
	fs.IntVar(&o.SQLBatchSize, "sql-batch-size", 1, "watermill-sql's SubscribeBatchSize on the sql leg: messages per subscriber transaction (watermill-sql's default is 100; see docs/reliability.md for why the soak uses 1)")
	fs.IntVar(&o.Accounts, "accounts", 1000, "accounts the transfers move money between")
	fs.StringVar(&out, "out", ".", "`directory` to write the JSON and markdown reports to")
	fs.StringVar(&o.DataDir, "data-dir", "", "`directory` for the private servers' data and the consumers' logs (default: a temporary one, removed at the end)")
	fs.BoolVar(&o.Keep, "keep", false, "keep the temporary data directory")
	fs.StringVar(&o.DatabaseURL, "database-url", "", "use this PostgreSQL (never restarted) instead of a private one; the run creates database idem_soak on it")
	fs.StringVar(&o.AMQPURL, "amqp-url", "", "use this RabbitMQ (never restarted) instead of a private node")
	fs.StringVar(&o.NATSURL, "nats-url", "", "use this NATS server (never restarted) instead of a private one")
	fs.StringVar(&o.RedisURL, "redis-url", "", "use this Redis (never restarted) instead of a private one")
	fs.DurationVar(&o.QuiesceTimeout, "quiesce-timeout", 5*time.Minute, "how long to wait, after the last publish, for every event to reach its fate")
	fs.BoolVar(&o.RequireServers, "require-servers", os.Getenv("CI") == "true", "fail, instead of skipping the leg, when a server program is missing (default true when CI=true)")
	if err := fs.Parse(args); err != nil {
		return o, "", err
	}
	if fs.NArg() > 0 {
		return o, "", fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	o.Mix = DefaultMix
	for _, l := range strings.Split(legs, ",") {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		if !slices.Contains(AllLegs, l) {
			return o, "", fmt.Errorf("--legs: unknown leg %q (want %s)", l, strings.Join(AllLegs, ", "))
		}
		o.Legs = append(o.Legs, l)
	}
	switch {
	case len(o.Legs) == 0:
		return o, "", errors.New("--legs: no leg to run")
	case o.Events < 1:
		return o, "", fmt.Errorf("--events must be at least 1, got %d", o.Events)
	case o.Consumers < 1:
		return o, "", fmt.Errorf("--consumers must be at least 1, got %d", o.Consumers)
	case o.MaxAttempts < 3:
		return o, "", fmt.Errorf("--max-attempts must be at least 3, got %d", o.MaxAttempts)
	case o.CrashGuard < 1:
		return o, "", fmt.Errorf("--crash-guard must be at least 1, got %d", o.CrashGuard)
	case o.Accounts < 2:
		return o, "", fmt.Errorf("--accounts must be at least 2, got %d", o.Accounts)
	case o.ChaosInterval <= 0:
		return o, "", fmt.Errorf("--chaos-interval must be positive, got %s", o.ChaosInterval)
	case o.SQLBatchSize < 1:
		return o, "", fmt.Errorf("--sql-batch-size must be at least 1, got %d", o.SQLBatchSize)
	case o.Rate < 0:
		return o, "", fmt.Errorf("--rate must not be negative, got %g", o.Rate)
	}
	return o, out, nil
}

// writeReports writes soak-<seed>.json and soak-<seed>.md into dir.
func writeReports(rep *Report, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	base := filepath.Join(dir, fmt.Sprintf("soak-%d", rep.Seed))
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(base+".json", append(js, '\n'), 0o644); err != nil {
		return err
	}
	f, err := os.Create(base + ".md")
	if err != nil {
		return err
	}
	if err := rep.WriteMarkdown(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func cpuCount() int { return runtime.NumCPU() }

func goVersion() string { return runtime.Version() }
