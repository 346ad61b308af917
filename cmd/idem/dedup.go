package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/idemkit/idem/postgres"
)

var dedupCommands = []*command{{
	name:    "dedup prune",
	summary: "delete processed rows, attempt counts, reviewed dead letters and audit rows past their retention",
	help: `
Prune deletes the processed rows (the record that an event was handled), the
attempt counts and the crash guard's counts older than --retention, the reviewed
dead letters (replayed, discarded, resolved) whose last change is older than
--dead-letter-retention, and the audit rows older than --audit-retention, measured
on the database clock, in batches of --batch rows, each batch its own short
transaction. It never deletes a row younger than its retention, never a pending
dead letter, and keeps the attempt counts of events that have a pending dead letter.
A redelivery or replay of an event whose row was pruned is handled again, so
--retention must cover --replay-window: the longest time after which an event may
still come back (the broker's retention, the dead-letter review period). Prune
refuses a shorter retention. -1 keeps reviewed dead letters, or the audit, forever;
the audit may not be kept for less time than the dead letters it names.`,
	setup: func(fs *flag.FlagSet) action {
		var cfg postgres.PruneConfig
		fs.DurationVar(&cfg.Retention, "retention", postgres.DefaultRetention, "delete rows older than this `DURATION`")
		fs.DurationVar(&cfg.ReplayWindow, "replay-window", 0, "refuse a --retention shorter than this `DURATION`")
		cfg.DeadLetterRetention, cfg.AuditRetention = postgres.DefaultDeadLetterRetention, postgres.DefaultAuditRetention
		fs.Var((*retention)(&cfg.DeadLetterRetention), "dead-letter-retention", "delete reviewed dead letters unchanged for this `DURATION` (30d, 720h; -1: never)")
		fs.Var((*retention)(&cfg.AuditRetention), "audit-retention", "delete audit rows older than this `DURATION` (365d; -1: never)")
		fs.IntVar(&cfg.BatchSize, "batch", postgres.DefaultPruneBatch, "delete at most `N` rows per transaction")
		return func(ctx context.Context, e *env) error { return runPrune(ctx, e, cfg) }
	},
}, {
	name:    "dedup stats",
	summary: "show row counts and oldest ages of idem's tables",
	help: `
Stats counts the processed rows, attempt counts and pending dead letters, and shows
the age of the oldest processed row and of the oldest pending dead letter. With
--format json it prints one JSON object whose keys are stable: schema, processed,
oldest_processed_at, oldest_processed_age_seconds, attempts, pending_dead_letters,
oldest_pending_dead_letter_at, oldest_pending_dead_letter_age_seconds. Times are
RFC 3339 in UTC, ages whole seconds; both are null when there is no such row.`,
	setup: func(fs *flag.FlagSet) action {
		var format string
		fs.StringVar(&format, "format", "text", "output `FORMAT`: text or json")
		return func(ctx context.Context, e *env) error { return runStats(ctx, e, format) }
	},
}}

func runPrune(ctx context.Context, e *env, cfg postgres.PruneConfig) error {
	const cmd = "dedup prune"
	switch {
	case cfg.Retention <= 0:
		return usageErrorf(cmd, "--retention must be positive, got %s", cfg.Retention)
	case cfg.ReplayWindow < 0:
		return usageErrorf(cmd, "--replay-window must not be negative, got %s", cfg.ReplayWindow)
	case cfg.Retention < cfg.ReplayWindow:
		return usageErrorf(cmd, "--retention %s is shorter than --replay-window %s: a late redelivery or replay would apply its effect twice", cfg.Retention, cfg.ReplayWindow)
	case cfg.BatchSize < 1:
		return usageErrorf(cmd, "--batch must be at least 1, got %d", cfg.BatchSize)
	case cfg.AuditRetention >= 0 && (cfg.DeadLetterRetention < 0 || cfg.AuditRetention < cfg.DeadLetterRetention):
		return usageErrorf(cmd, "--audit-retention %s is shorter than --dead-letter-retention %s: the audit of a review must outlive the dead letters it names",
			retentionText(cfg.AuditRetention), retentionText(cfg.DeadLetterRetention))
	}
	store, err := e.store(ctx)
	if err != nil {
		return err
	}
	defer store.close()
	res, err := store.prune(ctx, cfg)
	report := func(suffix string) {
		fmt.Fprintf(e.stdout, "deleted %d processed rows and %d attempt counts older than %s%s\n", res.Processed, res.Attempts, cfg.Retention, suffix)
		parts := []string{"kept reviewed dead letters forever", "kept the audit forever"}
		if cfg.DeadLetterRetention >= 0 {
			parts[0] = fmt.Sprintf("deleted %d reviewed dead letters unchanged for %s", res.DeadLetters, cfg.DeadLetterRetention)
		}
		if cfg.AuditRetention >= 0 {
			parts[1] = fmt.Sprintf("%d audit rows older than %s", res.Audit, cfg.AuditRetention)
			if cfg.DeadLetterRetention < 0 {
				parts[1] = "deleted " + parts[1]
			}
		}
		fmt.Fprintf(e.stdout, "%s and %s%s\n", parts[0], parts[1], suffix)
	}
	if err != nil {
		if res != (postgres.PruneResult{}) {
			report(" before failing")
		}
		return err
	}
	report("")
	return nil
}

