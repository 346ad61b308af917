package deduptest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
)

// runParker checks a store's dedup.Parker, when it has one.
func runParker(t *testing.T, newHarness func(t *testing.T) Harness) {
	ctx := context.Background()
	setup := func(t *testing.T) dedup.Parker {
		t.Helper()
		h := newHarness(t)
		p, ok := h.Store.(dedup.Parker)
		if !ok {
			t.Skipf("%T does not park messages (dedup.Parker)", h.Store)
		}
		return p
	}
	parked := func(id string, delay time.Duration) dedup.Parked {
		return dedup.Parked{
			Key: dedup.Key{Consumer: "c", EventID: id}, Topic: "orders",
			Payload:  []byte("payload \x00\xff " + id),
			Metadata: map[string]string{"event_id": id, "authorization": "Bearer t0k", "bad\x00key": "a\xffb"},
			Delay:    delay,
		}
	}
	take := func(t *testing.T, p dedup.Parker, fn func(dedup.Parked) error) ([]dedup.Parked, int) {
		t.Helper()
		var got []dedup.Parked
		n, err := p.TakeDue(ctx, 100, func(_ context.Context, m dedup.Parked) error {
			got = append(got, m)
			return fn(m)
		})
		require.NoError(t, err)
		return got, n
	}
	ok := func(dedup.Parked) error { return nil }

	t.Run("ParkedMessagesAreTakenWhenDue", func(t *testing.T) {
		t.Parallel()
		p := setup(t)
		before := time.Now().Add(-time.Minute)
		require.NoError(t, p.Park(ctx, parked("e1", 0)))
		require.NoError(t, p.Park(ctx, parked("e2", time.Hour)))
		got, n := take(t, p, ok)
		require.Equal(t, 1, n)
		require.Len(t, got, 1, "only the message that is due")
		want := parked("e1", 0)
		require.Equal(t, want.Key, got[0].Key)
		require.Equal(t, "orders", got[0].Topic)
		require.Equal(t, want.Payload, got[0].Payload, "the payload byte for byte")
		require.Equal(t, want.Metadata, got[0].Metadata, "the metadata byte for byte, secrets included")
		require.True(t, got[0].Due.After(before), "due %s", got[0].Due)
		got, n = take(t, p, ok)
		require.Zero(t, n, "a message taken is gone")
		require.Empty(t, got)
	})

	t.Run("AMessageWhoseHandingFailsStaysParked", func(t *testing.T) {
		t.Parallel()
		p := setup(t)
		require.NoError(t, p.Park(ctx, parked("e1", 0)))
		require.NoError(t, p.Park(ctx, parked("e2", 0)))
		got, n := take(t, p, func(m dedup.Parked) error {
			if m.Key.EventID == "e1" {
				return errors.New("broker down")
			}
			return nil
		})
		require.Len(t, got, 2)
		require.Equal(t, 1, n)
		got, n = take(t, p, ok)
		require.Equal(t, 1, n)
		require.Equal(t, "e1", got[0].Key.EventID, "still parked")
	})

	t.Run("ParkingAgainReplaces", func(t *testing.T) {
		t.Parallel()
		p := setup(t)
		require.NoError(t, p.Park(ctx, parked("e1", time.Hour)))
		again := parked("e1", 0)
		again.Payload = []byte("second")
		require.NoError(t, p.Park(ctx, again))
		got, n := take(t, p, ok)
		require.Equal(t, 1, n)
		require.Equal(t, []byte("second"), got[0].Payload)
	})

	t.Run("ConcurrentTakersShareTheWork", func(t *testing.T) {
		t.Parallel()
		p := setup(t)
		for i := range 40 {
			require.NoError(t, p.Park(ctx, parked(fmt.Sprintf("e%d", i), 0)))
		}
		var mu sync.Mutex
		seen := map[string]int{}
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for {
					n, err := p.TakeDue(ctx, 5, func(_ context.Context, m dedup.Parked) error {
						mu.Lock()
						seen[m.Key.EventID]++
						mu.Unlock()
						return nil
					})
					if err != nil || n == 0 {
						return
					}
				}
			})
		}
		wg.Wait()
		require.Len(t, seen, 40)
		for id, n := range seen {
			require.Equal(t, 1, n, "%s handed out once", id)
		}
	})
}
