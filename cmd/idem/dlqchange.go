package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem/dlq"
)

// publishTimeout bounds the publish of one replayed message.
const publishTimeout = 30 * time.Second

// changeJSON is the output of `idem dlq replay|discard|resolve --format json`. Its keys
// are a stable interface, documented in docs/cli.md.
type changeJSON struct {
	Action   string `json:"action"`
	DryRun   bool   `json:"dry_run"`
	Selector string `json:"selector"`
	Reason   string `json:"reason"`
	// PublishURL is the broker replay publishes to, as redactURL prints it; null for
	// discard and resolve.
	PublishURL *string `json:"publish_url"`
	// Selected are the dead letters selected, Refused those replay cannot replay.
	Selected []int64       `json:"selected"`
	Refused  []refusedJSON `json:"refused"`
	// Published are the dead letters replay published; Changed those whose change
	// (replay, discard, resolve) committed with its audit entry.
	Published []int64 `json:"published"`
	Changed   []int64 `json:"changed"`
	AuditIDs  []int64 `json:"audit_ids"`
	// Error is why the command stopped early; null when it did not.
	Error *string `json:"error"`
}

type refusedJSON struct {
	ID     int64  `json:"id"`
	Reason string `json:"reason"`
}

func newChangeJSON(a dlq.Action, dryRun bool, sel, reason string) changeJSON {
	return changeJSON{
		Action: string(a), DryRun: dryRun, Selector: sel, Reason: reason,
		Selected: []int64{}, Refused: []refusedJSON{}, Published: []int64{}, Changed: []int64{}, AuditIDs: []int64{},
	}
}

// prepareChange checks the flags of a change and selects its dead letters.
func prepareChange(e *env, sel *filterFlags, ch *changeFlags, out *outputFlags) (dlq.Filter, error) {
	if err := out.check(e.cmd); err != nil {
		return dlq.Filter{}, err
	}
	ids, err := parseIDs(e.cmd, e.args)
	if err != nil {
		return dlq.Filter{}, err
	}
	if err := checkText(e.cmd, "reason", ch.reason); err != nil {
		return dlq.Filter{}, err
	}
	if len(ch.reason) > maxReason {
		return dlq.Filter{}, usageErrorf(e.cmd, "--reason must be at most %d bytes, got %d", maxReason, len(ch.reason))
	}
	if ch.mandatory && strings.TrimSpace(ch.reason) == "" {
		return dlq.Filter{}, usageErrorf(e.cmd, "--reason is required: say why, for the audit")
	}
	if ch.limit < 0 {
		return dlq.Filter{}, usageErrorf(e.cmd, "--limit must not be negative, got %d", ch.limit)
	}
	switch dlq.ParkedAction(ch.parked) {
	case "", dlq.ParkedRelease, dlq.ParkedDiscard:
	default:
		return dlq.Filter{}, usageErrorf(e.cmd, "--parked must be release or discard, got %q", ch.parked)
	}
	if len(ids) == 0 && !sel.anyGiven() && !ch.all {
		return dlq.Filter{}, usageErrorf(e.cmd, "select the dead letters: give their IDs, filters such as --consumer and --fingerprint, or --all for every %s one", sel.status)
	}
	flt, err := sel.filter(e, ids)
	if err != nil {
		return flt, err
	}
	flt.Limit = ch.limit
	return flt, nil
}

// selectionTable lists the selected dead letters as a dry run shows them.
func selectionTable(recs []*dlq.Record) *table {
	t := &table{headers: []string{"ID", "STATUS", "CONSUMER", "TOPIC", "EVENT ID", "REPLAYS", "ERROR"}}
	for _, rec := range recs {
		t.add(strconv.FormatInt(rec.ID, 10), string(rec.Status), rec.Consumer, rec.Topic, shortEventID(rec.EventID),
			strconv.Itoa(rec.ReplayCount), shorten(rec.Error, 60))
	}
	return t
}

func ids(recs []*dlq.Record) []int64 {
	out := make([]int64, len(recs))
	for i, r := range recs {
		out[i] = r.ID
	}
	return out
}

var pastTense = map[dlq.Action]string{dlq.ActionReplay: "replayed", dlq.ActionDiscard: "discarded", dlq.ActionResolve: "resolved"}

