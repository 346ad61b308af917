package soak

import (
	"fmt"
	"slices"
	"strings"
)

// Applied is what the effects log holds for one event: the non-idempotent record its
// handler writes in the attempt's transaction, with no unique key.
type Applied struct {
	// Rows is how many committed log rows the event has: 1 is right, 2 a double apply.
	Rows int
	// TraceID and ParentSpanID are those the handler saw: its consumer span's trace and
	// parent (the producer span), from one of the rows.
	TraceID      string
	ParentSpanID string
}

// DeadLetterRow is one row of the dead-letter store.
type DeadLetterRow struct {
	// EventID is the stored event ID: the event's own, or a derived key for a
	// malformed message.
	EventID string
	// SoakID is the event ID the payload names, which a malformed message's metadata
	// lacks.
	SoakID  string
	Reason  string
	Count   int
	TraceID string
	// Metadata is the dead-lettered message's metadata, as stored.
	Metadata map[string]string
}

// Copy is one published copy of an event: the trace context of its producer span.
type Copy struct {
	TraceID string
	SpanID  string
}

// Observed is everything read back after a leg, for [Check].
type Observed struct {
	Applied map[string]Applied
	// Processed holds the event IDs with a row in idem's processed table.
	Processed   map[string]bool
	DeadLetters []DeadLetterRow
	// Balances are the accounts' balances at the end; each started at InitialBalance.
	Balances       map[int]int64
	InitialBalance int64
	// Alerted counts, per stored event ID, the alerts that named it.
	Alerted map[string]int
	// Unfinished describes what the broker still holds for the consumers once they
	// stopped, or is "" when it holds nothing.
	Unfinished string
	// Published holds, per event ID, the copies published with a trace context (every
	// attempt, including ones that failed, which may have gone through).
	Published map[string][]Copy
}

// Invariant is the result of one check.
type Invariant struct {
	Name        string   `json:"name"`
	Description string   `json:"description"`
	Checked     int      `json:"checked"`
	Violations  int      `json:"violations"`
	Examples    []string `json:"examples,omitempty"`
}

const maxExamples = 8

type checker struct {
	res []*Invariant
}

func (c *checker) add(name, desc string) *Invariant {
	inv := &Invariant{Name: name, Description: desc}
	c.res = append(c.res, inv)
	return inv
}

func (c *checker) results() []Invariant {
	out := make([]Invariant, len(c.res))
	for i, inv := range c.res {
		out[i] = *inv
	}
	return out
}

func (inv *Invariant) fail(format string, args ...any) {
	inv.Violations++
	if len(inv.Examples) < maxExamples {
		inv.Examples = append(inv.Examples, fmt.Sprintf(format, args...))
	}
}

