package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/idemkit/idem/dlq"
)

// The JSON output of the dlq commands. Its keys are a stable interface, documented in
// docs/cli.md: add keys, never rename or remove one. Times are RFC 3339 in UTC, ages
// whole seconds.

// reportJSON is the output of `idem dlq report --format json`.
type reportJSON struct {
	Total  totalJSON   `json:"total"`
	Groups []groupJSON `json:"groups"`
}

type totalJSON struct {
	DeadLetters      int64      `json:"dead_letters"`
	Groups           int        `json:"groups"`
	Parked           int64      `json:"parked,omitempty"` // events parked behind them (quarantine), when any
	OldestAt         *time.Time `json:"oldest_at"`
	OldestAgeSeconds *int64     `json:"oldest_age_seconds"`
}

type groupJSON struct {
	Consumer         string    `json:"consumer"`
	Topic            string    `json:"topic"`
	Fingerprint      string    `json:"fingerprint"`
	Count            int64     `json:"count"`
	Parked           int64     `json:"parked,omitempty"` // events parked behind its pending dead letters, when any
	FirstSeen        time.Time `json:"first_seen"`
	LastSeen         time.Time `json:"last_seen"`
	OldestAgeSeconds int64     `json:"oldest_age_seconds"`
	SampleError      string    `json:"sample_error"`
	SampleIDs        []int64   `json:"sample_ids"`
	SampleEventIDs   []string  `json:"sample_event_ids"`
}

// listJSON is the output of `idem dlq list --format json`.
type listJSON struct {
	DeadLetters []deadLetterJSON `json:"dead_letters"`
	// NextAfterID is the --after of the next page; null on the last page.
	NextAfterID *int64 `json:"next_after_id"`
}

// showJSON is the output of `idem dlq show --format json`.
type showJSON struct {
	DeadLetter deadLetterJSON `json:"dead_letter"`
	Audit      []auditJSON    `json:"audit"`
}

type deadLetterJSON struct {
	ID             int64          `json:"id"`
	Consumer       string         `json:"consumer"`
	EventID        string         `json:"event_id"`
	Topic          string         `json:"topic"`
	Handler        string         `json:"handler"`
	Status         string         `json:"status"`
	Reason         string         `json:"reason"`
	Error          string         `json:"error"`
	Fingerprint    string         `json:"fingerprint"`
	Attempts       int            `json:"attempts"`
	Count          int            `json:"count"`
	ReplayCount    int            `json:"replay_count"`
	Parked         int            `json:"parked,omitempty"` // events parked behind it (quarantine); show only, when any
	EventType      string         `json:"event_type"`
	EventVersion   string         `json:"event_version"`
	MessageUUID    string         `json:"message_uuid"`
	CorrelationID  string         `json:"correlation_id"`
	TraceID        string         `json:"trace_id"`
	SpanID         string         `json:"span_id"`
	Host           string         `json:"host"`
	FirstFailedAt  time.Time      `json:"first_failed_at"`
	LastFailedAt   time.Time      `json:"last_failed_at"`
	DeadLetteredAt time.Time      `json:"dead_lettered_at"`
	UpdatedAt      time.Time      `json:"updated_at"`
	AgeSeconds     int64          `json:"age_seconds"`
	Metadata       map[string]any `json:"metadata"` // see metadataJSON
	History        []failureJSON  `json:"history"`
	PayloadSize    int            `json:"payload_size"`
	PayloadFormat  string         `json:"payload_format"`
	// Payload is null unless --show-payload: JSON or text with secrets redacted, or
	// base64 for a binary payload.
	Payload *string `json:"payload"`
}

type failureJSON struct {
	At    time.Time `json:"at"`
	Error string    `json:"error"`
}

type auditJSON struct {
	ID            int64     `json:"id"`
	At            time.Time `json:"at"`
	Action        string    `json:"action"`
	OSUser        string    `json:"os_user"`
	Host          string    `json:"host"`
	DBRole        string    `json:"db_role"`
	Selector      string    `json:"selector"`
	Reason        string    `json:"reason"`
	DeadLetterIDs []int64   `json:"dead_letter_ids"`
}

// auditListJSON is the output of `idem dlq audit --format json`.
type auditListJSON struct {
	Audit       []auditJSON `json:"audit"`
	NextAfterID *int64      `json:"next_after_id"`
}

