package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/user"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/idemkit/idem/dlq"
)

// envNow names the environment variable that fixes the command's clock, for tests of
// its output only: ages are measured from it instead of from the current time.
const envNow = "IDEM_NOW"

var dlqCommands = []*command{{
	name:    "dlq report",
	summary: "pending dead letters grouped by consumer, topic and failure",
	help: `
Report groups the dead letters by consumer, topic and fingerprint (one failure
cause), largest group first, and shows for each group how many dead letters it
holds, when it was first and last seen (the times the dead letters were stored),
the age of its oldest dead letter, the error of its latest one, and the IDs and
event IDs of its first ones. It ends with the totals. By default it reports the
pending dead letters: those waiting for review. The table leaves out the samples
(error, IDs, event IDs) unless --wide is given; the other formats always hold them.
With ordering's quarantine, a PARKED column after COUNT shows how many events are
parked behind each group's pending dead letters, when any are.

Select a group in the other commands with --consumer, --topic and --fingerprint.`,
	setup: func(fs *flag.FlagSet) action {
		sel := declareFilterFlags(fs, "pending")
		out := declareOutputFlags(fs, allFormats, "")
		var wide bool
		fs.BoolVar(&wide, "wide", false, "in the table format, also show each group's sample error, IDs and event IDs (the other formats always do)")
		return func(ctx context.Context, e *env) error { return runReport(ctx, e, sel, out, wide) }
	},
}, {
	name:    "dlq list",
	summary: "list dead letters, a page at a time",
	help: `
List shows the dead letters the filters select, oldest first (in ID order), a page
of --limit at a time; the line after the page says how to get the next one, with
--after. By default it lists the pending dead letters. Payloads are hidden: JSON
output includes them with --show-payload.`,
	setup: func(fs *flag.FlagSet) action {
		sel := declareFilterFlags(fs, "pending")
		out := declareOutputFlags(fs, allFormats, "include the payloads in JSON output, with secret-looking keys redacted")
		var limit int
		var after int64
		fs.IntVar(&limit, "limit", 50, "show at most `N` dead letters")
		fs.Int64Var(&after, "after", 0, "show the dead letters whose ID is greater than `ID`: the next page")
		return func(ctx context.Context, e *env) error { return runList(ctx, e, sel, out, limit, after) }
	},
}, {
	name:    "dlq show",
	args:    "ID",
	summary: "show one dead letter: metadata, error history, payload, audit",
	help: `
Show prints everything idem keeps about one dead letter: where and when it failed,
why, its error history (newest first), its metadata, its payload (pretty-printed
when it is JSON) and the audit entries of the operators' actions on it.

The payload is hidden unless --show-payload is given. Even then, the values of
secret-looking keys (authorization, cookie, password, secret, token, api_key, …,
and those of --redact-keys) are replaced by REDACTED, and secrets in other text
(URL passwords, bearer tokens) are scrubbed.`,
	setup: func(fs *flag.FlagSet) action {
		out := declareOutputFlags(fs, allFormats, "print the payload, with secret-looking keys redacted")
		return func(ctx context.Context, e *env) error { return runShow(ctx, e, out) }
	},
}, {
	name:    "dlq replay",
	args:    "[ID...]",
	summary: "republish dead letters to their topics (dry run unless --yes)",
	help: `
Replay republishes dead letters to the topic they were consumed from, with their
original payload and metadata and their original event ID, then marks them
replayed and bumps their replay count. The replayed message carries the metadata
key idem_replay_count (1 on the first replay) and a new message UUID. Metadata
values that idem redacted when it stored the dead letter (secret-looking keys)
are replayed as REDACTED.

Select the dead letters by ID, or with the filters (by default the pending ones);
a group of the report is --consumer C --topic T --fingerprint F. Without --yes,
replay only shows what it would do. With --yes it publishes one dead letter at a
time through the publisher --publish-url names:

  postgres://…   watermill-sql, default schema adapter: the table "watermill_<topic>"
                 must exist (subscribers create it); the payload column may be JSON
                 (the default) or BYTEA
  amqp://…       RabbitMQ through watermill-amqp, durable queue configuration (the
                 queue named after the topic must exist), publisher confirms
  nats://…       NATS JetStream through watermill-nats: a stream must hold the subject
  redis://…      Redis Streams through watermill-redisstream: the stream must exist

--publish-url defaults to $IDEM_PUBLISH_URL, then to the database URL when it is a
postgres:// URL. Each dead letter is replayed in one transaction of the store: it
forgets the event's counted failed attempts (so that the replayed copy gets a whole
retry budget), publishes, then marks the dead letter replayed and writes its audit
entry. A failed publish rolls it back: the dead letter keeps its status and its
attempts. A crash after the publish can only publish it twice, and the consumer
skips the duplicate. Replay stops at the first publish error and reports how many
dead letters it replayed. Dead letters without an event ID (reason malformed: their
ID is derived from their content), and dead letters kept in reduced form (the store
refused their data, so no payload was kept), cannot be replayed: replay refuses them.`,
	setup: func(fs *flag.FlagSet) action {
		sel := declareFilterFlags(fs, "pending")
		ch := declareChangeFlags(fs, false)
		out := declareOutputFlags(fs, []string{formatTable, formatJSON}, "")
		var r replayFlags
		fs.StringVar(&r.publishURL, "publish-url", "", "`URL` of the broker to republish to (default $"+envPublishURL+", else the database URL when it is postgres://)")
		fs.Float64Var(&r.rate, "rate", 0, "publish at most `N` messages per second, from 0.001 to 10000 (0: no limit)")
		return func(ctx context.Context, e *env) error { return runReplay(ctx, e, sel, ch, out, r) }
	},
}, {
	name:    "dlq discard",
	args:    "[ID...]",
	summary: "mark dead letters discarded, with a --reason (dry run unless --yes)",
	help: `
Discard marks dead letters discarded: dropped on purpose. --reason is mandatory and
goes to the audit entry written in the same transaction. Select the dead letters by
ID, or with the filters (by default the pending ones). Without --yes, discard only
shows what it would do.

With ordering's quarantine, an entity's later events are parked behind its dead
letter (show lists how many): discarding it then needs --parked release, which
publishes them again in sequence order through the consumer's delayed retries, or
--parked discard, which drops them; either way the entity's mark moves past the
discarded event, and the audit entry records the choice. Replay and resolve always
release them.`,
	setup: func(fs *flag.FlagSet) action {
		sel := declareFilterFlags(fs, "pending")
		ch := declareChangeFlags(fs, true)
		fs.StringVar(&ch.parked, "parked", "", "`release` or `discard` the events parked behind the dead letters (ordering's quarantine); required when there are any")
		out := declareOutputFlags(fs, []string{formatTable, formatJSON}, "")
		return func(ctx context.Context, e *env) error { return runChange(ctx, e, dlq.ActionDiscard, sel, ch, out) }
	},
}, {
	name:    "dlq resolve",
	args:    "[ID...]",
	summary: "mark dead letters resolved: dealt with by other means (dry run unless --yes)",
	help: `
Resolve marks dead letters resolved: dealt with by other means (a manual fix, a
compensating action). --reason is optional and goes to the audit entry written in
the same transaction. Select the dead letters by ID, or with the filters (by
default the pending ones). Without --yes, resolve only shows what it would do.`,
	setup: func(fs *flag.FlagSet) action {
		sel := declareFilterFlags(fs, "pending")
		ch := declareChangeFlags(fs, false)
		out := declareOutputFlags(fs, []string{formatTable, formatJSON}, "")
		return func(ctx context.Context, e *env) error { return runChange(ctx, e, dlq.ActionResolve, sel, ch, out) }
	},
}, {
	name:    "dlq check",
	summary: "exit 1 when pending dead letters exceed a count or an age (for cron)",
	help: `
Check counts the pending dead letters the filters select and finds the oldest. It
prints a one-line summary and exits 1 when there are more than --max-pending of
them, or when the oldest is older than --max-age; otherwise it exits 0. Run it
from cron or a Kubernetes CronJob to alert on dead letters nobody reviews. Exit
code 3 means the store could not be reached: alert on that too.`,
	setup: func(fs *flag.FlagSet) action {
		sel := declareFilterFlags(fs, "")
		out := declareOutputFlags(fs, []string{formatTable, formatJSON}, "")
		var c checkFlags
		fs.Int64Var(&c.maxPending, "max-pending", 0, "fail when more than `N` dead letters are pending; -1: no limit")
		fs.Var((*days)(&c.maxAge), "max-age", "fail when the oldest pending dead letter is older than `DURATION` (24h, 7d); 0: no limit")
		return func(ctx context.Context, e *env) error { return runCheck(ctx, e, sel, out, c) }
	},
}, {
	name:    "dlq audit",
	summary: "list the audit of replays, discards and resolves",
	help: `
Audit lists the operators' actions on dead letters, oldest first: when (database
clock), what (action, selector, the dead letters changed), who (OS user and host,
and the database role) and why (the reason).`,
	setup: func(fs *flag.FlagSet) action {
		var a auditFlags
		fs.StringVar(&a.action, "action", "", "show only this `ACTION`: replay, discard or resolve")
		fs.Int64Var(&a.id, "id", 0, "show only the entries that changed dead letter `ID`")
		fs.StringVar(&a.since, "since", "", "show the entries from `TIME` on (RFC 3339, a date, or a duration ago: 36h, 7d)")
		fs.StringVar(&a.until, "until", "", "show the entries before `TIME`")
		fs.IntVar(&a.limit, "limit", 50, "show at most `N` entries")
		fs.Int64Var(&a.after, "after", 0, "show the entries whose ID is greater than `ID`: the next page")
		out := declareOutputFlags(fs, allFormats, "")
		return func(ctx context.Context, e *env) error { return runAudit(ctx, e, a, out) }
	},
}}