func countText(n int) string {
	return fmt.Sprintf("%d dead %s", n, plural(n, "letter", "letters"))
}

// runChange is discard and resolve.
func runChange(ctx context.Context, e *env, a dlq.Action, sel *filterFlags, ch *changeFlags, out *outputFlags) error {
	flt, err := prepareChange(e, sel, ch, out)
	if err != nil {
		return err
	}
	st, err := e.store(ctx)
	if err != nil {
		return err
	}
	defer st.close()
	recs, err := selectAll(ctx, e, st, flt, ch.limit)
	if err != nil {
		return err
	}
	res := newChangeJSON(a, !ch.yes, selector(flt), ch.reason)
	res.Selected = append(res.Selected, ids(recs)...)
	if len(recs) > 0 && ch.yes {
		change := dlq.Change{IDs: ids(recs), Actor: actor(e.cli.getenv), Reason: ch.reason, Selector: res.Selector, Parked: dlq.ParkedAction(ch.parked)}
		var entry dlq.AuditEntry
		if a == dlq.ActionDiscard {
			entry, err = st.Discard(ctx, change)
		} else {
			entry, err = st.Resolve(ctx, change)
		}
		if errors.Is(err, dlq.ErrParkedChoiceRequired) {
			// Still the store's error underneath: the console asks for the choice itself.
			return &exitError{code: exitUsage, usage: e.cmd, err: reworded{err: err,
				msg: "events of their entities are parked behind the selected dead letters (see idem dlq show): " +
					"give --parked release to publish them again, in order, or --parked discard to drop them; nothing changed"}}
		}
		if err != nil {
			return err
		}
		res.Changed = append(res.Changed, entry.DeadLetterIDs...)
		if entry.ID != 0 {
			res.AuditIDs = append(res.AuditIDs, entry.ID)
		}
	}
	if out.format == formatJSON {
		return writeJSON(e.stdout, res)
	}
	switch {
	case len(recs) == 0:
		fmt.Fprintf(e.stdout, "no dead letters selected (%s): nothing to %s\n", inert(res.Selector), a)
	case !ch.yes:
		if err := selectionTable(recs).write(e.stdout, formatTable); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "dry run: would %s %s; nothing changed. Add --yes to %s them.\n", a, countText(len(recs)), a)
	case len(res.Changed) == 0:
		fmt.Fprintf(e.stdout, "nothing to %s: the %s selected are %s already\n", a, countText(len(recs)), pastTense[a])
	default:
		fmt.Fprintf(e.stdout, "%s %s: %s (audit entry %d)\n", pastTense[a], countText(len(res.Changed)), joinIDs(res.Changed, ", "), res.AuditIDs[0])
		if n := len(recs) - len(res.Changed); n > 0 {
			fmt.Fprintf(e.stdout, "%s %s already\n", countText(n), plural(n, "was", "were")+" "+pastTense[a])
		}
	}
	return nil
}

// reworded is err told in the command line's words: msg in place of its own message,
// err still underneath for errors.Is.
type reworded struct {
	msg string
	err error
}

func (r reworded) Error() string { return r.msg }
func (r reworded) Unwrap() error { return r.err }

type replayFlags struct {
	publishURL string
	rate       float64
}

// The range of --rate, in messages per second, besides 0 (no limit). At the slowest,
// one message every 16m40s; at the fastest, one every 100µs, more than any broker
// here takes one message at a time.
const (
	minRate = 0.001
	maxRate = 10000
)

// rateInterval returns the time between two publishes at rate messages per second; 0
// for no limit. A rate that is not 0, or a finite number from minRate to maxRate, is a
// usage error.
func rateInterval(cmd string, rate float64) (time.Duration, error) {
	if rate == 0 {
		return 0, nil
	}
	if !(rate >= minRate && rate <= maxRate) { // also refuses NaN and the infinities
		return 0, usageErrorf(cmd, "--rate must be 0 (no limit) or from %g to %d messages per second, got %g", minRate, maxRate, rate)
	}
	return time.Duration(float64(time.Second) / rate), nil
}

