package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dedup/deduptest"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/dlq/dlqtest"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/retry"
)

func TestDeadLetter(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		dlq   *recordingDLQ
		dedup *deduptest.MemoryStore
		cfg   middleware.DeadLetterConfig

		mu    sync.Mutex
		calls int
	}
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		store := &recordingDLQ{MemoryStore: dlqtest.NewMemoryStore()}
		return &testBundle{
			dlq:   store,
			dedup: deduptest.NewMemoryStore(),
			cfg: middleware.DeadLetterConfig{
				Store:    store,
				Policy:   retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: 10 * time.Millisecond, MaxElapsedTime: -1},
				Consumer: "orders",
				Logger:   testLogger(t),
			},
		}
	}
	// handler counts its calls and fails with err.
	handler := func(bundle *testBundle, err error) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			bundle.mu.Lock()
			bundle.calls++
			calls := bundle.calls
			bundle.mu.Unlock()
			if calls > runaway {
				return nil, retry.Permanent(errRunaway)
			}
			if err != nil {
				return nil, err
			}
			return []*message.Message{message.NewMessage(watermill.NewUUID(), []byte("out"))}, nil
		}
	}
	deadLetter := func(t *testing.T, bundle *testBundle) message.HandlerMiddleware {
		t.Helper()
		mw, err := middleware.DeadLetter(bundle.cfg)
		require.NoError(t, err)
		return mw
	}
	dedupe := func(t *testing.T, bundle *testBundle) message.HandlerMiddleware {
		t.Helper()
		mw, err := middleware.Dedup(middleware.DedupConfig{Store: bundle.dedup, Consumer: "orders", Logger: testLogger(t)})
		require.NoError(t, err)
		return mw
	}
	// stack is DeadLetter, then Dedup, then h.
	stack := func(t *testing.T, bundle *testBundle, h message.HandlerFunc) message.HandlerFunc {
		t.Helper()
		return chain(h, deadLetter(t, bundle), dedupe(t, bundle))
	}
	// timed delivers msg through h and returns the error and the fake time it took.
	timed := func(h message.HandlerFunc, msg *message.Message) (time.Duration, error) {
		start := time.Now()
		_, err := h(msg)
		return time.Since(start), err
	}

	t.Run("SuccessIsAcked", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		h := stack(t, bundle, handler(bundle, nil))
		msg := newMessage("evt-1", "x")
		produced, err := h(msg)
		require.NoError(t, err)
		require.Len(t, produced, 1)

		produced, err = h(redeliver(msg))
		require.NoError(t, err, "a duplicate is acked")
		require.Empty(t, produced)
		require.Equal(t, 1, bundle.calls)
		require.Empty(t, bundle.dlq.All())
	})

	t.Run("PermanentIsDeadLetteredAtOnce", func(t *testing.T) {
		t.Parallel()
		for _, withDedup := range []bool{true, false} {
			t.Run(fmt.Sprintf("WithDedup=%t", withDedup), func(t *testing.T) {
				t.Parallel()
				bundle := setup(t)
				h := handler(bundle, retry.Permanent(errors.New("bad payload")))
				if withDedup {
					h = stack(t, bundle, h)
				} else {
					h = deadLetter(t, bundle)(h)
				}
				msg := newMessage("evt-1", `{"total":"ten"}`)
				msg.Metadata.Set("tenant", "acme")
				produced, err := h(msg)
				require.NoError(t, err, "dead-lettered, then acked")
				require.Nil(t, produced)
				require.Equal(t, 1, bundle.calls, "not retried")

				letters := bundle.dlq.All()
				require.Len(t, letters, 1)
				dl := letters[0]
				require.Equal(t, "orders", dl.Consumer)
				require.Equal(t, "evt-1", dl.EventID)
				require.Equal(t, dlq.ReasonPermanent, dl.Reason)
				require.Equal(t, 1, dl.Attempts)
				require.Equal(t, "bad payload", dl.Error)
				require.Equal(t, msg.UUID, dl.MessageUUID)
				require.Equal(t, []byte(`{"total":"ten"}`), dl.Payload)
				require.Equal(t, map[string]string{"event_id": "evt-1", "tenant": "acme"}, dl.Metadata)
				require.Equal(t, dlq.StatusPending, dl.Status)
				require.Equal(t, 1, dl.Count)
				require.Empty(t, dl.Topic, "no router: no topic in the context")
				require.Empty(t, dl.Handler, "no router: no handler name in the context")
			})
		}
	})

	t.Run("ExhaustedAfterMaxAttempts", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			h := stack(t, bundle, handler(bundle, errBoom))
			msg := newMessage("evt-1", "x")
			for i := range 2 {
				_, err := h(redeliver(msg))
				require.ErrorIs(t, err, errBoom, "delivery %d: attempts left, handed back", i+1)
				require.Empty(t, bundle.dlq.All(), "delivery %d", i+1)
			}
			_, err := h(redeliver(msg))
			require.NoError(t, err, "the last allowed attempt failed: dead-lettered and acked")
			require.Equal(t, 3, bundle.calls)
			letters := bundle.dlq.All()
			require.Len(t, letters, 1)
			require.Equal(t, dlq.ReasonExhausted, letters[0].Reason)
			require.Equal(t, 3, letters[0].Attempts)
			require.Equal(t, "boom", letters[0].Error)
		})
	})

	t.Run("TransientWithAttemptsLeftIsHandedBack", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		h := stack(t, bundle, handler(bundle, errBoom))
		produced, err := h(newMessage("evt-1", "x"))
		require.ErrorIs(t, err, errBoom)
		require.Nil(t, produced)
		require.Empty(t, bundle.dlq.All())
		n, _ := bundle.dedup.Failures(dedup.Key{Consumer: "orders", EventID: "evt-1"})
		require.Equal(t, 1, n)
	})

	t.Run("ExhaustedInProcessUnderRetry", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			retrying, err := middleware.Retry(middleware.RetryConfig{Policy: bundle.cfg.Policy, Logger: testLogger(t)})
			require.NoError(t, err)
			h := chain(handler(bundle, errBoom), deadLetter(t, bundle), retrying, dedupe(t, bundle))
			_, err = h(newMessage("evt-1", "x"))
			require.NoError(t, err)
			require.Equal(t, 3, bundle.calls)
			letters := bundle.dlq.All()
			require.Len(t, letters, 1)
			require.Equal(t, dlq.ReasonExhausted, letters[0].Reason)
			require.Equal(t, 3, letters[0].Attempts)
		})
	})

	t.Run("PanicInTheFullStack", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			retrying, err := middleware.Retry(middleware.RetryConfig{Policy: bundle.cfg.Policy, Logger: testLogger(t)})
			require.NoError(t, err)
			panicking := func(msg *message.Message) ([]*message.Message, error) {
				if _, err := handler(bundle, nil)(msg); err != nil {
					return nil, err // runaway
				}
				panic("kaboom")
			}
			h := chain(panicking,
				middleware.Correlation, deadLetter(t, bundle), retrying, dedupe(t, bundle), middleware.Recover)
			_, err = h(newMessage("evt-1", "x"))
			require.NoError(t, err, "a panic is retried and dead-lettered like any failure")
			letters := bundle.dlq.All()
			require.Len(t, letters, 1)
			require.Equal(t, dlq.ReasonExhausted, letters[0].Reason)
			require.Equal(t, 3, letters[0].Attempts)
			require.Equal(t, "handler panicked: kaboom", letters[0].Error, "the stack stays out of the dead letter")
			require.Equal(t, 3, bundle.calls)
		})
	})

	t.Run("MalformedUnderADerivedKey", func(t *testing.T) {
		t.Parallel()
		for name, id := range map[string]string{
			"MissingID": "",
			"NULInID":   "evt-\x00",
			"TooLongID": strings.Repeat("x", dedup.DefaultMaxIDLength+1),
		} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				bundle := setup(t)
				h := stack(t, bundle, handler(bundle, nil))
				msg := message.NewMessage(watermill.NewUUID(), []byte("x"))
				if id != "" {
					msg.Metadata.Set(dedup.MetadataKey, id)
				}
				for range 2 {
					produced, err := h(redeliver(msg))
					require.NoError(t, err, "dead-lettered, then acked")
					require.Nil(t, produced)
				}
				require.Zero(t, bundle.calls)
				letters := bundle.dlq.All()
				require.Len(t, letters, 1, "redeliveries collapse into one dead letter")
				dl := letters[0]
				require.Equal(t, dedup.DerivedKey(msg), dl.EventID)
				require.Equal(t, "orders", dl.Consumer)
				require.Equal(t, dlq.ReasonMalformed, dl.Reason)
				require.Equal(t, 1, dl.Attempts)
				require.Equal(t, 2, dl.Count)
				require.Contains(t, dl.Error, "dedup: invalid event ID")
				require.Equal(t, msg.Metadata, message.Metadata(dl.Metadata), "the metadata as it came")
			})
		}
	})

	t.Run("FailingStoreNacksAndLosesNothing", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			name   string
			msg    func() *message.Message
			reason dlq.Reason
		}{
			{"Permanent", func() *message.Message { return newMessage("evt-1", "x") }, dlq.ReasonPermanent},
			{"Malformed", func() *message.Message { return newMessage("", "x") }, dlq.ReasonMalformed},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				synctest.Test(t, func(t *testing.T) {
					bundle := setup(t)
					errDown := errors.New("dead_letters: connection refused")
					bundle.dlq.SetErr(errDown)
					h := stack(t, bundle, handler(bundle, retry.Permanent(errBoom)))
					msg := tt.msg()
					for range 3 {
						_, err := h(redeliver(msg))
						require.ErrorIs(t, err, errDown, "nacked: the broker keeps the message")
						require.ErrorIs(t, err, retry.ErrInfrastructure)
						require.Equal(t, retry.ClassInfrastructure, retry.Classify(err))
						require.Empty(t, bundle.dlq.All())
					}

					bundle.dlq.SetErr(nil)
					_, err := h(redeliver(msg))
					require.NoError(t, err)
					letters := bundle.dlq.All()
					require.Len(t, letters, 1, "the redelivery after the outage stores it")
					require.Equal(t, tt.reason, letters[0].Reason)
					require.Equal(t, 1, letters[0].Count)
				})
			})
		}
	})

	t.Run("NotTheMessagesFaultIsDeferred", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			h := stack(t, bundle, handler(bundle, retry.Infrastructure(errBoom)))
			msg := newMessage("evt-1", "x")
			for range 2 * bundle.cfg.Policy.MaxAttempts {
				_, err := h(redeliver(msg))
				require.ErrorIs(t, err, errBoom, "nacked")
			}
			require.Equal(t, 6, bundle.calls)
			require.Empty(t, bundle.dlq.All(), "never dead-lettered")
			n, _ := bundle.dedup.Failures(dedup.Key{Consumer: "orders", EventID: "evt-1"})
			require.Zero(t, n, "no attempt spent")
		})
	})

	t.Run("CancelledContextIsDeferredAtOnce", func(t *testing.T) {
		t.Parallel()
		for name, handlerErr := range map[string]error{
			"Transient": errBoom,
			"Permanent": retry.Permanent(errBoom),
		} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				synctest.Test(t, func(t *testing.T) {
					bundle := setup(t)
					bundle.cfg.Policy.InitialInterval, bundle.cfg.Policy.MaxInterval = time.Hour, time.Hour
					ctx, cancel := context.WithCancel(context.Background())
					defer cancel()
					h := stack(t, bundle, func(msg *message.Message) ([]*message.Message, error) {
						cancel() // shutdown while the handler runs
						return nil, handlerErr
					})
					msg := newMessage("evt-1", "x")
					msg.SetContext(ctx)
					elapsed, err := timed(h, msg)
					require.ErrorIs(t, err, errBoom, "nacked")
					require.Zero(t, elapsed, "shutdown does not wait for a back-off")
					require.Empty(t, bundle.dlq.All(), "a shutdown never dead-letters")
				})
			})
		}
	})

	t.Run("DeferralBackOffGrowsAndResets", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			// Caps of 1ms, 1s, 1000s, then 1h: the jittered waits cannot all stay below
			// the second cap unless the back-off did not grow (odds below 1e-13).
			bundle.cfg.Policy = retry.Policy{InitialInterval: time.Millisecond, Multiplier: 1000, MaxInterval: time.Hour, MaxElapsedTime: -1}
			var fail sync.Map // event ID -> bool
			h := stack(t, bundle, func(msg *message.Message) ([]*message.Message, error) {
				if _, ok := fail.Load(msg.Metadata.Get(dedup.MetadataKey)); ok {
					return nil, retry.Infrastructure(errBoom)
				}
				return nil, nil
			})
			fail.Store("evt-1", true)
			msg := newMessage("evt-1", "x")
			var waits []time.Duration
			for n := 1; n <= 6; n++ {
				elapsed, err := timed(h, redeliver(msg))
				require.ErrorIs(t, err, errBoom)
				require.LessOrEqual(t, elapsed, bundle.cfg.Policy.Backoff(n), "deferral %d", n)
				waits = append(waits, elapsed)
			}
			require.Greater(t, max(waits[2], waits[3], waits[4], waits[5]), bundle.cfg.Policy.Backoff(2),
				"the back-off grows with consecutive deferrals: %v", waits)

			// A success ends the streak: the next deferral starts from the first cap again.
			elapsed, err := timed(h, newMessage("evt-2", "x"))
			require.NoError(t, err)
			require.Zero(t, elapsed)
			elapsed, err = timed(h, redeliver(msg))
			require.ErrorIs(t, err, errBoom)
			require.LessOrEqual(t, elapsed, time.Millisecond)
		})
	})

	t.Run("DeferralEndsWhenTheContextEnds", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			bundle.cfg.Policy.InitialInterval, bundle.cfg.Policy.MaxInterval = time.Hour, time.Hour
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			time.AfterFunc(time.Second, cancel)
			h := stack(t, bundle, handler(bundle, retry.Infrastructure(errBoom)))
			msg := newMessage("evt-1", "x")
			msg.SetContext(ctx)
			elapsed, err := timed(h, msg)
			require.ErrorIs(t, err, errBoom)
			require.LessOrEqual(t, elapsed, time.Second, "a shutdown cuts the back-off short")
		})
	})

	t.Run("DeadLetterCarriesCorrelationTraceAndScrubbedError", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		handlerErr := retry.Permanent(fmt.Errorf("order %d: connect postgres://u:secret@h/db: %w", 1001, errBoom))
		var correlationID string
		h := chain(func(msg *message.Message) ([]*message.Message, error) {
			correlationID, _ = middleware.CorrelationID(msg.Context())
			return nil, handlerErr
		}, middleware.Correlation, deadLetter(t, bundle), dedupe(t, bundle))

		sc := trace.NewSpanContext(trace.SpanContextConfig{
			TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
			SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
			TraceFlags: trace.FlagsSampled,
		})
		require.True(t, sc.IsValid())
		msg := newMessage("evt-1", "x")
		msg.SetContext(trace.ContextWithSpanContext(context.Background(), sc))
		_, err := h(msg)
		require.NoError(t, err)

		letters := bundle.dlq.All()
		require.Len(t, letters, 1)
		dl := letters[0]
		require.NotEmpty(t, correlationID)
		require.Equal(t, correlationID, dl.CorrelationID, "the ID Correlation generated")
		require.Equal(t, map[string]string{"event_id": "evt-1"}, dl.Metadata, "the generated ID is not added to the metadata")
		require.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", dl.TraceID)
		require.Equal(t, "00f067aa0ba902b7", dl.SpanID)
		require.Equal(t, "order 1001: connect postgres://u:REDACTED@h/db: boom", dl.Error)
		require.NotContains(t, dl.Error, "secret")
		require.Equal(t, dlq.Fingerprint("orders", handlerErr), dl.Fingerprint)
		require.Empty(t, dl.Topic)
		require.Empty(t, dl.Handler)
	})

	t.Run("CorrelationIDFromMetadataAndNoTraceWithoutSpan", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		h := stack(t, bundle, handler(bundle, retry.Permanent(errBoom)))
		msg := newMessage("evt-1", "x")
		msg.Metadata.Set(middleware.CorrelationIDKey, "corr-9")
		_, err := h(msg)
		require.NoError(t, err)
		dl := bundle.dlq.All()[0]
		require.Equal(t, "corr-9", dl.CorrelationID)
		require.Empty(t, dl.TraceID)
		require.Empty(t, dl.SpanID)
	})

	t.Run("FingerprintIsGroupedByCause", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		h := deadLetter(t, bundle)(func(msg *message.Message) ([]*message.Message, error) {
			return nil, retry.Permanent(fmt.Errorf("order %s: card declined", msg.Metadata.Get(dedup.MetadataKey)))
		})
		for _, id := range []string{"evt-1", "evt-2"} {
			_, err := h(newMessage(id, "x"))
			require.NoError(t, err)
		}
		letters := bundle.dlq.All()
		require.Len(t, letters, 2)
		require.Equal(t, letters[0].Fingerprint, letters[1].Fingerprint, "same cause, different IDs: one group")
		require.NotEmpty(t, letters[0].Fingerprint)
	})

	t.Run("CustomFingerprintFunc", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		var gotConsumer string
		var gotErr error
		bundle.cfg.FingerprintFunc = func(consumer string, err error) string {
			gotConsumer, gotErr = consumer, err
			return "fp-custom"
		}
		handlerErr := retry.Permanent(errBoom)
		h := stack(t, bundle, handler(bundle, handlerErr))
		_, err := h(newMessage("evt-1", "x"))
		require.NoError(t, err)
		require.Equal(t, "fp-custom", bundle.dlq.All()[0].Fingerprint)
		require.Equal(t, "orders", gotConsumer)
		require.Same(t, handlerErr, gotErr)
	})

	t.Run("WriteIsDetachedFromTheDelivery", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			bundle.cfg.Timeout = 5 * time.Second
			type valueKey struct{}
			ctx, cancelDelivery := context.WithTimeout(context.WithValue(context.Background(), valueKey{}, "kept"), time.Second)
			defer cancelDelivery()

			var putCtx context.Context
			var errAfterCancel error
			bundle.dlq.onPut = func(ctx context.Context, _ *dlq.DeadLetter) {
				putCtx = ctx
				cancelDelivery() // the delivery ends (shutdown, ack deadline) while the write runs
				errAfterCancel = ctx.Err()
			}
			h := stack(t, bundle, handler(bundle, retry.Permanent(errBoom)))
			msg := newMessage("evt-1", "x")
			msg.SetContext(ctx)
			start := time.Now()
			_, err := h(msg)
			require.NoError(t, err)
			require.Len(t, bundle.dlq.All(), 1, "the dead letter committed")

			require.NotNil(t, putCtx)
			require.NoError(t, errAfterCancel, "cancelling the delivery does not cancel the write")
			require.Error(t, msg.Context().Err(), "while the delivery's context is cancelled")
			deadline, ok := putCtx.Deadline()
			require.True(t, ok)
			require.Equal(t, start.Add(5*time.Second), deadline, "its own deadline, DeadLetterConfig.Timeout")
			require.Equal(t, "kept", putCtx.Value(valueKey{}), "values such as the trace are kept")
		})
	})

	t.Run("ConsumerNameScopesTheDeadLetter", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		bundle.cfg.Consumer = "billing"
		_, err := deadLetter(t, bundle)(handler(bundle, retry.Permanent(errBoom)))(newMessage("evt-1", "x"))
		require.NoError(t, err)
		_, err = bundle.dlq.Get(context.Background(), "billing", "evt-1")
		require.NoError(t, err)
	})

	t.Run("ConfigErrorsNameTheField", func(t *testing.T) {
		t.Parallel()
		_, err := middleware.DeadLetter(middleware.DeadLetterConfig{})
		require.ErrorContains(t, err, "DeadLetterConfig.Store is required")

		_, err = middleware.DeadLetter(middleware.DeadLetterConfig{Store: dlqtest.NewMemoryStore(), Policy: retry.Policy{MaxAttempts: -1}})
		require.ErrorContains(t, err, "DeadLetterConfig.Policy")
		require.ErrorContains(t, err, "MaxAttempts must be at least 1")

		_, err = middleware.DeadLetter(middleware.DeadLetterConfig{Store: dlqtest.NewMemoryStore()})
		require.NoError(t, err, "the zero Policy is ready to use")
	})
}