// filterFlags are the flags that select dead letters.
type filterFlags struct {
	fs                                      *flag.FlagSet
	consumer, topic, fingerprint, eventType string
	status, since, until                    string
}

var filterFlagNames = []string{"consumer", "topic", "fingerprint", "event-type", "status", "since", "until"}

// declareFilterFlags declares the filters. status is the default of --status; "" for
// a command that has no --status (check: always pending).
func declareFilterFlags(fs *flag.FlagSet, status string) *filterFlags {
	f := &filterFlags{fs: fs, status: string(dlq.StatusPending)}
	fs.StringVar(&f.consumer, "consumer", "", "select the dead letters of consumer `NAME`")
	fs.StringVar(&f.topic, "topic", "", "select the dead letters consumed from topic `NAME`")
	fs.StringVar(&f.fingerprint, "fingerprint", "", "select the dead letters of failure group `FINGERPRINT`")
	fs.StringVar(&f.eventType, "event-type", "", "select the dead letters of event type `TYPE`")
	if status != "" {
		fs.StringVar(&f.status, "status", status, "select the dead letters in `STATUS`: pending, replayed, discarded, resolved or all")
	}
	fs.StringVar(&f.since, "since", "", "select the dead letters stored from `TIME` on (RFC 3339, a date, or a duration ago: 36h, 7d)")
	fs.StringVar(&f.until, "until", "", "select the dead letters stored before `TIME`")
	return f
}

