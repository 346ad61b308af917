package consumer_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
)

// delayedBundle is a consumer on watermill-sql, which hands its subscriber one message
// at a time, resending a nacked one in place: a message waiting in-process, or handed
// back, blocks the rest.
type delayedBundle struct {
	*testBundle
	br    *sqlBroker
	pub   *downPublisher
	mu    sync.Mutex
	order []string // event IDs in the order their effects committed
}

// downPublisher is a publisher that can be down, and counts what failed.
type downPublisher struct {
	message.Publisher
	down   atomic.Bool
	failed atomic.Int32
}

func (p *downPublisher) Publish(topic string, msgs ...*message.Message) error {
	if p.down.Load() {
		p.failed.Add(1)
		return errors.New("broker unreachable")
	}
	return p.Publisher.Publish(topic, msgs...)
}

// setupDelayed starts a router with one handler, which fail decides the failures of;
// wrap, when set, wraps the store the consumer uses.
func setupDelayed(t *testing.T, delayed bool, fail func(id string, attempt int) error, wrap func(*postgres.Store) consumer.Store) *delayedBundle {
	t.Helper()
	b := &delayedBundle{testBundle: setup(t)}
	var store consumer.Store = b.store
	if wrap != nil {
		store = wrap(b.store)
	}
	b.br = newSQLBroker(t, b.pool)
	b.pub = &downPublisher{Publisher: b.br.pub}
	cfg := consumer.Config{Store: store, Logger: testLogger(t),
		Retry: retry.Policy{MaxAttempts: 3, InitialInterval: 300 * time.Millisecond, MaxInterval: 300 * time.Millisecond}}
	if delayed {
		cfg.DelayedRetry = consumer.DelayedRetryConfig{Publisher: b.pub, Interval: 20 * time.Millisecond}
	}
	c, err := consumer.New(cfg)
	require.NoError(t, err)
	if delayed {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c.RunDelayedRetries(ctx) }()
		t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	}
	attempts := map[string]int{}
	runRouter(t, func(r *message.Router) {
		c.AddConsumerHandler(r, "billing", b.br.topic, b.br.sub, func(msg *message.Message) error {
			id := msg.Metadata.Get("event_id")
			b.mu.Lock()
			attempts[id]++
			n := attempts[id]
			b.mu.Unlock()
			if err := fail(id, n); err != nil {
				return err
			}
			if err := b.effect(msg.Context(), msg); err != nil {
				return err
			}
			b.mu.Lock()
			b.order = append(b.order, id)
			b.mu.Unlock()
			return nil
		})
	})
	return b
}

func (b *delayedBundle) parked(t *testing.T) int {
	return b.count(t, "SELECT count(*) FROM "+pgx.Identifier{b.store.Schema(), "delayed"}.Sanitize())
}

func (b *delayedBundle) publish(t *testing.T, ids ...string) {
	t.Helper()
	for _, id := range ids {
		b.br.publish(t, newMessage(id, "placed"))
	}
}

// TestDelayedRetryFreesThePartition: a flaky event is parked for its next attempt and
// acked, so the events behind it are applied before that attempt, instead of after
// its in-process backoff; each effect still commits once.
func TestDelayedRetryFreesThePartition(t *testing.T) {
	t.Parallel()
	flakyFirst := func(id string, attempt int) error {
		if id == "evt-0" && attempt == 1 {
			return retry.After(time.Second, errors.New("gateway rate limit"))
		}
		return nil
	}
	ids := []string{"evt-0", "evt-1", "evt-2", "evt-3", "evt-4"}
	for _, delayed := range []bool{true, false} {
		t.Run(map[bool]string{true: "Delayed", false: "InProcess"}[delayed], func(t *testing.T) {
			t.Parallel()
			b := setupDelayed(t, delayed, flakyFirst, nil)
			b.publish(t, ids[0])
			require.Eventually(t, func() bool { return b.attempts(t, "billing", "evt-0") == 1 }, 10*time.Second, 5*time.Millisecond)
			b.publish(t, ids[1:]...) // while evt-0 waits a second for its next attempt
			// The order is recorded in the handler, before its transaction commits: wait
			// for every effect to have committed.
			require.Eventually(t, func() bool {
				for _, id := range ids {
					if b.effectsOf(t, id) != 1 {
						return false
					}
				}
				return true
			}, 20*time.Second, 10*time.Millisecond)
			for _, id := range ids {
				require.Equal(t, 1, b.effectsOf(t, id), id)
			}
			require.Equal(t, 1, b.attempts(t, "billing", "evt-0"), "the failed attempt is counted either way")
			b.mu.Lock()
			defer b.mu.Unlock()
			if delayed {
				require.Equal(t, "evt-0", b.order[len(b.order)-1], "the events behind the flaky one did not wait for it: %v", b.order)
				require.Zero(t, b.parked(t), "nothing left parked")
			} else {
				require.Equal(t, "evt-0", b.order[0], "in-process, the flaky event held the others for its backoff: %v", b.order)
			}
		})
	}
}