// checkJSON is the output of `idem dlq check --format json`.
type checkJSON struct {
	OK               bool       `json:"ok"`
	Pending          int64      `json:"pending"`
	MaxPending       *int64     `json:"max_pending"`
	OldestAt         *time.Time `json:"oldest_at"`
	OldestAgeSeconds *int64     `json:"oldest_age_seconds"`
	MaxAgeSeconds    *int64     `json:"max_age_seconds"`
	Summary          string     `json:"summary"`
}

func seconds(d time.Duration) int64 { return int64(max(d, 0) / time.Second) }

func toDeadLetterJSON(rec *dlq.Record, now time.Time, r redactor, showPayload bool) deadLetterJSON {
	out := deadLetterJSON{
		ID: rec.ID, Consumer: rec.Consumer, EventID: rec.EventID, Topic: rec.Topic, Handler: rec.Handler,
		Status: string(rec.Status), Reason: string(rec.Reason), Error: rec.Error, Fingerprint: rec.Fingerprint,
		Attempts: rec.Attempts, Count: rec.Count, ReplayCount: rec.ReplayCount, Parked: rec.Parked,
		EventType: rec.EventType, EventVersion: rec.EventVersion, MessageUUID: rec.MessageUUID,
		CorrelationID: rec.CorrelationID, TraceID: rec.TraceID, SpanID: rec.SpanID, Host: rec.Host,
		FirstFailedAt: rec.FirstFailedAt.UTC(), LastFailedAt: rec.LastFailedAt.UTC(),
		DeadLetteredAt: rec.DeadLetteredAt.UTC(), UpdatedAt: rec.UpdatedAt.UTC(),
		AgeSeconds:  seconds(now.Sub(rec.DeadLetteredAt)),
		Metadata:    metadataJSON(r.metadata(rec.Metadata)),
		History:     []failureJSON{},
		PayloadSize: len(rec.Payload),
	}
	for _, f := range rec.History {
		out.History = append(out.History, failureJSON{At: f.At.UTC(), Error: f.Error})
	}
	format, shown := r.payload(rec.Payload, false)
	out.PayloadFormat = format
	if showPayload {
		out.Payload = &shown
	}
	return out
}

func toAuditJSON(e dlq.AuditEntry) auditJSON {
	return auditJSON{
		ID: e.ID, At: e.At.UTC(), Action: string(e.Action), OSUser: e.OSUser, Host: e.Host, DBRole: e.DBRole,
		Selector: e.Selector, Reason: e.Reason, DeadLetterIDs: append([]int64{}, e.DeadLetterIDs...),
	}
}