// given reports whether flag name was set on the command line.
func (f *filterFlags) given(name string) bool {
	found := false
	f.fs.Visit(func(fl *flag.Flag) { found = found || fl.Name == name })
	return found
}

// anyGiven reports whether any filter was set on the command line.
func (f *filterFlags) anyGiven() bool {
	return slices.ContainsFunc(filterFlagNames, f.given)
}

// filter returns the dlq.Filter the flags describe. With ids, --status applies only
// when it was given: a dead letter named by ID is selected whatever its status.
func (f *filterFlags) filter(e *env, ids []int64) (dlq.Filter, error) {
	now, err := e.cli.now()
	if err != nil {
		return dlq.Filter{}, err
	}
	for _, t := range [][2]string{{"consumer", f.consumer}, {"topic", f.topic}, {"fingerprint", f.fingerprint}, {"event-type", f.eventType}} {
		if err := checkText(e.cmd, t[0], t[1]); err != nil {
			return dlq.Filter{}, err
		}
	}
	flt := dlq.Filter{IDs: ids, Consumer: f.consumer, Topic: f.topic, Fingerprint: f.fingerprint, EventType: f.eventType}
	if len(ids) == 0 || f.given("status") {
		switch f.status {
		case "all":
		case "":
			return flt, usageErrorf(e.cmd, "--status must be pending, replayed, discarded, resolved or all, got %q", f.status)
		default:
			flt.Status = dlq.Status(f.status)
			if !flt.Status.Valid() {
				return flt, usageErrorf(e.cmd, "--status must be pending, replayed, discarded, resolved or all, got %q", f.status)
			}
		}
	}
	if flt.Since, err = parseTime(f.since, now); err != nil {
		return flt, usageErrorf(e.cmd, "--since: %v", err)
	}
	if flt.Until, err = parseTime(f.until, now); err != nil {
		return flt, usageErrorf(e.cmd, "--until: %v", err)
	}
	if !flt.Since.IsZero() && !flt.Until.IsZero() && !flt.Since.Before(flt.Until) {
		return flt, usageErrorf(e.cmd, "--since %s is not before --until %s", timeText(flt.Since), timeText(flt.Until))
	}
	return flt, nil
}