// TestDelayedRetryStillEndsInADeadLetter: an event that keeps failing is parked after
// each attempt, its attempts counted durably, and dead-lettered as exhausted after
// the last; it is never applied and never left parked.
func TestDelayedRetryStillEndsInADeadLetter(t *testing.T) {
	t.Parallel()
	b := setupDelayed(t, true, func(id string, _ int) error {
		if id == "evt-poison" {
			return errors.New("gateway down")
		}
		return nil
	}, nil)
	b.publish(t, "evt-poison", "evt-1")
	require.Eventually(t, func() bool { return b.deadLetters(t) == 1 }, 20*time.Second, 10*time.Millisecond)
	d := b.deadLetter(t, "billing", "evt-poison")
	require.Equal(t, dlq.ReasonExhausted, dlq.Reason(d.Reason))
	require.Equal(t, 3, d.Attempts, "three attempts, across two parks")
	require.Zero(t, b.effectsOf(t, "evt-poison"))
	require.Eventually(t, func() bool { return b.effectsOf(t, "evt-1") == 1 }, 10*time.Second, 10*time.Millisecond)
	require.Zero(t, b.parked(t))
}

// TestDelayedRetrySurvivesAFailingPublish: a due event whose publish fails stays
// parked and is published on a later pass; nothing is lost.
func TestDelayedRetrySurvivesAFailingPublish(t *testing.T) {
	t.Parallel()
	var b *delayedBundle
	b = setupDelayed(t, true, func(id string, attempt int) error {
		if attempt == 1 {
			b.pub.down.Store(true) // the broker goes down as the event is parked
			return errors.New("gateway timeout")
		}
		return nil
	}, nil)
	b.publish(t, "evt-1")
	require.Eventually(t, func() bool { return b.pub.failed.Load() >= 3 }, 10*time.Second, 10*time.Millisecond,
		"passes of the redeliverer fail while the broker is down")
	require.Equal(t, 1, b.parked(t), "a publish that fails leaves the event parked")
	b.pub.down.Store(false)
	require.Eventually(t, func() bool { return b.effectsOf(t, "evt-1") == 1 }, 10*time.Second, 10*time.Millisecond)
	require.Zero(t, b.parked(t))
}

// refusingParker fails every Park, as a store in an outage would.
type refusingParker struct {
	*postgres.Store
	parks atomic.Int32
}

func (p *refusingParker) Park(context.Context, dedup.Parked) error {
	p.parks.Add(1)
	return errors.New("connection refused")
}

// TestDelayedRetryParkFailureHandsTheMessageBack: when parking fails, the message goes
// back to the broker, not lost and not dead-lettered, and is applied on a redelivery.
func TestDelayedRetryParkFailureHandsTheMessageBack(t *testing.T) {
	t.Parallel()
	var refusing *refusingParker
	b := setupDelayed(t, true, func(id string, attempt int) error {
		if attempt == 1 {
			return errors.New("gateway timeout")
		}
		return nil
	}, func(s *postgres.Store) consumer.Store { refusing = &refusingParker{Store: s}; return refusing })
	b.publish(t, "evt-1")
	require.Eventually(t, func() bool { return b.effectsOf(t, "evt-1") == 1 }, 20*time.Second, 10*time.Millisecond)
	require.GreaterOrEqual(t, refusing.parks.Load(), int32(1))
	require.Zero(t, b.deadLetters(t))
}

func TestDelayedRetryConfigIsValidated(t *testing.T) {
	t.Parallel()
	store, _ := testdb.Store(t)
	bus := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	t.Cleanup(func() { _ = bus.Close() })
	for _, tt := range []struct {
		cfg  consumer.Config
		want string
	}{
		{consumer.Config{Store: store, DelayedRetry: consumer.DelayedRetryConfig{Interval: time.Second}}, "Config.DelayedRetry is set but its Publisher is not"},
		{consumer.Config{Store: store, DelayedRetry: consumer.DelayedRetryConfig{Publisher: bus, AttemptsPerDelivery: -1}}, "must not be negative"},
		{consumer.Config{Store: plainStore{store}, DelayedRetry: consumer.DelayedRetryConfig{Publisher: bus}}, "Config.DelayedRetry needs a store that parks messages (dedup.Parker)"},
	} {
		_, err := consumer.New(tt.cfg)
		require.ErrorContains(t, err, tt.want)
	}
	c, err := consumer.New(consumer.Config{Store: store})
	require.NoError(t, err)
	require.ErrorIs(t, c.RunDelayedRetries(context.Background()), consumer.ErrNoDelayedRetry)
}
