package soak

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestLatency(t *testing.T) {
	t.Parallel()
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	l := latencyOf(ds)
	require.Equal(t, Latency{N: 100, P50: 50, P99: 99, Max: 100, Mean: 50.5}, l)
	require.Equal(t, 100*time.Millisecond, ds[0], "the sample is left as it was")
	require.Equal(t, Latency{}, latencyOf(nil))
	require.Equal(t, Latency{N: 1, P50: 1.5, P99: 1.5, Max: 1.5, Mean: 1.5}, latencyOf([]time.Duration{1500 * time.Microsecond}))
}

// sampleReport is a report of two legs: one with a violation, one skipped.
func sampleReport() *Report {
	events := []Event{{ID: "evt-1", Class: ClassOK, From: 0, To: 1, Amount: 5, Copies: 2}}
	invs := Check(events, Observed{
		Applied:   map[string]Applied{"evt-1": {Rows: 2}},
		Processed: map[string]bool{"evt-1": true},
		Balances:  map[int]int64{0: 90, 1: 110}, InitialBalance: 100,
	})
	return &Report{
		Command: "idem-soak --seed 7 --events 1", Seed: 7, Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Duration: 12.5,
		Machine: Machine{CPUs: 2, OS: "Debian", Kernel: "6.1", Go: "go1.26", CPU: "Xeon"},
		Servers: []string{"PostgreSQL 15 (private)"},
		Config:  RunSettings{Events: 1, Consumers: 3, MaxAttempts: 5, CrashGuard: 3, Chaos: true, ChaosInterval: 3},
		Legs: []LegReport{
			{Leg: LegSQL, Broker: "watermill-sql", Events: 1, Classes: map[Class]int{ClassOK: 1}, Messages: 2,
				Faults: map[string]int{"sigkill-consumer": 2}, Recovery: map[string]Latency{"sigkill-consumer": {N: 2, P50: 900, P99: 1200, Max: 1200}},
				Outcomes: map[string]int64{"processed": 2, "duplicate": 0}, Deliveries: 2, Quiesced: true, Duration: 3, Throughput: 0.33,
				Latency: Latency{N: 1, P50: 12, P99: 12, Max: 12}, Invariants: invs, Violations: Violations(invs)},
			{Leg: LegNATS, Skipped: "soak: program not installed: nats-server"},
		},
		Violations: Violations(invs),
	}
}

func TestReport(t *testing.T) {
	t.Parallel()

	t.Run("MarkdownShowsTheVerdictAndEachInvariant", func(t *testing.T) {
		t.Parallel()
		var b bytes.Buffer
		require.NoError(t, sampleReport().WriteMarkdown(&b))
		md := b.String()
		for _, want := range []string{
			"# idem soak, seed 7\n",
			"`idem-soak --seed 7 --events 1`",
			"**FAIL**: 3 invariant violations.",
			"Machine: 2 CPUs (Xeon), Debian 6.1, go1.26. Servers: PostgreSQL 15 (private).",
			"| sql | 1 | 2 | 2 | 0 | 0 | 0 | 0 | 0 | 2 | 0 | 12 / 12 | 3 |",
			"| nats | skipped: soak: program not installed: nats-server |",
			"| sigkill-consumer | 2 | 900 | 1200 | 1200 |",
			"| good-applied-exactly-once | 1 | 1 | evt-1 (ok): 2 effects rows, processed true |",
			"| money-conserved | 2 | 0 |  |",
			"| balances-match-ground-truth | 2 | 2 | account 0 holds 90, the ground truth says 95 (off by -5); account 1 holds 110, the ground truth says 105 (off by 5) |",
		} {
			require.Contains(t, md, want)
		}
	})

	t.Run("MarkdownPasses", func(t *testing.T) {
		t.Parallel()
		r := sampleReport()
		r.Violations = 0
		r.Legs = r.Legs[1:]
		var b bytes.Buffer
		require.NoError(t, r.WriteMarkdown(&b))
		require.Contains(t, b.String(), "**PASS**: every invariant holds on every leg that ran.")
		require.Equal(t, ExitOK, exitCode(r))
	})

	t.Run("ExitCodes", func(t *testing.T) {
		t.Parallel()
		require.Equal(t, ExitViolation, exitCode(sampleReport()))
		failed := &Report{Legs: []LegReport{{Leg: LegRedis, Error: "redis-server exited at start"}}}
		require.Equal(t, ExitViolation, exitCode(failed), "a leg that could not run fails the run")
		passed, fails := tally(sampleReport())
		require.Equal(t, 9, passed)
		require.Equal(t, 2, fails)
		passed, fails = tally(failed)
		require.Equal(t, 0, passed)
		require.Equal(t, 1, fails)
	})

	t.Run("FilesRoundTrip", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		r := sampleReport()
		require.NoError(t, writeReports(r, dir))
		raw, err := os.ReadFile(filepath.Join(dir, "soak-7.json"))
		require.NoError(t, err)
		var back Report
		require.NoError(t, json.Unmarshal(raw, &back))
		require.Equal(t, r.Violations, back.Violations)
		require.Equal(t, r.Legs[0].Invariants, back.Legs[0].Invariants)
		require.Equal(t, r.Legs[0].Recovery, back.Legs[0].Recovery)
		require.True(t, strings.Contains(string(raw), `"violations": 3`))
		md, err := os.ReadFile(filepath.Join(dir, "soak-7.md"))
		require.NoError(t, err)
		require.Contains(t, string(md), "**FAIL**")
	})
}

func TestParseFlags(t *testing.T) {
	t.Parallel()
	o, out, err := parseFlags([]string{"--seed", "9", "--events", "300", "--legs", "sql,redis", "--out", "/tmp/x"}, &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, uint64(9), o.Seed)
	require.Equal(t, 300, o.Events)
	require.Equal(t, []string{LegSQL, LegRedis}, o.Legs)
	require.Equal(t, "/tmp/x", out)
	require.Equal(t, DefaultMix, o.Mix)
	require.Equal(t, 3, o.Consumers)
	require.Equal(t, 1, o.SQLBatchSize)

	for _, args := range [][]string{
		{"--legs", "kafka"}, {"--legs", ","}, {"--events", "0"}, {"--consumers", "0"}, {"--max-attempts", "2"},
		{"--crash-guard", "0"}, {"--rate", "-1"}, {"--sql-batch-size", "0"}, {"stray"},
	} {
		_, _, err := parseFlags(args, &bytes.Buffer{})
		require.Error(t, err, "%v", args)
	}
	var stderr, stdout bytes.Buffer
	require.Equal(t, ExitUsage, Main(t.Context(), []string{"--legs", "kafka"}, &stdout, &stderr))
	require.Contains(t, stderr.String(), `unknown leg "kafka"`)
}

func TestHelpers(t *testing.T) {
	t.Parallel()
	c, ok := parseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	require.True(t, ok)
	require.Equal(t, Copy{TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", SpanID: "00f067aa0ba902b7"}, c)
	_, ok = parseTraceparent("")
	require.False(t, ok)

	require.Equal(t, "postgres://u@h:5/idem_soak?sslmode=disable", replaceDatabase("postgres://u@h:5/test?sslmode=disable", "idem_soak"))
	require.Equal(t, "postgres://u@h:5/idem_soak", replaceDatabase("postgres://u@h:5", "idem_soak"))
	require.NotEqual(t, legSeed(1, LegSQL), legSeed(1, LegRedis))
}