// checkText returns a usage error unless v, the value of flag --name, is text that
// the stores can hold and match: valid UTF-8 without NUL bytes. PostgreSQL refuses
// anything else outright, and SQLite would store it as it is.
func checkText(cmd, name, v string) error {
	if !utf8.ValidString(v) || strings.ContainsRune(v, 0) {
		return usageErrorf(cmd, "--%s must be UTF-8 text without NUL bytes, got %q", name, v)
	}
	return nil
}

// maxReason is the longest --reason, in bytes: an audit entry says why in a sentence or
// a ticket reference, and the audit is printed whole.
const maxReason = 4096

// selector describes a selection for the audit: "ids=3,4" and the filters given, such
// as "ids=3 status=pending" or "consumer=billing fingerprint=3f2a… status=pending".
func selector(flt dlq.Filter) string { return describe(flt, true) }

func describe(flt dlq.Filter, withStatus bool) string {
	var parts []string
	add := func(k, v string) {
		if v == "" {
			return
		}
		if strings.ContainsAny(v, " \"'=") || !strconv.CanBackquote(v) {
			v = strconv.Quote(v)
		}
		parts = append(parts, k+"="+v)
	}
	if len(flt.IDs) > 0 {
		add("ids", joinIDs(flt.IDs, ","))
	}
	add("consumer", flt.Consumer)
	add("topic", flt.Topic)
	add("fingerprint", flt.Fingerprint)
	add("event_type", flt.EventType)
	if withStatus && (flt.Status != "" || len(flt.IDs) == 0) {
		add("status", cmp.Or(string(flt.Status), "all"))
	}
	if !flt.Since.IsZero() {
		add("since", flt.Since.UTC().Format(time.RFC3339))
	}
	if !flt.Until.IsZero() {
		add("until", flt.Until.UTC().Format(time.RFC3339))
	}
	if flt.Limit > 0 {
		add("limit", strconv.Itoa(flt.Limit))
	}
	return strings.Join(parts, " ")
}

func joinIDs(ids []int64, sep string) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.FormatInt(id, 10)
	}
	return strings.Join(s, sep)
}

var daysRE = regexp.MustCompile(`^(\d+)d(.*)$`)

// days is a flag.Value for a duration that may start with a number of days: 7d, 1d12h.
type days time.Duration

func (d *days) String() string { return time.Duration(*d).String() }

func (d *days) Set(s string) error {
	v, err := parseDays(s)
	*d = days(v)
	return err
}

// parseDays parses a Go duration that may start with a number of days: 36h, 7d, 1d12h.
func parseDays(s string) (time.Duration, error) {
	var total time.Duration
	rest := s
	m := daysRE.FindStringSubmatch(s)
	if m != nil {
		n, err := strconv.Atoi(m[1])
		if err != nil || n > 100000 {
			return 0, fmt.Errorf("%q is out of range", s)
		}
		total, rest = time.Duration(n)*24*time.Hour, m[2]
	}
	if rest != "" || m == nil {
		d, err := time.ParseDuration(rest)
		if err != nil {
			return 0, fmt.Errorf("%q is not a duration such as 36h or 7d", s)
		}
		if d > 0 && total > math.MaxInt64-d || d < 0 && total > 0 {
			return 0, fmt.Errorf("%q is out of range", s) // overflows, or 1d-2h
		}
		total += d
	}
	return total, nil
}

// parseTime reads a time given on the command line: RFC 3339, a date or a date and
// time in UTC, or a duration before now (36h, 90m, 7d, 1d12h). "" is the zero time.
func parseTime(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	ago, err := parseDays(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither a time (2006-01-02T15:04:05Z, 2006-01-02) nor a duration ago (36h, 7d)", s)
	}
	if ago < 0 {
		return time.Time{}, fmt.Errorf("%q is a negative duration", s)
	}
	return now.Add(-ago), nil
}

// now is the command's clock: $IDEM_NOW when set (tests), otherwise the current time.
func (c *cli) now() (time.Time, error) {
	s := c.getenv(envNow)
	if s == "" {
		return time.Now(), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, usageErrorf("", "$%s must be an RFC 3339 time, got %q", envNow, s)
	}
	return t, nil
}

// outputFlags are the flags that shape what a command prints.
type outputFlags struct {
	format      string
	formats     []string
	showPayload bool
	redactKeys  string
}