// refusal says why rec cannot be replayed, or "".
func refusal(rec *dlq.Record) string {
	switch {
	case !rec.HasEventID():
		return "no event ID: the message had none (reason " + string(rec.Reason) + "), its ID is derived from its content; discard it, or republish a corrected message by hand"
	case rec.Reduced():
		return "kept in reduced form: the store refused its data, so neither its payload nor its metadata was kept (" + rec.Metadata[dlq.ReducedKey] + "); find the message at its producer, then resolve this one"
	case rec.Topic == "":
		return "no topic recorded"
	}
	return ""
}

func runReplay(ctx context.Context, e *env, sel *filterFlags, ch *changeFlags, out *outputFlags, r replayFlags) error {
	flt, err := prepareChange(e, sel, ch, out)
	if err != nil {
		return err
	}
	interval, err := rateInterval(e.cmd, r.rate)
	if err != nil {
		return err
	}
	target, err := e.publishTarget(r.publishURL)
	if err != nil {
		return err
	}
	st, err := e.store(ctx)
	if err != nil {
		return err
	}
	defer st.close()
	recs, err := selectAll(ctx, e, st, flt, ch.limit)
	if err != nil {
		return err
	}
	res := newChangeJSON(dlq.ActionReplay, !ch.yes, selector(flt), ch.reason)
	res.PublishURL = &target.shown
	res.Selected = append(res.Selected, ids(recs)...)
	var todo []*dlq.Record
	for _, rec := range recs {
		if why := refusal(rec); why != "" {
			res.Refused = append(res.Refused, refusedJSON{ID: rec.ID, Reason: why})
			continue
		}
		todo = append(todo, rec)
	}
	if len(res.Refused) > 0 && (len(flt.IDs) > 0 || len(todo) == 0) {
		// Named by ID, or nothing else to do: refuse the whole command.
		var lines []string
		for _, f := range res.Refused {
			lines = append(lines, fmt.Sprintf("dead letter %d: %s", f.ID, f.Reason))
		}
		return &exitError{code: exitFailure, err: fmt.Errorf("cannot replay %s, nothing was published:\n  %s",
			countText(len(res.Refused)), inert(strings.Join(lines, "\n  ")))}
	}
	text := out.format == formatTable
	refusedNote := func() {
		if len(res.Refused) > 0 && text {
			fmt.Fprintf(e.stdout, "refused %s that cannot be replayed (no event ID, or kept in reduced form): %s (see idem dlq show; discard or resolve them, or republish corrected messages by hand)\n",
				countText(len(res.Refused)), joinIDs(refusedIDs(res.Refused), ", "))
		}
	}
	if !ch.yes || len(todo) == 0 {
		if out.format == formatJSON {
			return writeJSON(e.stdout, res)
		}
		if len(todo) == 0 {
			fmt.Fprintf(e.stdout, "no dead letters selected (%s): nothing to replay\n", inert(res.Selector))
			return nil
		}
		if err := selectionTable(todo).write(e.stdout, formatTable); err != nil {
			return err
		}
		refusedNote()
		fmt.Fprintf(e.stdout, "dry run: would replay %s to %s; nothing was published. Add --yes to replay them.\n", countText(len(todo)), inert(target.shown))
		return nil
	}

	stop := func(err error) error {
		msg := e.cli.redact(err.Error())
		res.Error = &msg
		if out.format == formatJSON {
			if werr := writeJSON(e.stdout, res); werr != nil {
				return werr
			}
		} else {
			fmt.Fprintf(e.stdout, "stopped: replayed %d of %s\n", len(res.Changed), countText(len(todo)))
		}
		var ee *exitError
		if errors.As(err, &ee) {
			return err
		}
		return publishError(err)
	}
	pub, err := e.publisher(ctx, target)
	if err != nil {
		return stop(err)
	}
	defer pub.close()
	var topics []string
	for _, rec := range todo {
		if !slices.Contains(topics, rec.Topic) {
			topics = append(topics, rec.Topic)
		}
	}
	for _, topic := range topics {
		if err := pub.ready(ctx, topic); err != nil {
			return stop(fmt.Errorf("cannot replay to topic %q: %w", topic, err))
		}
	}

	who := actor(e.cli.getenv)
	prog := &progress{w: e.stdout, on: e.cli.terminal && text && len(todo) > 1, total: len(todo), start: time.Now()}
	var tick <-chan time.Time
	if interval > 0 {
		ticker := time.NewTicker(interval)
		defer ticker.Stop()
		tick = ticker.C
	}
	for i, rec := range todo {
		if i > 0 && tick != nil {
			select {
			case <-tick:
			case <-ctx.Done():
			}
		}
		if err := ctx.Err(); err != nil {
			prog.clear()
			return stop(fmt.Errorf("interrupted before dead letter %d: %w", rec.ID, err))
		}
		// One transaction forgets the event's counted attempts, publishes, and marks
		// the dead letter replayed with its audit entry: a failed publish leaves the
		// dead letter and its attempts as they were. It outlives an interrupt once the
		// publish succeeded.
		var published bool
		var pubErr error
		entry, err := st.Replay(context.WithoutCancel(ctx), dlq.Change{
			IDs: []int64{rec.ID}, Actor: who, Reason: ch.reason, Selector: res.Selector,
			Counts: map[int64]int{rec.ID: rec.Count},
		}, func() error {
			pubErr = publishReplay(ctx, pub, rec)
			published = pubErr == nil
			return pubErr
		})
		if published {
			res.Published = append(res.Published, rec.ID)
		}
		switch {
		case pubErr != nil:
			prog.clear()
			return stop(fmt.Errorf("publishing dead letter %d to topic %q failed: %w", rec.ID, rec.Topic, pubErr))
		case err != nil && published:
			prog.clear()
			return stop(fmt.Errorf("dead letter %d was published but not marked replayed, and its attempt count was kept: %w (replaying it again is safe: the consumer skips a duplicate)", rec.ID, err))
		case err != nil:
			prog.clear()
			return stop(fmt.Errorf("dead letter %d: %w", rec.ID, err))
		}
		res.Changed = append(res.Changed, entry.DeadLetterIDs...)
		if entry.ID != 0 {
			res.AuditIDs = append(res.AuditIDs, entry.ID)
		}
		if text {
			prog.line(fmt.Sprintf("replayed %d (%s, event %s) to %s: replay %d, audit entry %d",
				rec.ID, inert(rec.Consumer), inert(rec.EventID), inert(rec.Topic), rec.ReplayCount+1, entry.ID))
			prog.show(i + 1)
		}
	}
	prog.clear()
	if out.format == formatJSON {
		return writeJSON(e.stdout, res)
	}
	refusedNote()
	fmt.Fprintf(e.stdout, "replayed %s to %s\n", countText(len(res.Changed)), inert(target.shown))
	return nil
}