// Check compares what was observed with the ground truth and returns every invariant
// with its violations; all must have none.
func Check(events []Event, obs Observed) []Invariant {
	var c checker
	byID := make(map[string]*Event, len(events))
	for i := range events {
		byID[events[i].ID] = &events[i]
	}
	// Dead letters by the event they are of: the soak ID of the payload, else the
	// stored ID.
	letters := map[string][]DeadLetterRow{}
	for _, d := range obs.DeadLetters {
		id := d.SoakID
		if id == "" {
			id = d.EventID
		}
		letters[id] = append(letters[id], d)
	}

	once := c.add("good-applied-exactly-once", "each ok or transient event has exactly one effects row and one processed row")
	poison := c.add("poison-dead-lettered-exactly-once", "each poison event has exactly one dead letter, with the reason of its class, and no effect")
	both := c.add("nothing-both", "no event is both applied and dead-lettered")
	missing := c.add("nothing-missing", "every event is either applied or dead-lettered")
	transient := c.add("no-good-event-dead-lettered", "no ok or transient event was dead-lettered, whatever the outages")
	for i := range events {
		e := &events[i]
		a := obs.Applied[e.ID]
		dls := letters[e.ID]
		applied := a.Rows > 0 || obs.Processed[e.ID]
		missing.Checked++
		if !applied && len(dls) == 0 {
			missing.fail("%s (%s): neither applied nor dead-lettered", e.ID, e.Class)
		}
		both.Checked++
		if applied && len(dls) > 0 {
			both.fail("%s (%s): %d effects rows, processed %t, and %d dead letters (%s)", e.ID, e.Class, a.Rows, obs.Processed[e.ID], len(dls), dls[0].Reason)
		}
		if e.Class.Good() {
			once.Checked++
			transient.Checked++
			if a.Rows != 1 || !obs.Processed[e.ID] {
				once.fail("%s (%s): %d effects rows, processed %t", e.ID, e.Class, a.Rows, obs.Processed[e.ID])
			}
			if len(dls) > 0 {
				transient.fail("%s (%s): dead-lettered as %s after %d", e.ID, e.Class, dls[0].Reason, dls[0].Count)
			}
			continue
		}
		poison.Checked++
		switch {
		case len(dls) != 1:
			poison.fail("%s (%s): %d dead letters%s", e.ID, e.Class, len(dls), metadataDiff(dls))
		case dls[0].Reason != e.Class.Reason():
			poison.fail("%s (%s): dead-lettered as %s, want %s", e.ID, e.Class, dls[0].Reason, e.Class.Reason())
		case a.Rows > 0 || obs.Processed[e.ID]:
			poison.fail("%s (%s): %d effects rows, processed %t", e.ID, e.Class, a.Rows, obs.Processed[e.ID])
		}
	}

	unexpected := c.add("nothing-unexpected", "no effects row, processed row or dead letter of an event that was never published")
	for _, id := range sortedKeys(obs.Applied) {
		unexpected.Checked++
		if byID[id] == nil {
			unexpected.fail("effects row of unknown event %q", id)
		}
	}
	for _, id := range sortedKeys(obs.Processed) {
		unexpected.Checked++
		if byID[id] == nil {
			unexpected.fail("processed row of unknown event %q", id)
		}
	}
	for _, id := range sortedKeys(letters) {
		unexpected.Checked++
		if byID[id] == nil {
			unexpected.fail("dead letter of unknown event %q", id)
		}
	}

	money := c.add("money-conserved", "the accounts hold together what they held at the start")
	var total, want int64
	for _, b := range obs.Balances {
		total += b
		want += obs.InitialBalance
	}
	money.Checked = len(obs.Balances)
	if total != want {
		money.fail("the accounts hold %d, they started with %d", total, want)
	}
	balances := c.add("balances-match-ground-truth", "each account's balance is what the good events' transfers, each applied once, make it")
	expect := map[int]int64{}
	for id := range obs.Balances {
		expect[id] = obs.InitialBalance
	}
	for i := range events {
		if e := &events[i]; e.Class.Good() {
			expect[e.From] -= e.Amount
			expect[e.To] += e.Amount
		}
	}
	for _, id := range sortedKeys(expect) {
		balances.Checked++
		got, ok := obs.Balances[id]
		if !ok {
			balances.fail("account %d is missing", id)
		} else if got != expect[id] {
			balances.fail("account %d holds %d, the ground truth says %d (off by %d)", id, got, expect[id], got-expect[id])
		}
	}

	drained := c.add("broker-drained", "the broker holds nothing for the consumers once they stopped")
	drained.Checked = 1
	if obs.Unfinished != "" {
		drained.fail("%s", obs.Unfinished)
	}

	alerted := c.add("dead-letters-alerted", "every dead letter was named by an alert the consumers' dlq.Dispatcher sent to the webhook")
	for _, d := range obs.DeadLetters {
		alerted.Checked++
		if obs.Alerted[d.EventID] == 0 {
			id := d.SoakID
			if id == "" {
				id = d.EventID
			}
			alerted.fail("%s (%s, stored as %s): no alert", id, d.Reason, d.EventID)
		}
	}

	traced := c.add("trace-continuous", "the consumer span of each applied event, and the trace of each dead letter, continue a producer span of one of the event's copies")
	for i := range events {
		e := &events[i]
		copies := obs.Published[e.ID]
		if len(copies) == 0 {
			continue // published without a trace context (malformed events)
		}
		if a := obs.Applied[e.ID]; a.Rows > 0 {
			traced.Checked++
			if !slices.Contains(copies, Copy{TraceID: a.TraceID, SpanID: a.ParentSpanID}) {
				traced.fail("%s: consumer span in trace %s with parent %s, which no copy's producer span is", e.ID, orNone(a.TraceID), orNone(a.ParentSpanID))
			}
		}
		for _, d := range letters[e.ID] {
			traced.Checked++
			if !slices.ContainsFunc(copies, func(c Copy) bool { return c.TraceID == d.TraceID }) {
				traced.fail("%s: dead letter in trace %s, which no copy's producer span is in", e.ID, orNone(d.TraceID))
			}
		}
	}
	return c.results()
}

// metadataDiff describes how the metadata of the first two of dls differ: what made
// one event two dead letters.
func metadataDiff(dls []DeadLetterRow) string {
	if len(dls) < 2 {
		return ""
	}
	a, b := dls[0].Metadata, dls[1].Metadata
	var diffs []string
	for _, k := range sortedKeys(a) {
		if v, ok := b[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s=%q only in %s", k, a[k], dls[0].EventID))
		} else if v != a[k] {
			diffs = append(diffs, fmt.Sprintf("%s %q in %s, %q in %s", k, a[k], dls[0].EventID, v, dls[1].EventID))
		}
	}
	for _, k := range sortedKeys(b) {
		if _, ok := a[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s=%q only in %s", k, b[k], dls[1].EventID))
		}
	}
	if len(diffs) == 0 {
		return fmt.Sprintf(" (stored as %s and %s)", dls[0].EventID, dls[1].EventID)
	}
	return " (metadata: " + strings.Join(diffs, "; ") + ")"
}

// Violations sums the violations of invs.
func Violations(invs []Invariant) int {
	n := 0
	for _, inv := range invs {
		n += inv.Violations
	}
	return n
}

func orNone(s string) string {
	if strings.TrimSpace(s) == "" {
		return "(none)"
	}
	return s
}

func sortedKeys[K string | int, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
