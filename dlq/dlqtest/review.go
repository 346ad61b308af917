package dlqtest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dlq"
)

// ReviewHarness is one fresh, empty store that implements dlq.Reviewer.
type ReviewHarness struct {
	// Store stores the dead letters under review.
	Store dlq.Store
	// Reviewer is the same store, as the review sees it.
	Reviewer dlq.Reviewer
	// Backdate sets the DeadLetteredAt of dead letter id to at.
	Backdate func(ctx context.Context, id int64, at time.Time) error
	// DBRole is the database role the store's audit entries name.
	DBRole string
	// RecordFailure counts one failed attempt of (consumer, eventID) and returns the
	// count, as the store's dedup.Store.RecordFailure does.
	RecordFailure func(ctx context.Context, consumer, eventID string) (int, error)
}

// reviewSeed is the dead letters RunReview works on, oldest first.
type reviewSeed struct {
	consumer, topic, eventID, fingerprint, eventType, err string
	age                                                   time.Duration
}

var seeds = []reviewSeed{
	{"billing", "orders", "evt-1", "fp-gateway", "OrderPlaced", "gateway 503 (1)", 50 * time.Hour},
	{"billing", "orders", "evt-2", "fp-gateway", "OrderPlaced", "gateway 503 (2)", 40 * time.Hour},
	{"billing", "orders", "evt-3", "fp-negative", "OrderPlaced", "negative total", 30 * time.Hour},
	{"shipping", "orders", "evt-1", "fp-address", "OrderPlaced", "no address", 20 * time.Hour},
	{"billing", "refunds", "evt-4", "fp-gateway", "RefundIssued", "gateway 503 (4)", 10 * time.Hour},
	{"billing", "orders", "evt-5", "fp-gateway", "OrderPlaced", "gateway 503 (5)", 5 * time.Hour},
	{"billing", "orders", "evt-6", "fp-gateway", "OrderPlaced", "gateway 503 (6)", 1 * time.Hour},
}

// seed stores seeds and returns their IDs, in order, and the reference time their ages
// count back from.
func seed(t *testing.T, h ReviewHarness) ([]int64, time.Time) {
	t.Helper()
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	ids := make([]int64, len(seeds))
	for i, s := range seeds {
		d := letter(s.consumer, s.eventID)
		d.Topic, d.Fingerprint, d.EventType, d.Error = s.topic, s.fingerprint, s.eventType, s.err
		_, err := h.Store.Put(ctx, d)
		require.NoError(t, err)
		require.NoError(t, h.Backdate(ctx, d.ID, now.Add(-s.age)))
		ids[i] = d.ID
	}
	return ids, now
}

func recordIDs(recs []*dlq.Record) []int64 {
	out := make([]int64, len(recs))
	for i, r := range recs {
		out[i] = r.ID
	}
	return out
}

func pick(ids []int64, idx ...int) []int64 {
	out := make([]int64, len(idx))
	for i, j := range idx {
		out[i] = ids[j]
	}
	return out
}

var operator = dlq.Actor{OSUser: "ada", Host: "bastion-1"}