func refusedIDs(r []refusedJSON) []int64 {
	out := make([]int64, len(r))
	for i, f := range r {
		out[i] = f.ID
	}
	return out
}

// publishReplay publishes the replayed copy of rec: its payload and metadata, its
// event ID (in the metadata), a new message UUID, and the replay count.
func publishReplay(ctx context.Context, pub *publisher, rec *dlq.Record) error {
	msg := message.NewMessage(watermill.NewUUID(), rec.Payload)
	for k, v := range rec.Metadata {
		msg.Metadata.Set(k, v)
	}
	msg.Metadata.Set(dlq.ReplayCountKey, strconv.Itoa(rec.ReplayCount+1))
	pctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	msg.SetContext(pctx)
	return pub.Publish(rec.Topic, msg)
}

// progress shows how a long replay goes, on a terminal: one line, rewritten in place,
// below the lines of the dead letters replayed.
type progress struct {
	w     io.Writer
	on    bool
	total int
	start time.Time
	shown bool
}

func (p *progress) clear() {
	if p.shown {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.shown = false
	}
}

// line prints a line above the progress line.
func (p *progress) line(s string) {
	p.clear()
	fmt.Fprintln(p.w, s)
}

func (p *progress) show(done int) {
	if !p.on || done >= p.total {
		return
	}
	elapsed := time.Since(p.start)
	fmt.Fprintf(p.w, "\r\x1b[Kreplaying: %d of %d, %.1f/s", done, p.total, float64(done)/max(elapsed.Seconds(), 0.001))
	p.shown = true
}