// declareOutputFlags declares --format, and, when payload says what --show-payload
// does, --show-payload and --redact-keys.
func declareOutputFlags(fs *flag.FlagSet, formats []string, payload string) *outputFlags {
	o := &outputFlags{formats: formats}
	fs.StringVar(&o.format, "format", formatTable, "output `FORMAT`: "+orList(formats))
	if payload != "" {
		fs.BoolVar(&o.showPayload, "show-payload", false, payload)
		fs.StringVar(&o.redactKeys, "redact-keys", "", "also redact the values of keys containing one of these comma-separated `WORDS`, in metadata and JSON payloads")
	}
	return o
}

func (o *outputFlags) check(cmd string) error {
	if err := checkText(cmd, "redact-keys", o.redactKeys); err != nil {
		return err
	}
	return checkFormat(cmd, o.format, o.formats...)
}

func (o *outputFlags) redactor() redactor {
	var r redactor
	for _, w := range strings.Split(o.redactKeys, ",") {
		if w = strings.ToLower(strings.TrimSpace(w)); w != "" {
			r.extra = append(r.extra, w)
		}
	}
	return r
}

// changeFlags are the flags of the commands that change dead letters.
type changeFlags struct {
	reason        string
	reasonMissing bool // --reason is mandatory and was not given
	yes, all      bool
	limit         int
	mandatory     bool
	// parked is what discard does to the events parked behind the dead letters.
	parked string
}

func declareChangeFlags(fs *flag.FlagSet, reasonRequired bool) *changeFlags {
	c := &changeFlags{mandatory: reasonRequired}
	usage := "say why in `TEXT`, for the audit"
	if reasonRequired {
		usage += " (required)"
	}
	fs.StringVar(&c.reason, "reason", "", usage)
	fs.BoolVar(&c.yes, "yes", false, "act: without it the command only shows what it would do")
	fs.BoolVar(&c.all, "all", false, "select every dead letter the status selects, when no ID and no other filter is given")
	fs.IntVar(&c.limit, "limit", 0, "act on at most `N` dead letters (0: no limit)")
	return c
}

// parseIDs reads dead-letter IDs from the positional arguments.
func parseIDs(cmd string, args []string) ([]int64, error) {
	var ids []int64
	for _, a := range args {
		for _, part := range strings.Split(a, ",") {
			if part == "" {
				continue
			}
			id, err := strconv.ParseInt(part, 10, 64)
			if err != nil || id < 1 {
				return nil, usageErrorf(cmd, "%q is not a dead-letter ID: IDs are positive whole numbers, as report and list show them", part)
			}
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// actor is who runs the command, for the audit.
func actor(getenv func(string) string) dlq.Actor {
	a := dlq.Actor{OSUser: getenv("USER")}
	if u, err := user.Current(); err == nil && u.Username != "" {
		a.OSUser = u.Username
	}
	a.OSUser = cmp.Or(a.OSUser, "unknown")
	a.Host, _ = os.Hostname()
	return a
}

// selectAll returns the dead letters flt selects, all pages of them, at most limit
// (0: all). Every ID of flt.IDs must be selected: a missing one is an error.
func selectAll(ctx context.Context, e *env, st *store, flt dlq.Filter, limit int) ([]*dlq.Record, error) {
	const page = 1000
	var out []*dlq.Record
	f := flt
	for {
		f.Limit = page
		if limit > 0 {
			f.Limit = min(page, limit-len(out))
		}
		recs, err := st.List(ctx, f)
		if err != nil {
			return nil, err
		}
		out = append(out, recs...)
		if len(recs) < f.Limit || (limit > 0 && len(out) >= limit) {
			break
		}
		f.AfterID = recs[len(recs)-1].ID
	}
	if limit == 0 {
		for _, id := range flt.IDs {
			if !slices.ContainsFunc(out, func(r *dlq.Record) bool { return r.ID == id }) {
				return nil, notSelected(ctx, e, st, id, flt)
			}
		}
	}
	return out, nil
}

// notSelected explains why dead letter id is not among those flt selects.
func notSelected(ctx context.Context, e *env, st *store, id int64, flt dlq.Filter) error {
	rec, err := st.Get(ctx, id)
	if errors.Is(err, dlq.ErrNotFound) {
		return &exitError{code: exitFailure, err: fmt.Errorf("dead letter %d not found in %s", id, e.shownURL)}
	}
	if err != nil {
		return err
	}
	return &exitError{code: exitFailure, err: fmt.Errorf("dead letter %d (%s) is not selected by the filters: %s", id, rec.Status, selector(dlq.Filter{
		Consumer: flt.Consumer, Topic: flt.Topic, Fingerprint: flt.Fingerprint, EventType: flt.EventType,
		Status: flt.Status, Since: flt.Since, Until: flt.Until,
	}))}
}
