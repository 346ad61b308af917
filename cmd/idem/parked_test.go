package main

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
)

// quarantined dead-letters event 2 of entity order:7 in schema, quarantines the
// entity, and parks its events 3 and 4 behind it, as a consumer with ordering's
// quarantine would. It returns the dead letter's ID.
func quarantined(t *testing.T, schema string) int64 {
	t.Helper()
	ctx := t.Context()
	store, err := postgres.New(testdb.Pool(t), postgres.Config{Schema: schema})
	require.NoError(t, err)
	d := &dlq.DeadLetter{Consumer: "billing", EventID: "evt-2", Topic: "orders", Payload: []byte("{}"), Metadata: map[string]string{},
		Reason: dlq.ReasonPermanent, Error: "boom", Fingerprint: "f", Attempts: 1}
	_, err = store.Put(ctx, d)
	require.NoError(t, err)
	require.NoError(t, store.Quarantine(ctx, dedup.Key{Consumer: "billing", EventID: "evt-2"}, dedup.Entity{ID: "order:7", Seq: 2}))
	for _, seq := range []int64{3, 4} {
		key := dedup.Key{Consumer: "billing", EventID: fmt.Sprintf("evt-%d", seq)}
		rctx := dedup.WithParking(dedup.WithEntity(ctx, dedup.Entity{ID: "order:7", Seq: seq}, dedup.GapStrict),
			dedup.Parked{Key: key, Topic: "orders", Payload: []byte("{}"), Metadata: map[string]string{"event_id": key.EventID}})
		_, err := store.Run(rctx, key, func(context.Context) error { return nil })
		require.ErrorIs(t, err, dedup.ErrQuarantined)
	}
	return d.ID
}

// TestParked: show counts the events parked behind a dead letter; discard refuses
// to go on without --parked, and records the choice in its audit entry.
func TestParked(t *testing.T) {
	t.Parallel()
	db := pgArgs(t, nil)
	schema := db[3]
	dlID := quarantined(t, schema)
	id := fmt.Sprint(dlID)

	res := idemAt(t, append([]string{"dlq", "show", id}, db...)...)
	require.Equal(t, 0, res.code, res.stderr)
	require.Regexp(t, `parked events\s+2\n`, res.stdout)
	res = idemAt(t, append([]string{"dlq", "show", id, "--format", "json"}, db...)...)
	require.Equal(t, 0, res.code, res.stderr)
	var shown struct {
		DeadLetter struct {
			Parked int `json:"parked"`
		} `json:"dead_letter"`
	}
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &shown))
	require.Equal(t, 2, shown.DeadLetter.Parked)

	res = idemAt(t, append([]string{"dlq", "discard", id, "--reason", "obsolete", "--yes"}, db...)...)
	require.Equal(t, 2, res.code, res.stdout)
	require.Contains(t, res.stderr, "give --parked release to publish them again, in order, or --parked discard to drop them; nothing changed")
	require.Equal(t, "pending", statuses(t, schema)[dlID])

	res = idemAt(t, append([]string{"dlq", "discard", id, "--reason", "obsolete", "--parked", "later", "--yes"}, db...)...)
	require.Equal(t, 2, res.code)
	require.Contains(t, res.stderr, `--parked must be release or discard, got "later"`)

	res = idemAt(t, append([]string{"dlq", "discard", id, "--reason", "obsolete", "--parked", "discard", "--yes"}, db...)...)
	require.Equal(t, 0, res.code, res.stderr)
	entries := auditRows(t, schema)
	require.Len(t, entries, 1)
	require.Contains(t, entries[0].Selector, "parked=discard:2")
	require.Equal(t, "obsolete", entries[0].Reason)
	res = idemAt(t, append([]string{"dlq", "show", id}, db...)...)
	require.Equal(t, 0, res.code, res.stderr)
	require.NotContains(t, res.stdout, "parked events")
}
