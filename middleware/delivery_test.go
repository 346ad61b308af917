package middleware_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dedup/deduptest"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/dlq/dlqtest"
	"github.com/idemkit/idem/middleware"
)

// This file holds the helpers the middleware tests share, and the tests of the
// accessors in delivery.go.

var errBoom = errors.New("boom")

// runaway bounds how often a fake handler runs before it stops a test that would
// otherwise retry forever (in fake time) with a permanent errRunaway.
const runaway = 100

var errRunaway = errors.New("test handler called too often: retrying does not stop")

// newMessage returns a message with event_id set, unless eventID is empty.
func newMessage(eventID, payload string) *message.Message {
	msg := message.NewMessage(watermill.NewUUID(), []byte(payload))
	if eventID != "" {
		msg.Metadata.Set(dedup.MetadataKey, eventID)
	}
	return msg
}

// redeliver returns a fresh copy of msg, as a broker hands over a message again: same
// UUID, payload and metadata, a new context.
func redeliver(msg *message.Message) *message.Message { return msg.Copy() }

// testLogger logs through t, so that a failing test shows what the middleware logged.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// chain wraps h in mws, the first outermost, as a router and consumer.Wrap do.
func chain(h message.HandlerFunc, mws ...message.HandlerMiddleware) message.HandlerFunc {
	for i := len(mws) - 1; i >= 0; i-- {
		h = mws[i](h)
	}
	return h
}

// recordingDedupStore is a dedup store that records the keys it is asked about, and
// can be told to fail RecordFailure.
type recordingDedupStore struct {
	*deduptest.MemoryStore
	recordErr error

	mu        sync.Mutex
	runs      []dedup.Key
	records   []dedup.Key
	recordCtx []context.Context
}

func newRecordingDedupStore() *recordingDedupStore {
	return &recordingDedupStore{MemoryStore: deduptest.NewMemoryStore()}
}

func (s *recordingDedupStore) Run(ctx context.Context, key dedup.Key, fn func(ctx context.Context) error) (bool, error) {
	s.mu.Lock()
	s.runs = append(s.runs, key)
	s.mu.Unlock()
	return s.MemoryStore.Run(ctx, key, fn)
}

func (s *recordingDedupStore) RecordFailure(ctx context.Context, key dedup.Key, cause string) (int, error) {
	s.mu.Lock()
	s.records = append(s.records, key)
	s.recordCtx = append(s.recordCtx, ctx)
	s.mu.Unlock()
	if s.recordErr != nil {
		return 0, s.recordErr
	}
	return s.MemoryStore.RecordFailure(ctx, key, cause)
}

func (s *recordingDedupStore) keys() (runs, records []dedup.Key) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]dedup.Key(nil), s.runs...), append([]dedup.Key(nil), s.records...)
}

// recordingDLQ is a dead-letter store that lets a test look at each Put as it
// happens.
type recordingDLQ struct {
	*dlqtest.MemoryStore
	onPut func(ctx context.Context, d *dlq.DeadLetter)
}

func (s *recordingDLQ) Put(ctx context.Context, d *dlq.DeadLetter) (bool, error) {
	if s.onPut != nil {
		s.onPut(ctx, d)
	}
	return s.MemoryStore.Put(ctx, d)
}

func TestAccessorsOutsideADelivery(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	n, ok := middleware.Attempt(ctx)
	require.False(t, ok)
	require.Zero(t, n)

	_, ok = middleware.EventKey(ctx)
	require.False(t, ok)

	_, ok = middleware.CorrelationID(ctx)
	require.False(t, ok)
}

func TestEventKey(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		store *deduptest.MemoryStore
	}
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		return &testBundle{store: deduptest.NewMemoryStore()}
	}

	t.Run("SetWhileTheHandlerRuns", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		mw, err := middleware.Dedup(middleware.DedupConfig{Store: bundle.store, Consumer: "orders", Logger: testLogger(t)})
		require.NoError(t, err)
		var got dedup.Key
		var ok bool
		_, err = mw(func(msg *message.Message) ([]*message.Message, error) {
			got, ok = middleware.EventKey(msg.Context())
			return nil, nil
		})(newMessage("evt-1", "x"))
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, dedup.Key{Consumer: "orders", EventID: "evt-1"}, got)
	})

	t.Run("AbsentForAnInvalidEventID", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		mw, err := middleware.Dedup(middleware.DedupConfig{Store: bundle.store, Consumer: "orders", Logger: testLogger(t)})
		require.NoError(t, err)
		msg := newMessage("", "x")
		_, err = mw(func(*message.Message) ([]*message.Message, error) { return nil, nil })(msg)
		require.ErrorIs(t, err, dedup.ErrInvalidEventID)
		_, ok := middleware.EventKey(msg.Context())
		require.False(t, ok)
	})
}

func TestOutcome(t *testing.T) {
	t.Parallel()

	t.Run("ReadableAroundTheStack", func(t *testing.T) {
		t.Parallel()
		store := deduptest.NewMemoryStore()
		dedupe, err := middleware.Dedup(middleware.DedupConfig{Store: store, Consumer: "orders", Logger: testLogger(t)})
		require.NoError(t, err)
		var during []bool
		h := dedupe(func(msg *message.Message) ([]*message.Message, error) {
			_, ok := middleware.Outcome(msg.Context())
			during = append(during, ok)
			return nil, nil
		})
		// As a router-level middleware would: read it after the stack returned.
		outer := func(msg *message.Message) (dedup.Outcome, bool) {
			_, err := h(msg)
			require.NoError(t, err)
			return middleware.Outcome(msg.Context())
		}
		msg := newMessage("evt-1", "x")
		got, ok := outer(msg)
		require.True(t, ok)
		require.Equal(t, dedup.Processed, got)
		got, ok = outer(redeliver(msg))
		require.True(t, ok)
		require.Equal(t, dedup.Duplicate, got)
		require.Equal(t, []bool{false}, during, "not decided while the handler runs")

		_, ok = middleware.Outcome(context.Background())
		require.False(t, ok)
	})

	t.Run("AContextHandedOnDoesNotShareTheDelivery", func(t *testing.T) {
		t.Parallel()
		// gochannel with PreserveContext, or a handler giving its produced message its
		// own context: the next consumer of that message must start afresh.
		store := deduptest.NewMemoryStore()
		dedupe, err := middleware.Dedup(middleware.DedupConfig{Store: store, Consumer: "orders", Logger: testLogger(t)})
		require.NoError(t, err)
		var handedOn context.Context
		_, err = dedupe(func(msg *message.Message) ([]*message.Message, error) {
			handedOn = msg.Context()
			return nil, nil
		})(newMessage("evt-1", "x"))
		require.NoError(t, err)

		next := newMessage("evt-2", "y")
		next.SetContext(handedOn)
		var key dedup.Key
		calls := 0
		_, err = dedupe(func(msg *message.Message) ([]*message.Message, error) {
			calls++
			key, _ = middleware.EventKey(msg.Context())
			return nil, nil
		})(next)
		require.NoError(t, err)
		require.Equal(t, 1, calls, "evt-2 is not taken for a duplicate of evt-1")
		require.Equal(t, "evt-2", key.EventID)
	})
}