func runReport(ctx context.Context, e *env, sel *filterFlags, out *outputFlags, wide bool) error {
	if err := out.check(e.cmd); err != nil {
		return err
	}
	flt, err := sel.filter(e, nil)
	if err != nil {
		return err
	}
	now, _ := e.cli.now()
	st, err := e.store(ctx)
	if err != nil {
		return err
	}
	defer st.close()
	groups, err := st.Report(ctx, flt)
	if err != nil {
		return err
	}
	var total totalJSON
	var oldest time.Time
	for _, g := range groups {
		total.DeadLetters += g.Count
		total.Parked += g.Parked
		if oldest.IsZero() || g.FirstSeen.Before(oldest) {
			oldest = g.FirstSeen
		}
	}
	total.Groups = len(groups)
	if !oldest.IsZero() {
		at, age := oldest.UTC(), seconds(now.Sub(oldest))
		total.OldestAt, total.OldestAgeSeconds = &at, &age
	}
	if out.format == formatJSON {
		res := reportJSON{Total: total, Groups: []groupJSON{}}
		for _, g := range groups {
			res.Groups = append(res.Groups, groupJSON{
				Consumer: g.Consumer, Topic: g.Topic, Fingerprint: g.Fingerprint, Count: g.Count, Parked: g.Parked,
				FirstSeen: g.FirstSeen.UTC(), LastSeen: g.LastSeen.UTC(), OldestAgeSeconds: seconds(now.Sub(g.FirstSeen)),
				SampleError: g.SampleError, SampleIDs: g.SampleIDs, SampleEventIDs: g.SampleEventIDs,
			})
		}
		return writeJSON(e.stdout, res)
	}
	what := statusWords(flt.Status)
	if len(groups) == 0 && out.format == formatTable {
		fmt.Fprintf(e.stdout, "no %s\n", what)
		return nil
	}
	// The table leaves the samples out unless --wide: it fits a narrower terminal.
	samples := wide || out.format != formatTable
	t := &table{headers: []string{"CONSUMER", "TOPIC", "FINGERPRINT", "COUNT", "FIRST SEEN", "LAST SEEN", "OLDEST", "SAMPLE ERROR", "SAMPLE IDS", "SAMPLE EVENT IDS"}}
	if out.format != formatTable {
		t.headers = []string{"consumer", "topic", "fingerprint", "count", "first_seen", "last_seen", "oldest_age", "sample_error", "sample_ids", "sample_event_ids"}
	}
	const sampleColumns = 3
	if !samples {
		t.headers = t.headers[:len(t.headers)-sampleColumns]
	}
	// The parked events get a column after the count only when there are any: a
	// store without ordering's quarantine reports as it always did.
	const parkedColumn = 4
	parked := total.Parked > 0
	if parked {
		name := "PARKED"
		if out.format != formatTable {
			name = "parked"
		}
		t.headers = slices.Insert(t.headers, parkedColumn, name)
	}
	errWidth, eventID := 60, shortEventID
	if out.format != formatTable {
		errWidth, eventID = 1<<20, func(s string) string { return s }
	}
	for _, g := range groups {
		events := make([]string, len(g.SampleEventIDs))
		for i, id := range g.SampleEventIDs {
			events[i] = eventID(id)
		}
		row := []string{g.Consumer, g.Topic, g.Fingerprint, strconv.FormatInt(g.Count, 10), timeText(g.FirstSeen), timeText(g.LastSeen),
			ageText(now.Sub(g.FirstSeen)), shorten(g.SampleError, errWidth), joinIDs(g.SampleIDs, " "), strings.Join(events, " ")}
		if !samples {
			row = row[:len(row)-sampleColumns]
		}
		if parked {
			row = slices.Insert(row, parkedColumn, strconv.FormatInt(g.Parked, 10))
		}
		t.add(row...)
	}
	if err := t.write(e.stdout, out.format); err != nil {
		return err
	}
	summary := fmt.Sprintf("total: %d %s in %d %s", total.DeadLetters, what, total.Groups, plural(total.Groups, "group", "groups"))
	if !oldest.IsZero() {
		summary += fmt.Sprintf(", oldest %s (%s)", ageText(now.Sub(oldest)), timeText(oldest))
	}
	if parked {
		events := "events"
		if total.Parked == 1 {
			events = "event"
		}
		summary += fmt.Sprintf("; %d %s parked behind them", total.Parked, events)
	}
	switch out.format {
	case formatTable:
		fmt.Fprintln(e.stdout, summary)
	case formatMarkdown:
		fmt.Fprintf(e.stdout, "\n%s\n", markdownCell(summary))
	}
	return nil
}

