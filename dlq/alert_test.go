package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dlq"
)

// recorder is an Alerter that keeps what it was sent.
type recorder struct {
	mu     sync.Mutex
	alerts []dlq.Alert
	err    error
	block  chan struct{} // when set, Alert waits for it (or ctx)
}

func (r *recorder) Alert(ctx context.Context, a dlq.Alert) error {
	if r.block != nil {
		select {
		case <-r.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.alerts = append(r.alerts, a)
	return r.err
}

func (r *recorder) got() []dlq.Alert {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]dlq.Alert(nil), r.alerts...)
}

func letter(fingerprint string, i int) *dlq.DeadLetter {
	return &dlq.DeadLetter{
		Consumer: "billing", Topic: "orders", EventID: fmt.Sprintf("evt-%d", i), Reason: dlq.ReasonPermanent,
		Fingerprint: fingerprint, Error: "boom", Payload: []byte("secret payload"), Metadata: map[string]string{"k": "v"},
	}
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestDispatcher(t *testing.T) {
	t.Parallel()

	t.Run("OneImmediateAlertAndOneSummaryPerWindow", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			rec := &recorder{}
			d, err := dlq.NewDispatcher(dlq.DispatcherConfig{Alerters: []dlq.Alerter{rec}, Window: time.Minute, QueueSize: 2000, Logger: quiet()})
			require.NoError(t, err)
			for i := range 1000 {
				d.Notify(letter("fp-1", i))
			}
			synctest.Wait()
			require.Len(t, rec.got(), 1, "the first dead letter alerts at once; the rest wait for the window")
			first := rec.got()[0]
			require.False(t, first.Summary)
			require.Equal(t, 1, first.Count)
			require.Equal(t, []string{"evt-0"}, first.EventIDs)

			time.Sleep(time.Minute)
			synctest.Wait()
			alerts := rec.got()
			require.Len(t, alerts, 2)
			summary := alerts[1]
			require.True(t, summary.Summary)
			require.Equal(t, 999, summary.Count, "the summary stands for every other dead letter of the window")
			require.Equal(t, []string{"evt-1", "evt-2", "evt-3", "evt-4", "evt-5"}, summary.EventIDs)

			time.Sleep(time.Hour)
			synctest.Wait()
			require.Len(t, rec.got(), 2, "nothing more without new dead letters")
			d.Notify(letter("fp-1", 1000))
			synctest.Wait()
			require.Len(t, rec.got(), 3, "a new window opens with an immediate alert")
			require.NoError(t, d.Close(context.Background()))
			require.Zero(t, d.Dropped())
		})
	})

	t.Run("FingerprintsAreAggregatedApart", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			rec := &recorder{}
			d, err := dlq.NewDispatcher(dlq.DispatcherConfig{Alerters: []dlq.Alerter{rec}, Logger: quiet()})
			require.NoError(t, err)
			d.Notify(letter("fp-a", 1))
			d.Notify(letter("fp-b", 2))
			d.Notify(letter("fp-a", 3))
			synctest.Wait()
			require.Len(t, rec.got(), 2, "one immediate alert per cause")
			require.NoError(t, d.Close(context.Background()))
			alerts := rec.got()
			require.Len(t, alerts, 3, "Close flushes the open summary")
			require.True(t, alerts[2].Summary)
			require.Equal(t, "fp-a", alerts[2].Fingerprint)
		})
	})

	t.Run("AHungAlerterNeverBlocksNotify", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			rec := &recorder{block: make(chan struct{})}
			d, err := dlq.NewDispatcher(dlq.DispatcherConfig{Alerters: []dlq.Alerter{rec}, QueueSize: 10, Timeout: time.Hour, Logger: quiet()})
			require.NoError(t, err)
			d.Notify(letter("fp-0", 0))
			synctest.Wait() // the dispatcher is now stuck in the hung alerter
			start := time.Now()
			for i := 1; i < 100; i++ {
				d.Notify(letter(fmt.Sprintf("fp-%d", i), i)) // every one a new cause: each wants an immediate alert
			}
			require.Zero(t, time.Since(start), "Notify returned at once while the alerter hangs")
			synctest.Wait()
			require.Equal(t, int64(100-10-1), d.Dropped(), "beyond the queue (and the one being sent), alerts are dropped and counted")
			close(rec.block)
			require.NoError(t, d.Close(context.Background()))
			require.Len(t, rec.got(), 11)
		})
	})

	t.Run("FailingAlertersAreCountedAndTheOthersStillServed", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bad := &recorder{err: errors.New("pager down")}
			good := &recorder{}
			d, err := dlq.NewDispatcher(dlq.DispatcherConfig{Alerters: []dlq.Alerter{bad, good}, Logger: quiet()})
			require.NoError(t, err)
			d.Notify(letter("fp", 1))
			require.NoError(t, d.Close(context.Background()))
			require.Len(t, good.got(), 1)
			require.Equal(t, int64(1), d.Failed())
			require.Zero(t, d.Sent())
		})
	})

	t.Run("AlertsCarryNoPayload", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{}
		d, err := dlq.NewDispatcher(dlq.DispatcherConfig{Alerters: []dlq.Alerter{rec}, Logger: quiet()})
		require.NoError(t, err)
		l := letter("fp", 1)
		d.Notify(l)
		require.NoError(t, d.Close(context.Background()))
		require.NotContains(t, fmt.Sprintf("%+v", rec.got()), "secret payload")
		require.Equal(t, []byte("secret payload"), l.Payload, "Notify does not touch the caller's dead letter")
	})

	t.Run("Config", func(t *testing.T) {
		t.Parallel()
		_, err := dlq.NewDispatcher(dlq.DispatcherConfig{})
		require.ErrorContains(t, err, "Alerters is required")
		_, err = dlq.NewDispatcher(dlq.DispatcherConfig{Alerters: []dlq.Alerter{nil}})
		require.ErrorContains(t, err, "Alerters[0] is nil")
		_, err = dlq.NewDispatcher(dlq.DispatcherConfig{Alerters: []dlq.Alerter{&recorder{}}, Window: -time.Second})
		require.ErrorContains(t, err, "Window")
	})
}
