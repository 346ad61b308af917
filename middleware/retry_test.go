package middleware_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dedup/deduptest"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/retry"
)

// fakeHandler fails with errs[i] on its i-th call, then succeeds, and remembers when
// and as which attempt each call ran.
type fakeHandler struct {
	errs   []error
	always error // when set, every call fails with it

	mu       sync.Mutex
	calls    int
	times    []time.Time
	attempts []int
}

func (f *fakeHandler) handle(msg *message.Message) ([]*message.Message, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	f.times = append(f.times, time.Now())
	n, _ := middleware.Attempt(msg.Context())
	f.attempts = append(f.attempts, n)
	if f.calls > runaway {
		return nil, retry.Permanent(errRunaway)
	}
	if f.always != nil {
		return nil, f.always
	}
	if f.calls <= len(f.errs) {
		return nil, f.errs[f.calls-1]
	}
	return []*message.Message{message.NewMessage(watermill.NewUUID(), []byte("out"))}, nil
}

func (f *fakeHandler) gaps() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	var gaps []time.Duration
	for i := 1; i < len(f.times); i++ {
		gaps = append(gaps, f.times[i].Sub(f.times[i-1]))
	}
	return gaps
}

func TestRetry(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		handler *fakeHandler
		cfg     middleware.RetryConfig
		msg     *message.Message
	}
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		return &testBundle{
			handler: &fakeHandler{},
			cfg: middleware.RetryConfig{
				Policy: retry.Policy{MaxAttempts: 10, InitialInterval: time.Second, MaxInterval: 8 * time.Second, MaxElapsedTime: -1},
				Logger: testLogger(t),
			},
			msg: newMessage("evt-1", "x"),
		}
	}
	// run wraps the fake handler in Retry, delivers bundle.msg, and returns the result
	// with the fake time it took.
	run := func(t *testing.T, bundle *testBundle) ([]*message.Message, time.Duration, error) {
		t.Helper()
		mw, err := middleware.Retry(bundle.cfg)
		require.NoError(t, err)
		start := time.Now()
		produced, err := mw(bundle.handler.handle)(bundle.msg)
		return produced, time.Since(start), err
	}

	t.Run("TwoFailuresThenSuccessWaitTwoBackoffs", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			bundle.cfg.Policy = retry.Policy{InitialInterval: time.Second, Multiplier: 3, MaxInterval: time.Minute}
			bundle.handler.errs = []error{errBoom, errBoom}
			produced, elapsed, err := run(t, bundle)
			require.NoError(t, err)
			require.Len(t, produced, 1, "the successful attempt's messages are returned")
			require.Equal(t, 3, bundle.handler.calls)
			gaps := bundle.handler.gaps()
			require.Len(t, gaps, 2)
			require.LessOrEqual(t, gaps[0], time.Second, "full jitter within the first cap, InitialInterval")
			require.LessOrEqual(t, gaps[1], 3*time.Second, "full jitter within the second cap, InitialInterval*Multiplier")
			require.Equal(t, gaps[0]+gaps[1], elapsed, "no time is spent other than the two waits")
		})
	})

	t.Run("WaitsStayWithinMaxInterval", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			bundle.cfg.Policy = retry.Policy{MaxAttempts: 8, InitialInterval: time.Second, Multiplier: 10, MaxInterval: 5 * time.Second, MaxElapsedTime: -1}
			bundle.handler.always = errBoom
			_, _, err := run(t, bundle)
			require.ErrorIs(t, err, errBoom)
			require.Equal(t, 8, bundle.handler.calls)
			for i, gap := range bundle.handler.gaps() {
				require.LessOrEqual(t, gap, bundle.cfg.Policy.Backoff(i+1), "wait %d", i+1)
				require.LessOrEqual(t, gap, 5*time.Second, "wait %d", i+1)
			}
		})
	})

	t.Run("NotRetried", func(t *testing.T) {
		t.Parallel()
		for name, handlerErr := range map[string]error{
			"Permanent":          retry.Permanent(errBoom),
			"WrappedPermanent":   fmt.Errorf("validate: %w", retry.ErrPermanent),
			"InvalidEventID":     &dedup.InvalidEventIDError{ID: `""`, Reason: "it is empty"},
			"Infrastructure":     retry.Infrastructure(errBoom),
			"ContextCanceledErr": fmt.Errorf("query: %w", context.Canceled),
		} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				synctest.Test(t, func(t *testing.T) {
					bundle := setup(t)
					bundle.handler.always = handlerErr
					produced, elapsed, err := run(t, bundle)
					require.Same(t, handlerErr, err, "returned as is")
					require.Nil(t, produced)
					require.Equal(t, 1, bundle.handler.calls)
					require.Zero(t, elapsed)
				})
			})
		}
	})

	t.Run("CancelledContextIsNotRetried", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			ctx, cancel := context.WithCancel(context.Background())
			bundle.msg.SetContext(ctx)
			bundle.handler.errs = []error{errBoom}
			mw, err := middleware.Retry(bundle.cfg)
			require.NoError(t, err)
			h := mw(func(msg *message.Message) ([]*message.Message, error) {
				cancel() // shutdown while the handler runs
				return bundle.handler.handle(msg)
			})
			start := time.Now()
			_, err = h(bundle.msg)
			require.ErrorIs(t, err, errBoom)
			require.Equal(t, 1, bundle.handler.calls)
			require.Zero(t, time.Since(start))
		})
	})

	t.Run("CancelDuringTheWaitStopsAtOnce", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			bundle.msg.SetContext(ctx)
			bundle.handler.always = retry.After(time.Hour, errBoom)
			time.AfterFunc(500*time.Millisecond, cancel)
			_, elapsed, err := run(t, bundle)
			require.ErrorIs(t, err, errBoom, "the last error, not the context's")
			require.Equal(t, 1, bundle.handler.calls)
			require.Equal(t, 500*time.Millisecond, elapsed)
		})
	})

	t.Run("AfterWaitsExactly", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			// After is neither jittered nor capped by MaxInterval.
			bundle.handler.errs = []error{retry.After(3*time.Second, errBoom), retry.After(20*time.Second, errBoom)}
			_, elapsed, err := run(t, bundle)
			require.NoError(t, err)
			require.Equal(t, 3, bundle.handler.calls)
			require.Equal(t, []time.Duration{3 * time.Second, 20 * time.Second}, bundle.handler.gaps())
			require.Equal(t, 23*time.Second, elapsed)
		})
	})

	t.Run("StopsBeforeAWaitWouldCross", func(t *testing.T) {
		t.Parallel()
		// Every attempt asks for a 1s wait: attempts run at 0s, 1s and 2s; a fourth at
		// 3s would cross a 2.5s bound, so the delivery is handed back after three.
		tests := []struct {
			name      string
			configure func(*testBundle) context.CancelFunc
		}{
			{"MaxElapsedTime", func(b *testBundle) context.CancelFunc {
				b.cfg.Policy.MaxElapsedTime = 2500 * time.Millisecond
				return func() {}
			}},
			{"AckDeadline", func(b *testBundle) context.CancelFunc {
				b.cfg.AckDeadline = 2500 * time.Millisecond
				return func() {}
			}},
			{"ContextDeadline", func(b *testBundle) context.CancelFunc {
				ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
				b.msg.SetContext(ctx)
				return cancel
			}},
			{"EarliestOfThemWins", func(b *testBundle) context.CancelFunc {
				b.cfg.Policy.MaxElapsedTime = 10 * time.Second
				b.cfg.AckDeadline = 2500 * time.Millisecond
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				b.msg.SetContext(ctx)
				return cancel
			}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				synctest.Test(t, func(t *testing.T) {
					bundle := setup(t)
					defer tt.configure(bundle)()
					last := retry.After(time.Second, fmt.Errorf("attempt 3: %w", errBoom))
					bundle.handler.errs = []error{retry.After(time.Second, errBoom), retry.After(time.Second, errBoom), last}
					store := deduptest.NewMemoryStore()
					dedupe, err := middleware.Dedup(middleware.DedupConfig{Store: store, Consumer: "orders", Logger: testLogger(t)})
					require.NoError(t, err)
					retrying, err := middleware.Retry(bundle.cfg)
					require.NoError(t, err)
					start := time.Now()
					_, err = chain(bundle.handler.handle, retrying, dedupe)(bundle.msg)
					require.Same(t, last, err, "the last error is returned")
					require.Equal(t, 3, bundle.handler.calls)
					require.Equal(t, 2*time.Second, time.Since(start), "handed back at once, without waiting for the bound")
					require.NoError(t, bundle.msg.Context().Err(), "well before the delivery's own deadline")
					n, _ := store.Failures(dedup.Key{Consumer: "orders", EventID: "evt-1"})
					require.Equal(t, 3, n, "the attempts so far stay counted")
				})
			})
		}
	})

	t.Run("MaxAttemptsBoundsTheAttempts", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			bundle.cfg.Policy.MaxAttempts = 3
			bundle.handler.always = errBoom
			_, _, err := run(t, bundle)
			require.ErrorIs(t, err, errBoom)
			require.Equal(t, 3, bundle.handler.calls)
		})
	})

	t.Run("DefaultPolicyGivesFiveAttempts", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			bundle.cfg.Policy = retry.Policy{}
			bundle.handler.always = errBoom
			_, elapsed, err := run(t, bundle)
			require.ErrorIs(t, err, errBoom)
			require.Equal(t, retry.DefaultMaxAttempts, bundle.handler.calls)
			require.LessOrEqual(t, elapsed, 100*time.Millisecond+200*time.Millisecond+400*time.Millisecond+800*time.Millisecond)
		})
	})

	t.Run("AttemptCountsUp", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			bundle.handler.errs = []error{errBoom, errBoom}
			_, _, err := run(t, bundle)
			require.NoError(t, err)
			require.Equal(t, []int{1, 2, 3}, bundle.handler.attempts)

			// A redelivery starts again at 1.
			bundle.handler.attempts = nil
			bundle.handler.errs = nil
			bundle.msg = redeliver(bundle.msg)
			_, _, err = run(t, bundle)
			require.NoError(t, err)
			require.Equal(t, []int{1}, bundle.handler.attempts)
		})
	})

	t.Run("FailuresCountedByDedupAcrossRedeliveries", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			bundle.cfg.Policy.MaxAttempts = 3
			store := deduptest.NewMemoryStore()
			dedupe, err := middleware.Dedup(middleware.DedupConfig{Store: store, Consumer: "orders", Logger: testLogger(t)})
			require.NoError(t, err)
			retrying, err := middleware.Retry(bundle.cfg)
			require.NoError(t, err)
			bundle.handler.always = errBoom
			h := chain(bundle.handler.handle, retrying, dedupe)
			key := dedup.Key{Consumer: "orders", EventID: "evt-1"}

			// An earlier delivery used two attempts and was handed back.
			_, err = store.RecordFailure(context.Background(), key, "boom")
			require.NoError(t, err)
			_, err = store.RecordFailure(context.Background(), key, "boom")
			require.NoError(t, err)

			_, err = h(bundle.msg)
			require.ErrorIs(t, err, errBoom)
			require.Equal(t, 1, bundle.handler.calls, "one attempt was left")
			n, _ := store.Failures(key)
			require.Equal(t, 3, n)
		})
	})

	t.Run("WithDedupAttemptsAreCountedOnce", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			bundle.cfg.Policy.MaxAttempts = 4
			store := deduptest.NewMemoryStore()
			dedupe, err := middleware.Dedup(middleware.DedupConfig{Store: store, Consumer: "orders", Logger: testLogger(t)})
			require.NoError(t, err)
			retrying, err := middleware.Retry(bundle.cfg)
			require.NoError(t, err)
			bundle.handler.always = errBoom
			_, err = chain(bundle.handler.handle, retrying, dedupe)(bundle.msg)
			require.ErrorIs(t, err, errBoom)
			require.Equal(t, 4, bundle.handler.calls)
			n, _ := store.Failures(dedup.Key{Consumer: "orders", EventID: "evt-1"})
			require.Equal(t, 4, n)
			require.Equal(t, []int{1, 2, 3, 4}, bundle.handler.attempts)
		})
	})

	t.Run("ConfigErrorsNameTheField", func(t *testing.T) {
		t.Parallel()
		_, err := middleware.Retry(middleware.RetryConfig{Policy: retry.Policy{Multiplier: 0.5}})
		require.ErrorContains(t, err, "RetryConfig.Policy")
		require.ErrorContains(t, err, "Multiplier must be at least 1")

		_, err = middleware.Retry(middleware.RetryConfig{Policy: retry.Policy{MaxAttempts: -1}})
		require.ErrorContains(t, err, "RetryConfig.Policy")
		require.ErrorContains(t, err, "MaxAttempts")

		_, err = middleware.Retry(middleware.RetryConfig{AckDeadline: -time.Second})
		require.ErrorContains(t, err, "RetryConfig.AckDeadline must not be negative, got -1s")

		_, err = middleware.Retry(middleware.RetryConfig{})
		require.NoError(t, err, "the zero config is ready to use")
	})
}
