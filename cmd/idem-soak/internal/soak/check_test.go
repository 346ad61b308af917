package soak

import (
	"maps"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCheck(t *testing.T) {
	t.Parallel()

	// The ground truth: one event of each class, transfers between three accounts.
	events := []Event{
		{ID: "evt-ok", Class: ClassOK, From: 0, To: 1, Amount: 10, Copies: 2},
		{ID: "evt-flaky", Class: ClassTransient, FailFirst: 2, From: 1, To: 2, Amount: 5, Copies: 1},
		{ID: "evt-perm", Class: ClassPermanent, From: 2, To: 0, Amount: 7, Copies: 3},
		{ID: "evt-exhaust", Class: ClassTransientPoison, From: 0, To: 2, Amount: 3, Copies: 1},
		{ID: "evt-crash", Class: ClassCrash, From: 1, To: 0, Amount: 4, Copies: 2},
		{ID: "evt-bad", Class: ClassMalformed, From: 2, To: 1, Amount: 9, Copies: 2},
	}
	type testBundle struct {
		obs Observed
	}
	// setup returns what a run in which everything went right would observe.
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		copy := func(trace, span string) Copy { return Copy{TraceID: trace, SpanID: span} }
		return &testBundle{obs: Observed{
			Applied: map[string]Applied{
				"evt-ok":    {Rows: 1, TraceID: "t-ok-2", ParentSpanID: "s-ok-2"},
				"evt-flaky": {Rows: 1, TraceID: "t-flaky", ParentSpanID: "s-flaky"},
			},
			Processed: map[string]bool{"evt-ok": true, "evt-flaky": true},
			DeadLetters: []DeadLetterRow{
				{EventID: "evt-perm", SoakID: "evt-perm", Reason: "permanent", Count: 3, TraceID: "t-perm"},
				{EventID: "evt-exhaust", SoakID: "evt-exhaust", Reason: "exhausted", Count: 1, TraceID: "t-exhaust"},
				{EventID: "evt-crash", SoakID: "evt-crash", Reason: "crash-looped", Count: 2, TraceID: "t-crash"},
				{EventID: "derived:abc", SoakID: "evt-bad", Reason: "malformed", Count: 1},
			},
			// Starting at 100: evt-ok moves 10 from 0 to 1, evt-flaky 5 from 1 to 2.
			Balances:       map[int]int64{0: 90, 1: 105, 2: 105},
			InitialBalance: 100,
			Alerted:        map[string]int{"evt-perm": 3, "evt-exhaust": 1, "evt-crash": 1, "derived:abc": 1},
			Published: map[string][]Copy{
				"evt-ok":      {copy("t-ok-1", "s-ok-1"), copy("t-ok-2", "s-ok-2")},
				"evt-flaky":   {copy("t-flaky", "s-flaky")},
				"evt-perm":    {copy("t-perm", "s-perm")},
				"evt-exhaust": {copy("t-exhaust", "s-exhaust")},
				"evt-crash":   {copy("t-crash", "s-crash")},
			},
		}}
	}
	// violated returns the invariants with violations, and their examples.
	violated := func(t *testing.T, obs Observed) map[string][]string {
		t.Helper()
		invs := Check(events, obs)
		names := make([]string, len(invs))
		got := map[string][]string{}
		for i, inv := range invs {
			names[i] = inv.Name
			require.Positive(t, inv.Checked, "%s checked nothing", inv.Name)
			require.Equal(t, inv.Violations, len(inv.Examples), inv.Name) // few enough to list all
			if inv.Violations > 0 {
				got[inv.Name] = inv.Examples
			}
		}
		require.Equal(t, []string{
			"good-applied-exactly-once", "poison-dead-lettered-exactly-once", "nothing-both", "nothing-missing",
			"no-good-event-dead-lettered", "nothing-unexpected", "money-conserved", "balances-match-ground-truth",
			"broker-drained", "dead-letters-alerted", "trace-continuous",
		}, names)
		return got
	}

	t.Run("EverythingRight", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		invs := Check(events, b.obs)
		require.Zero(t, Violations(invs))
		require.Empty(t, violated(t, b.obs))
	})

	t.Run("DoubleApply", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.obs.Applied["evt-ok"] = Applied{Rows: 2, TraceID: "t-ok-1", ParentSpanID: "s-ok-1"}
		b.obs.Balances[0] -= 10
		b.obs.Balances[1] += 10
		got := violated(t, b.obs)
		require.Equal(t, []string{"balances-match-ground-truth", "good-applied-exactly-once"}, slices.Sorted(maps.Keys(got)))
		require.Equal(t, []string{"evt-ok (ok): 2 effects rows, processed true"}, got["good-applied-exactly-once"])
		require.Equal(t, []string{
			"account 0 holds 80, the ground truth says 90 (off by -10)",
			"account 1 holds 115, the ground truth says 105 (off by 10)",
		}, got["balances-match-ground-truth"])
	})

	t.Run("PartialApply", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.obs.Balances[2] -= 5 // the credit of evt-flaky's transfer is missing
		got := violated(t, b.obs)
		require.Equal(t, []string{"balances-match-ground-truth", "money-conserved"}, slices.Sorted(maps.Keys(got)))
		require.Equal(t, []string{"the accounts hold 295, they started with 300"}, got["money-conserved"])
	})

	t.Run("LostEvent", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		delete(b.obs.Applied, "evt-flaky")
		delete(b.obs.Processed, "evt-flaky")
		b.obs.Balances[1] += 5 // its transfer never happened
		b.obs.Balances[2] -= 5
		got := violated(t, b.obs)
		require.Equal(t, []string{"balances-match-ground-truth", "good-applied-exactly-once", "nothing-missing"}, slices.Sorted(maps.Keys(got)))
		require.Equal(t, []string{"evt-flaky (transient): neither applied nor dead-lettered"}, got["nothing-missing"])
		require.Equal(t, []string{"evt-flaky (transient): 0 effects rows, processed false"}, got["good-applied-exactly-once"])
	})

	t.Run("TransientEventDeadLettered", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		delete(b.obs.Applied, "evt-flaky")
		delete(b.obs.Processed, "evt-flaky")
		b.obs.Balances[1] += 5
		b.obs.Balances[2] -= 5
		b.obs.DeadLetters = append(b.obs.DeadLetters, DeadLetterRow{EventID: "evt-flaky", SoakID: "evt-flaky", Reason: "exhausted", Count: 1, TraceID: "t-flaky"})
		b.obs.Alerted["evt-flaky"] = 1
		got := violated(t, b.obs)
		require.Equal(t, []string{"balances-match-ground-truth", "good-applied-exactly-once", "no-good-event-dead-lettered"}, slices.Sorted(maps.Keys(got)))
		require.Equal(t, []string{"evt-flaky (transient): dead-lettered as exhausted after 1"}, got["no-good-event-dead-lettered"])
	})

	t.Run("PoisonAppliedAndDeadLettered", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.obs.Applied["evt-crash"] = Applied{Rows: 1, TraceID: "t-crash", ParentSpanID: "s-crash"}
		b.obs.Balances[1] -= 4
		b.obs.Balances[0] += 4
		got := violated(t, b.obs)
		require.Equal(t, []string{"balances-match-ground-truth", "nothing-both", "poison-dead-lettered-exactly-once"}, slices.Sorted(maps.Keys(got)))
		require.Equal(t, []string{"evt-crash (crash): 1 effects rows, processed false, and 1 dead letters (crash-looped)"}, got["nothing-both"])
	})

	t.Run("MalformedTwiceAndWrongReason", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.obs.DeadLetters[3].Metadata = map[string]string{"soak_note": "x"}
		b.obs.DeadLetters = append(b.obs.DeadLetters, DeadLetterRow{EventID: "derived:def", SoakID: "evt-bad", Reason: "malformed",
			Metadata: map[string]string{"soak_note": "x", "x-delivery-count": "1"}})
		b.obs.Alerted["derived:def"] = 1
		b.obs.DeadLetters[0].Reason = "exhausted"
		got := violated(t, b.obs)
		require.Equal(t, []string{
			"evt-perm (permanent): dead-lettered as exhausted, want permanent",
			`evt-bad (malformed): 2 dead letters (metadata: x-delivery-count="1" only in derived:def)`,
		}, got["poison-dead-lettered-exactly-once"])
	})

	t.Run("UnknownEvents", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.obs.Applied["evt-ghost"] = Applied{Rows: 1}
		b.obs.Processed["evt-ghost"] = true
		b.obs.DeadLetters = append(b.obs.DeadLetters, DeadLetterRow{EventID: "derived:zzz", Reason: "malformed"})
		b.obs.Alerted["derived:zzz"] = 1
		got := violated(t, b.obs)
		require.Equal(t, []string{
			`effects row of unknown event "evt-ghost"`,
			`processed row of unknown event "evt-ghost"`,
			`dead letter of unknown event "derived:zzz"`,
		}, got["nothing-unexpected"])
	})

	t.Run("BrokerNotDrained", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.obs.Unfinished = "3 messages ready"
		require.Equal(t, map[string][]string{"broker-drained": {"3 messages ready"}}, violated(t, b.obs))
	})

	t.Run("DeadLetterWithoutAlert", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		delete(b.obs.Alerted, "derived:abc")
		require.Equal(t, map[string][]string{"dead-letters-alerted": {"evt-bad (malformed, stored as derived:abc): no alert"}}, violated(t, b.obs))
	})

	t.Run("BrokenTrace", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.obs.Applied["evt-ok"] = Applied{Rows: 1, TraceID: "t-ok-2", ParentSpanID: "s-ok-1"} // a span of the other copy
		b.obs.DeadLetters[1].TraceID = ""
		require.Equal(t, map[string][]string{"trace-continuous": {
			"evt-ok: consumer span in trace t-ok-2 with parent s-ok-1, which no copy's producer span is",
			"evt-exhaust: dead letter in trace (none), which no copy's producer span is in",
		}}, violated(t, b.obs))
	})

	t.Run("ExamplesAreCapped", func(t *testing.T) {
		t.Parallel()
		var many []Event
		for i := range 20 {
			many = append(many, Event{ID: string(rune('a' + i)), Class: ClassOK, From: 0, To: 1, Amount: 1, Copies: 1})
		}
		invs := Check(many, Observed{Balances: map[int]int64{0: 0, 1: 0}})
		require.Equal(t, "nothing-missing", invs[3].Name)
		require.Equal(t, 20, invs[3].Violations)
		require.Len(t, invs[3].Examples, maxExamples)
	})
}