// retention is a flag.Value for a retention: a duration as parseDays reads it, at
// least a second, or -1 (also "never") to keep the rows forever.
type retention time.Duration

func (r *retention) String() string { return retentionText(time.Duration(*r)) }

func (r *retention) Set(s string) error {
	if s == "-1" || s == "never" {
		*r = -1
		return nil
	}
	d, err := parseDays(s)
	switch {
	case err != nil:
		return err
	case d < time.Second:
		return fmt.Errorf("%q must be at least 1s, or -1 to keep the rows forever", s)
	}
	*r = retention(d)
	return nil
}

func retentionText(d time.Duration) string {
	if d < 0 {
		return "-1 (forever)"
	}
	return d.String()
}

// statsJSON is the output of `idem dedup stats --format json`. Its keys are a stable
// interface: add keys, never rename or remove one.
type statsJSON struct {
	Schema                    string     `json:"schema"`
	Processed                 int64      `json:"processed"`
	OldestProcessedAt         *time.Time `json:"oldest_processed_at"`
	OldestProcessedAgeSeconds *int64     `json:"oldest_processed_age_seconds"`
	Attempts                  int64      `json:"attempts"`
	PendingDeadLetters        int64      `json:"pending_dead_letters"`
	OldestPendingAt           *time.Time `json:"oldest_pending_dead_letter_at"`
	OldestPendingAgeSeconds   *int64     `json:"oldest_pending_dead_letter_age_seconds"`
}

func runStats(ctx context.Context, e *env, format string) error {
	if format != "text" && format != "json" {
		return usageErrorf("dedup stats", "--format must be text or json, got %q", format)
	}
	store, err := e.store(ctx)
	if err != nil {
		return err
	}
	defer store.close()
	st, err := store.stats(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	if format == "json" {
		out := statsJSON{
			Schema:             e.schema,
			Processed:          st.Processed,
			Attempts:           st.Attempts,
			PendingDeadLetters: st.PendingDeadLetters,
		}
		out.OldestProcessedAt, out.OldestProcessedAgeSeconds = jsonAge(st.OldestProcessed, now)
		out.OldestPendingAt, out.OldestPendingAgeSeconds = jsonAge(st.OldestPending, now)
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 3, ' ', 0)
	fmt.Fprintf(tw, "schema\t%s\n", e.schema)
	fmt.Fprintf(tw, "processed rows\t%d\n", st.Processed)
	fmt.Fprintf(tw, "oldest processed row\t%s\n", textAge(st.OldestProcessed, now))
	fmt.Fprintf(tw, "attempt counts\t%d\n", st.Attempts)
	fmt.Fprintf(tw, "pending dead letters\t%d\n", st.PendingDeadLetters)
	fmt.Fprintf(tw, "oldest pending dead letter\t%s\n", textAge(st.OldestPending, now))
	return tw.Flush()
}

// age is how long ago t was, in whole seconds; never negative, whatever the skew
// between this machine's clock and the database's.
func age(t, now time.Time) time.Duration {
	return max(now.Sub(t), 0).Truncate(time.Second)
}

func textAge(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return fmt.Sprintf("%s ago (%s)", age(t, now), t.UTC().Format(time.RFC3339))
}

func jsonAge(t, now time.Time) (*time.Time, *int64) {
	if t.IsZero() {
		return nil, nil
	}
	at := t.UTC()
	secs := int64(age(t, now) / time.Second)
	return &at, &secs
}