// statusWords names the dead letters of a status: "pending dead letters".
func statusWords(s dlq.Status) string {
	if s == "" {
		return "dead letters"
	}
	return string(s) + " dead letters"
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func runList(ctx context.Context, e *env, sel *filterFlags, out *outputFlags, limit int, after int64) error {
	if err := out.check(e.cmd); err != nil {
		return err
	}
	switch {
	case limit < 1:
		return usageErrorf(e.cmd, "--limit must be at least 1, got %d", limit)
	case after < 0:
		return usageErrorf(e.cmd, "--after must not be negative, got %d", after)
	}
	flt, err := sel.filter(e, nil)
	if err != nil {
		return err
	}
	now, _ := e.cli.now()
	st, err := e.store(ctx)
	if err != nil {
		return err
	}
	defer st.close()
	flt.AfterID, flt.Limit = after, peek(limit)
	recs, err := st.List(ctx, flt)
	if err != nil {
		return err
	}
	var next *int64
	if len(recs) > limit {
		recs = recs[:limit]
		id := recs[len(recs)-1].ID
		next = &id
	}
	r := out.redactor()
	if out.format == formatJSON {
		res := listJSON{DeadLetters: []deadLetterJSON{}, NextAfterID: next}
		for _, rec := range recs {
			res.DeadLetters = append(res.DeadLetters, toDeadLetterJSON(rec, now, r, out.showPayload))
		}
		return writeJSON(e.stdout, res)
	}
	what := statusWords(flt.Status)
	if len(recs) == 0 && out.format == formatTable {
		fmt.Fprintf(e.stdout, "no %s\n", what)
		return nil
	}
	t := &table{headers: []string{"ID", "STATUS", "CONSUMER", "TOPIC", "EVENT ID", "REASON", "ATTEMPTS", "REPLAYS", "DEAD-LETTERED", "AGE", "ERROR"}}
	errWidth, eventID := 60, shortEventID
	if out.format != formatTable {
		t.headers = []string{"id", "status", "consumer", "topic", "event_id", "reason", "attempts", "replays", "dead_lettered_at", "age", "error"}
		errWidth, eventID = 1<<20, func(s string) string { return s }
	}
	for _, rec := range recs {
		t.add(strconv.FormatInt(rec.ID, 10), string(rec.Status), rec.Consumer, rec.Topic, eventID(rec.EventID), string(rec.Reason),
			strconv.Itoa(rec.Attempts), strconv.Itoa(rec.ReplayCount), timeText(rec.DeadLetteredAt), ageText(now.Sub(rec.DeadLetteredAt)),
			shorten(rec.Error, errWidth))
	}
	if err := t.write(e.stdout, out.format); err != nil {
		return err
	}
	if next != nil {
		line := fmt.Sprintf("showing %d %s; next page: --after %d", len(recs), what, *next)
		switch out.format {
		case formatTable:
			fmt.Fprintln(e.stdout, line)
		case formatMarkdown:
			fmt.Fprintf(e.stdout, "\n%s\n", markdownCell(line))
		}
	}
	return nil
}

// peek is the number of rows to read for a page of limit: one more, to know whether
// another page follows. A limit of math.MaxInt has no next page: it reads limit rows.
func peek(limit int) int {
	if limit == math.MaxInt {
		return limit
	}
	return limit + 1
}

func runShow(ctx context.Context, e *env, out *outputFlags) error {
	if err := out.check(e.cmd); err != nil {
		return err
	}
	if len(e.args) != 1 {
		return usageErrorf(e.cmd, "dlq show takes one dead-letter ID, got %d arguments", len(e.args))
	}
	ids, err := parseIDs(e.cmd, e.args)
	if err != nil {
		return err
	}
	now, _ := e.cli.now()
	st, err := e.store(ctx)
	if err != nil {
		return err
	}
	defer st.close()
	rec, err := st.Get(ctx, ids[0])
	if errors.Is(err, dlq.ErrNotFound) {
		return &exitError{code: exitFailure, err: fmt.Errorf("dead letter %d not found in %s", ids[0], e.shownURL)}
	}
	if err != nil {
		return err
	}
	audit, err := st.Audit(ctx, dlq.AuditFilter{DeadLetterID: rec.ID})
	if err != nil {
		return err
	}
	r := out.redactor()
	switch out.format {
	case formatJSON:
		res := showJSON{DeadLetter: toDeadLetterJSON(rec, now, r, out.showPayload), Audit: []auditJSON{}}
		for _, a := range audit {
			res.Audit = append(res.Audit, toAuditJSON(a))
		}
		return writeJSON(e.stdout, res)
	case formatCSV:
		return showCSV(e.stdout, rec, audit, now, r, out.showPayload)
	case formatMarkdown:
		return showMarkdown(e.stdout, rec, audit, now, r, out.showPayload)
	}
	return showText(e.stdout, rec, audit, now, r, out.showPayload)
}

// fields lists a dead letter's fields as show prints them.
func fields(rec *dlq.Record, now time.Time) [][2]string {
	f := [][2]string{
		{"id", strconv.FormatInt(rec.ID, 10)},
		{"status", string(rec.Status)},
		{"consumer", rec.Consumer},
		{"event id", rec.EventID},
		{"topic", rec.Topic},
		{"handler", rec.Handler},
		{"reason", string(rec.Reason)},
		{"attempts", strconv.Itoa(rec.Attempts)},
		{"times dead-lettered", strconv.Itoa(rec.Count)},
		{"replays", strconv.Itoa(rec.ReplayCount)},
		{"fingerprint", rec.Fingerprint},
		{"event type", rec.EventType},
		{"event version", rec.EventVersion},
		{"message uuid", rec.MessageUUID},
		{"correlation id", rec.CorrelationID},
		{"trace id", rec.TraceID},
		{"span id", rec.SpanID},
		{"host", rec.Host},
		{"first failed", timeText(rec.FirstFailedAt)},
		{"last failed", timeText(rec.LastFailedAt)},
		{"dead-lettered at", timeText(rec.DeadLetteredAt)},
		{"age", ageText(now.Sub(rec.DeadLetteredAt))},
		{"updated at", timeText(rec.UpdatedAt)},
	}
	if rec.Parked > 0 {
		f = slices.Insert(f, 10, [2]string{"parked events", strconv.Itoa(rec.Parked)})
	}
	return f
}

func payloadSummary(rec *dlq.Record, format string) string {
	what := map[string]string{payloadJSON: "JSON", payloadText: "text", payloadBinary: "binary, shown as base64"}[format]
	return fmt.Sprintf("%d %s, %s", len(rec.Payload), plural(len(rec.Payload), "byte", "bytes"), what)
}

func auditLine(a dlq.AuditEntry) string {
	s := fmt.Sprintf("#%d %s %s by %s@%s (role %s), %s", a.ID, timeText(a.At), a.Action, a.OSUser, a.Host, a.DBRole, a.Selector)
	if a.Reason != "" {
		s += ": " + a.Reason
	}
	return s
}

func showText(w io.Writer, rec *dlq.Record, audit []dlq.AuditEntry, now time.Time, r redactor, showPayload bool) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, f := range fields(rec, now) {
		fmt.Fprintf(tw, "%s\t%s\n", f[0], inert(f[1]))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nerror:\n  %s\n", inert(rec.Error))
	fmt.Fprintf(w, "\nhistory (newest first):\n")
	if len(rec.History) == 0 {
		fmt.Fprintln(w, "  -")
	}
	for _, f := range rec.History {
		fmt.Fprintf(w, "  %s  %s\n", timeText(f.At), inert(f.Error))
	}
	fmt.Fprintf(w, "\nmetadata:\n")
	md := r.shownMetadata(rec.Metadata)
	if len(md) == 0 {
		fmt.Fprintln(w, "  -")
	}
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, kv := range md {
		fmt.Fprintf(tw, "  %s\t%s\n", inert(kv[0]), inert(kv[1]))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	format, shown := r.payload(rec.Payload, true)
	fmt.Fprintf(w, "\npayload (%s):\n", payloadSummary(rec, format))
	switch {
	case !showPayload:
		fmt.Fprintln(w, "  hidden: add --show-payload to print it")
	case format == payloadBinary:
		for s := shown; s != ""; {
			n := min(len(s), 76)
			fmt.Fprintf(w, "  %s\n", s[:n])
			s = s[n:]
		}
	default:
		for _, l := range strings.Split(shown, "\n") {
			fmt.Fprintf(w, "  %s\n", inert(l))
		}
	}
	fmt.Fprintf(w, "\naudit:\n")
	if len(audit) == 0 {
		fmt.Fprintln(w, "  -")
	}
	for _, a := range audit {
		fmt.Fprintf(w, "  %s\n", inert(auditLine(a)))
	}
	return nil
}

func showMarkdown(w io.Writer, rec *dlq.Record, audit []dlq.AuditEntry, now time.Time, r redactor, showPayload bool) error {
	fmt.Fprintf(w, "## Dead letter %d\n\n", rec.ID)
	t := &table{headers: []string{"field", "value"}}
	for _, f := range fields(rec, now) {
		t.add(f[0], f[1])
	}
	if err := t.write(w, formatMarkdown); err != nil {
		return err
	}
	errText := inert(rec.Error)
	fmt.Fprintf(w, "\n### Error\n\n%s\n%s\n%s\n", fence(errText), errText, fence(errText))
	fmt.Fprintf(w, "\n### History\n\n")
	t = &table{headers: []string{"at", "error"}}
	for _, f := range rec.History {
		t.add(timeText(f.At), f.Error)
	}
	if err := t.write(w, formatMarkdown); err != nil {
		return err
	}
	fmt.Fprintf(w, "\n### Metadata\n\n")
	t = &table{headers: []string{"key", "value"}}
	for _, kv := range r.shownMetadata(rec.Metadata) {
		t.add(kv[0], kv[1])
	}
	if err := t.write(w, formatMarkdown); err != nil {
		return err
	}
	format, shown := r.payload(rec.Payload, true)
	fmt.Fprintf(w, "\n### Payload\n\n%s\n", markdownCell(payloadSummary(rec, format)))
	if showPayload {
		shown = inertLines(shown)
		lang := map[string]string{payloadJSON: "json", payloadText: "text", payloadBinary: "text"}[format]
		fmt.Fprintf(w, "\n%s%s\n%s\n%s\n", fence(shown), lang, shown, fence(shown))
	} else {
		fmt.Fprintf(w, "\nhidden: add --show-payload to print it\n")
	}
	fmt.Fprintf(w, "\n### Audit\n\n")
	t = &table{headers: []string{"id", "at", "action", "os_user", "host", "db_role", "selector", "reason", "dead_letter_ids"}}
	for _, a := range audit {
		t.add(auditRow(a)...)
	}
	return t.write(w, formatMarkdown)
}

func showCSV(w io.Writer, rec *dlq.Record, audit []dlq.AuditEntry, now time.Time, r redactor, showPayload bool) error {
	t := &table{headers: []string{"field", "value"}}
	for _, f := range fields(rec, now) {
		t.add(strings.NewReplacer(" ", "_", "-", "_").Replace(f[0]), f[1])
	}
	t.add("error", rec.Error)
	for i, f := range rec.History {
		t.add(fmt.Sprintf("history.%d.at", i), timeText(f.At))
		t.add(fmt.Sprintf("history.%d.error", i), f.Error)
	}
	for _, kv := range r.shownMetadata(rec.Metadata) {
		t.add("metadata."+kv[0], kv[1])
	}
	format, shown := r.payload(rec.Payload, false)
	t.add("payload_size", strconv.Itoa(len(rec.Payload)))
	t.add("payload_format", format)
	if showPayload {
		t.add("payload", shown)
	}
	for i, a := range audit {
		t.add(fmt.Sprintf("audit.%d", i), auditLine(a))
	}
	return t.write(w, formatCSV)
}

func auditRow(a dlq.AuditEntry) []string {
	return []string{strconv.FormatInt(a.ID, 10), timeText(a.At), string(a.Action), a.OSUser, a.Host, a.DBRole, a.Selector, a.Reason, joinIDs(a.DeadLetterIDs, " ")}
}

type auditFlags struct {
	action, since, until string
	id, after            int64
	limit                int
}

func runAudit(ctx context.Context, e *env, a auditFlags, out *outputFlags) error {
	if err := out.check(e.cmd); err != nil {
		return err
	}
	now, err := e.cli.now()
	if err != nil {
		return err
	}
	f := dlq.AuditFilter{Action: dlq.Action(a.action), DeadLetterID: a.id, AfterID: a.after, Limit: peek(a.limit)}
	switch f.Action {
	case "", dlq.ActionReplay, dlq.ActionDiscard, dlq.ActionResolve:
	default:
		return usageErrorf(e.cmd, "--action must be replay, discard or resolve, got %q", a.action)
	}
	switch {
	case a.limit < 1:
		return usageErrorf(e.cmd, "--limit must be at least 1, got %d", a.limit)
	case a.after < 0:
		return usageErrorf(e.cmd, "--after must not be negative, got %d", a.after)
	case a.id < 0:
		return usageErrorf(e.cmd, "--id must be a dead-letter ID, got %d", a.id)
	}
	if f.Since, err = parseTime(a.since, now); err != nil {
		return usageErrorf(e.cmd, "--since: %v", err)
	}
	if f.Until, err = parseTime(a.until, now); err != nil {
		return usageErrorf(e.cmd, "--until: %v", err)
	}
	if err := f.Validate(); err != nil {
		return usageErrorf(e.cmd, "%s", strings.TrimPrefix(err.Error(), "dlq: "))
	}
	st, err := e.store(ctx)
	if err != nil {
		return err
	}
	defer st.close()
	entries, err := st.Audit(ctx, f)
	if err != nil {
		return err
	}
	var next *int64
	if len(entries) > a.limit {
		entries = entries[:a.limit]
		id := entries[len(entries)-1].ID
		next = &id
	}
	if out.format == formatJSON {
		res := auditListJSON{Audit: []auditJSON{}, NextAfterID: next}
		for _, a := range entries {
			res.Audit = append(res.Audit, toAuditJSON(a))
		}
		return writeJSON(e.stdout, res)
	}
	if len(entries) == 0 && out.format == formatTable {
		fmt.Fprintln(e.stdout, "no audit entries")
		return nil
	}
	t := &table{headers: []string{"ID", "AT", "ACTION", "OS USER", "HOST", "DB ROLE", "SELECTOR", "REASON", "DEAD LETTERS"}}
	if out.format != formatTable {
		t.headers = []string{"id", "at", "action", "os_user", "host", "db_role", "selector", "reason", "dead_letter_ids"}
	}
	for _, a := range entries {
		t.add(auditRow(a)...)
	}
	if err := t.write(e.stdout, out.format); err != nil {
		return err
	}
	if next != nil && out.format == formatTable {
		fmt.Fprintf(e.stdout, "showing %d audit entries; next page: --after %d\n", len(entries), *next)
	}
	return nil
}

type checkFlags struct {
	maxPending int64
	maxAge     time.Duration
}

func runCheck(ctx context.Context, e *env, sel *filterFlags, out *outputFlags, c checkFlags) error {
	if err := out.check(e.cmd); err != nil {
		return err
	}
	switch {
	case c.maxPending < -1:
		return usageErrorf(e.cmd, "--max-pending must be -1 (no limit) or more, got %d", c.maxPending)
	case c.maxAge < 0:
		return usageErrorf(e.cmd, "--max-age must not be negative, got %s", c.maxAge)
	}
	flt, err := sel.filter(e, nil)
	if err != nil {
		return err
	}
	now, _ := e.cli.now()
	st, err := e.store(ctx)
	if err != nil {
		return err
	}
	defer st.close()
	groups, err := st.Report(ctx, flt)
	if err != nil {
		return err
	}
	res := checkJSON{OK: true}
	var oldest time.Time
	for _, g := range groups {
		res.Pending += g.Count
		if oldest.IsZero() || g.FirstSeen.Before(oldest) {
			oldest = g.FirstSeen
		}
	}
	age := now.Sub(oldest)
	var problems, limits []string
	if c.maxPending >= 0 {
		res.MaxPending = &c.maxPending
		limits = append(limits, fmt.Sprintf("at most %d", c.maxPending))
		if res.Pending > c.maxPending {
			problems = append(problems, fmt.Sprintf("more than %d", c.maxPending))
		}
	}
	if c.maxAge > 0 {
		s := seconds(c.maxAge)
		res.MaxAgeSeconds = &s
		limits = append(limits, "none older than "+ageText(c.maxAge))
		if !oldest.IsZero() && age > c.maxAge {
			problems = append(problems, "the oldest older than "+ageText(c.maxAge))
		}
	}
	summary := fmt.Sprintf("%d pending dead %s", res.Pending, plural(int(min(res.Pending, 2)), "letter", "letters"))
	if !oldest.IsZero() {
		at, secs := oldest.UTC(), seconds(age)
		res.OldestAt, res.OldestAgeSeconds = &at, &secs
		summary += fmt.Sprintf(", oldest %s (%s)", ageText(age), timeText(oldest))
	}
	if scope := scopeText(flt); scope != "" {
		summary += " " + scope
	}
	if len(problems) > 0 {
		res.OK = false
		summary = "FAIL: " + summary + ": " + strings.Join(problems, ", ")
	} else {
		summary = "OK: " + summary
		if len(limits) > 0 {
			summary += " (" + strings.Join(limits, ", ") + ")"
		}
	}
	res.Summary = summary
	if out.format == formatJSON {
		if err := writeJSON(e.stdout, res); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(e.stdout, inert(summary))
	}
	if !res.OK {
		return &exitError{code: exitFailure}
	}
	return nil
}

// scopeText names the filters of a check, if any: "for consumer=billing".
func scopeText(flt dlq.Filter) string {
	s := describe(flt, false)
	if s == "" {
		return ""
	}
	return "for " + s
}