// RunReview runs the conformance suite of dlq.Reviewer. newHarness is called once per
// subtest.
func RunReview(t *testing.T, newHarness func(t *testing.T) ReviewHarness) {
	t.Helper()
	ctx := context.Background()

	t.Run("ListFilters", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		ids, now := seed(t, h)
		_, err := h.Reviewer.Discard(ctx, dlq.Change{IDs: pick(ids, 2), Actor: operator, Reason: "test", Selector: "ids"})
		require.NoError(t, err)

		for _, tt := range []struct {
			name string
			f    dlq.Filter
			want []int64
		}{
			{"All", dlq.Filter{}, ids},
			{"IDs", dlq.Filter{IDs: pick(ids, 4, 0, 4)}, pick(ids, 0, 4)},
			{"Consumer", dlq.Filter{Consumer: "shipping"}, pick(ids, 3)},
			{"Topic", dlq.Filter{Topic: "refunds"}, pick(ids, 4)},
			{"Fingerprint", dlq.Filter{Fingerprint: "fp-gateway"}, pick(ids, 0, 1, 4, 5, 6)},
			{"EventType", dlq.Filter{EventType: "RefundIssued"}, pick(ids, 4)},
			{"Status", dlq.Filter{Status: dlq.StatusPending}, pick(ids, 0, 1, 3, 4, 5, 6)},
			{"StatusDiscarded", dlq.Filter{Status: dlq.StatusDiscarded}, pick(ids, 2)},
			{"Since", dlq.Filter{Since: now.Add(-20 * time.Hour)}, pick(ids, 3, 4, 5, 6)},
			{"Until", dlq.Filter{Until: now.Add(-20 * time.Hour)}, pick(ids, 0, 1, 2)},
			{"SinceUntil", dlq.Filter{Since: now.Add(-40 * time.Hour), Until: now.Add(-10 * time.Hour)}, pick(ids, 1, 2, 3)},
			{"Combined", dlq.Filter{Consumer: "billing", Topic: "orders", Fingerprint: "fp-gateway", Status: dlq.StatusPending}, pick(ids, 0, 1, 5, 6)},
			{"NoMatch", dlq.Filter{Consumer: "nobody"}, nil},
		} {
			got, err := h.Reviewer.List(ctx, tt.f)
			require.NoError(t, err, tt.name)
			require.Equal(t, tt.want, nilIfEmpty(recordIDs(got)), tt.name)
		}
	})

	t.Run("ListPages", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		ids, _ := seed(t, h)
		var got []int64
		f := dlq.Filter{Limit: 3}
		for pages := 0; ; pages++ {
			require.Less(t, pages, 4)
			page, err := h.Reviewer.List(ctx, f)
			require.NoError(t, err)
			if len(page) == 0 {
				break
			}
			require.LessOrEqual(t, len(page), 3)
			got = append(got, recordIDs(page)...)
			f.AfterID = page[len(page)-1].ID
		}
		require.Equal(t, ids, got)
	})

	t.Run("ListRejectsBadFilters", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		for _, f := range []dlq.Filter{
			{Status: "open"},
			{Limit: -1},
			{Since: time.Now(), Until: time.Now().Add(-time.Hour)},
		} {
			_, err := h.Reviewer.List(ctx, f)
			require.Error(t, err, "%+v", f)
			_, err = h.Reviewer.Report(ctx, f)
			if f.Limit >= 0 {
				require.Error(t, err, "%+v", f)
			}
		}
	})

	t.Run("GetReturnsEverything", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		in := letter("billing", "evt-1")
		_, err := h.Store.Put(ctx, in)
		require.NoError(t, err)

		got, err := h.Reviewer.Get(ctx, in.ID)
		require.NoError(t, err)
		want := letter("billing", "evt-1")
		require.Equal(t, in.ID, got.ID)
		require.Equal(t, want.Payload, got.Payload, "payload byte for byte")
		require.Equal(t, want.Metadata, got.Metadata, "metadata byte for byte")
		require.Equal(t, want.Topic, got.Topic)
		require.Equal(t, want.Error, got.Error)
		require.Equal(t, want.EventType, got.EventType)
		require.Equal(t, want.Host, got.Host)
		require.Equal(t, dlq.StatusPending, got.Status)
		require.Equal(t, 1, got.Count)
		require.Zero(t, got.ReplayCount)
		require.False(t, got.UpdatedAt.IsZero())
		require.NotEmpty(t, got.History)

		list, err := h.Reviewer.List(ctx, dlq.Filter{})
		require.NoError(t, err)
		require.Len(t, list, 1)
		require.Equal(t, got, list[0], "List and Get read the same record")

		_, err = h.Reviewer.Get(ctx, in.ID+1000)
		require.ErrorIs(t, err, dlq.ErrNotFound)
	})

	t.Run("ReportGroups", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		ids, now := seed(t, h)

		groups, err := h.Reviewer.Report(ctx, dlq.Filter{Status: dlq.StatusPending})
		require.NoError(t, err)
		require.Len(t, groups, 4)
		g := groups[0] // the largest group first
		require.Equal(t, "billing", g.Consumer)
		require.Equal(t, "orders", g.Topic)
		require.Equal(t, "fp-gateway", g.Fingerprint)
		require.Equal(t, int64(4), g.Count)
		require.WithinDuration(t, now.Add(-50*time.Hour), g.FirstSeen, time.Second)
		require.WithinDuration(t, now.Add(-time.Hour), g.LastSeen, time.Second)
		require.Equal(t, "gateway 503 (6)", g.SampleError, "the newest error")
		require.Equal(t, pick(ids, 0, 1, 5), g.SampleIDs, "the first dead letters, at most GroupSamples")
		require.Equal(t, []string{"evt-1", "evt-2", "evt-5"}, g.SampleEventIDs)

		// Groups of one, oldest first.
		require.Equal(t, []string{"fp-negative", "fp-address", "fp-gateway"},
			[]string{groups[1].Fingerprint, groups[2].Fingerprint, groups[3].Fingerprint})
		require.Equal(t, "refunds", groups[3].Topic)
		require.Equal(t, int64(1), groups[1].Count)
		require.Equal(t, pick(ids, 2), groups[1].SampleIDs)
		require.Equal(t, []string{"evt-3"}, groups[1].SampleEventIDs)
		require.Equal(t, groups[1].FirstSeen, groups[1].LastSeen)

		groups, err = h.Reviewer.Report(ctx, dlq.Filter{Consumer: "shipping"})
		require.NoError(t, err)
		require.Len(t, groups, 1)
		require.Equal(t, "no address", groups[0].SampleError)

		groups, err = h.Reviewer.Report(ctx, dlq.Filter{Consumer: "nobody"})
		require.NoError(t, err)
		require.Empty(t, groups)
	})

	t.Run("DiscardNeedsAReason", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		ids, _ := seed(t, h)
		for _, reason := range []string{"", "  "} {
			_, err := h.Reviewer.Discard(ctx, dlq.Change{IDs: ids, Actor: operator, Reason: reason})
			require.ErrorIs(t, err, dlq.ErrReasonRequired)
		}
		list, err := h.Reviewer.List(ctx, dlq.Filter{Status: dlq.StatusPending})
		require.NoError(t, err)
		require.Len(t, list, len(ids), "nothing changed")
		audit, err := h.Reviewer.Audit(ctx, dlq.AuditFilter{})
		require.NoError(t, err)
		require.Empty(t, audit)
	})

	t.Run("DiscardAndResolveWriteOneAuditEntry", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		ids, _ := seed(t, h)
		before := time.Now().Add(-time.Minute)

		e, err := h.Reviewer.Discard(ctx, dlq.Change{IDs: pick(ids, 3, 0, 1), Actor: operator, Reason: "test traffic", Selector: "consumer=billing"})
		require.NoError(t, err)
		require.NotZero(t, e.ID)
		require.Equal(t, dlq.ActionDiscard, e.Action)
		require.Equal(t, pick(ids, 0, 1, 3), e.DeadLetterIDs, "ascending")
		require.Equal(t, "ada", e.OSUser)
		require.Equal(t, "bastion-1", e.Host)
		require.Equal(t, h.DBRole, e.DBRole)
		require.Equal(t, "consumer=billing", e.Selector)
		require.Equal(t, "test traffic", e.Reason)
		require.WithinDuration(t, time.Now(), e.At, time.Minute)
		require.True(t, e.At.After(before))

		// Already discarded: nothing changes, no entry.
		again, err := h.Reviewer.Discard(ctx, dlq.Change{IDs: pick(ids, 0, 1, 3), Actor: operator, Reason: "again"})
		require.NoError(t, err)
		require.Zero(t, again.ID)
		require.Empty(t, again.DeadLetterIDs)
		// Unknown IDs change nothing either.
		none, err := h.Reviewer.Resolve(ctx, dlq.Change{IDs: []int64{ids[len(ids)-1] + 1000}, Actor: operator})
		require.NoError(t, err)
		require.Empty(t, none.DeadLetterIDs)

		r, err := h.Reviewer.Resolve(ctx, dlq.Change{IDs: pick(ids, 0, 2), Actor: operator, Reason: "fixed by hand", Selector: "ids"})
		require.NoError(t, err)
		require.Equal(t, dlq.ActionResolve, r.Action)
		require.Equal(t, pick(ids, 0, 2), r.DeadLetterIDs, "a discarded dead letter can be resolved")

		for id, want := range map[int64]dlq.Status{ids[0]: dlq.StatusResolved, ids[1]: dlq.StatusDiscarded, ids[2]: dlq.StatusResolved, ids[3]: dlq.StatusDiscarded, ids[4]: dlq.StatusPending} {
			rec, err := h.Reviewer.Get(ctx, id)
			require.NoError(t, err)
			require.Equal(t, want, rec.Status, id)
		}

		audit, err := h.Reviewer.Audit(ctx, dlq.AuditFilter{})
		require.NoError(t, err)
		require.Len(t, audit, 2, "one entry per change")
		require.Equal(t, e, audit[0])
		require.Equal(t, r, audit[1])
	})

	t.Run("MarkReplayed", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		ids, _ := seed(t, h)
		before, err := h.Reviewer.Get(ctx, ids[0])
		require.NoError(t, err)

		e, err := h.Reviewer.MarkReplayed(ctx, dlq.Change{IDs: pick(ids, 0), Actor: operator, Selector: "ids", Counts: map[int64]int{ids[0]: before.Count}})
		require.NoError(t, err)
		require.Equal(t, dlq.ActionReplay, e.Action)
		require.Equal(t, pick(ids, 0), e.DeadLetterIDs)
		rec, err := h.Reviewer.Get(ctx, ids[0])
		require.NoError(t, err)
		require.Equal(t, dlq.StatusReplayed, rec.Status)
		require.Equal(t, 1, rec.ReplayCount)
		require.False(t, rec.UpdatedAt.Before(before.UpdatedAt))

		// Replayed again: the count goes on.
		_, err = h.Reviewer.MarkReplayed(ctx, dlq.Change{IDs: pick(ids, 0), Actor: operator})
		require.NoError(t, err)
		rec, err = h.Reviewer.Get(ctx, ids[0])
		require.NoError(t, err)
		require.Equal(t, 2, rec.ReplayCount)

		// The replayed copy failed again before the mark: the dead letter stays
		// pending, and keeps its replay count.
		d := letter("billing", "evt-2")
		_, err = h.Store.Put(ctx, d)
		require.NoError(t, err)
		require.Equal(t, 2, d.Count)
		_, err = h.Reviewer.MarkReplayed(ctx, dlq.Change{IDs: pick(ids, 1), Actor: operator, Counts: map[int64]int{ids[1]: 1}})
		require.NoError(t, err)
		rec, err = h.Reviewer.Get(ctx, ids[1])
		require.NoError(t, err)
		require.Equal(t, dlq.StatusPending, rec.Status)
		require.Equal(t, 1, rec.ReplayCount)

		// A replayed dead letter dead-lettered again is pending again.
		_, err = h.Store.Put(ctx, letter("billing", "evt-1"))
		require.NoError(t, err)
		rec, err = h.Reviewer.Get(ctx, ids[0])
		require.NoError(t, err)
		require.Equal(t, dlq.StatusPending, rec.Status)
		require.Equal(t, 2, rec.ReplayCount)

		audit, err := h.Reviewer.Audit(ctx, dlq.AuditFilter{Action: dlq.ActionReplay})
		require.NoError(t, err)
		require.Len(t, audit, 3)
	})

	t.Run("Replay", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		for range 3 {
			_, err := h.RecordFailure(ctx, "billing", "evt-1")
			require.NoError(t, err)
		}
		_, err := h.RecordFailure(ctx, "billing", "evt-2")
		require.NoError(t, err)
		d := letter("billing", "evt-1")
		_, err = h.Store.Put(ctx, d)
		require.NoError(t, err)
		require.Equal(t, 3, len(mustGet(t, h, d.ID).History), "the dead letter keeps the history")
		change := dlq.Change{IDs: []int64{d.ID}, Actor: operator, Selector: "ids", Counts: map[int64]int{d.ID: d.Count}}

		// The publish fails: nothing changes, the attempt count included.
		errPublish := errors.New("broker down")
		calls := 0
		_, err = h.Reviewer.Replay(ctx, change, func() error { calls++; return errPublish })
		require.ErrorIs(t, err, errPublish)
		require.Equal(t, errPublish, err, "the publish error, as it is")
		require.Equal(t, 1, calls)
		rec := mustGet(t, h, d.ID)
		require.Equal(t, dlq.StatusPending, rec.Status)
		require.Zero(t, rec.ReplayCount)
		audit, err := h.Reviewer.Audit(ctx, dlq.AuditFilter{})
		require.NoError(t, err)
		require.Empty(t, audit)
		n, err := h.RecordFailure(ctx, "billing", "evt-1")
		require.NoError(t, err)
		require.Equal(t, 4, n, "a dead letter not published keeps its attempt count")

		// The publish succeeds: the attempt count is forgotten, with the mark and the
		// audit entry.
		e, err := h.Reviewer.Replay(ctx, change, func() error { calls++; return nil })
		require.NoError(t, err)
		require.Equal(t, 2, calls)
		require.Equal(t, dlq.ActionReplay, e.Action)
		require.Equal(t, []int64{d.ID}, e.DeadLetterIDs)
		require.NotZero(t, e.ID)
		rec = mustGet(t, h, d.ID)
		require.Equal(t, dlq.StatusReplayed, rec.Status)
		require.Equal(t, 1, rec.ReplayCount)
		require.Equal(t, 3, len(rec.History), "the dead letter keeps its history")
		n, err = h.RecordFailure(ctx, "billing", "evt-1")
		require.NoError(t, err)
		require.Equal(t, 1, n, "the replayed copy starts a new budget")
		n, err = h.RecordFailure(ctx, "billing", "evt-2")
		require.NoError(t, err)
		require.Equal(t, 2, n, "other events keep their count")
		audit, err = h.Reviewer.Audit(ctx, dlq.AuditFilter{})
		require.NoError(t, err)
		require.Equal(t, []dlq.AuditEntry{e}, audit)

		// An unknown dead letter: published, but nothing to record.
		none, err := h.Reviewer.Replay(ctx, dlq.Change{IDs: []int64{d.ID + 1000}, Actor: operator}, func() error { return nil })
		require.NoError(t, err)
		require.Empty(t, none.DeadLetterIDs)
		require.Zero(t, none.ID)

		_, err = h.Reviewer.Replay(ctx, dlq.Change{Actor: operator}, func() error { t.Fatal("published without dead letters"); return nil })
		require.Error(t, err)
	})

	t.Run("AuditFilters", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		ids, _ := seed(t, h)
		var entries []dlq.AuditEntry
		for i, op := range []func() (dlq.AuditEntry, error){
			func() (dlq.AuditEntry, error) {
				return h.Reviewer.Discard(ctx, dlq.Change{IDs: pick(ids, 0, 1), Actor: operator, Reason: "r"})
			},
			func() (dlq.AuditEntry, error) {
				return h.Reviewer.MarkReplayed(ctx, dlq.Change{IDs: pick(ids, 1), Actor: operator})
			},
			func() (dlq.AuditEntry, error) {
				return h.Reviewer.Resolve(ctx, dlq.Change{IDs: pick(ids, 2), Actor: operator})
			},
		} {
			e, err := op()
			require.NoError(t, err, i)
			entries = append(entries, e)
		}
		for _, tt := range []struct {
			name string
			f    dlq.AuditFilter
			want []dlq.AuditEntry
		}{
			{"All", dlq.AuditFilter{}, entries},
			{"Action", dlq.AuditFilter{Action: dlq.ActionResolve}, entries[2:]},
			{"DeadLetter", dlq.AuditFilter{DeadLetterID: ids[1]}, entries[:2]},
			{"Page", dlq.AuditFilter{AfterID: entries[0].ID, Limit: 1}, entries[1:2]},
			{"Since", dlq.AuditFilter{Since: time.Now().Add(-time.Hour)}, entries},
			{"Until", dlq.AuditFilter{Until: time.Now().Add(-time.Hour)}, nil},
		} {
			got, err := h.Reviewer.Audit(ctx, tt.f)
			require.NoError(t, err, tt.name)
			require.Equal(t, fmt.Sprint(tt.want), fmt.Sprint(nilIfEmpty(got)), tt.name)
		}
		_, err := h.Reviewer.Audit(ctx, dlq.AuditFilter{Action: "delete"})
		require.Error(t, err)
	})
}

func mustGet(t *testing.T, h ReviewHarness, id int64) *dlq.Record {
	t.Helper()
	rec, err := h.Reviewer.Get(context.Background(), id)
	require.NoError(t, err)
	return rec
}

func nilIfEmpty[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return s
}
