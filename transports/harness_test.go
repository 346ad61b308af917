package transports_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
)

// broker is one transport under test, on a topic (queue, subject, stream, table) of
// its own that its constructor removes when the test ends.
type broker struct {
	// system is the messaging.system of spans ("rabbitmq", "nats", …).
	system string
	topic  string
	// ackDeadline is how long the broker waits for an ack before it redelivers by
	// itself: consumer.Config.AckDeadline.
	ackDeadline time.Duration
	publisher   message.Publisher
	// subscriber returns a new subscriber on the shared subscription (queue, durable
	// consumer, consumer group), as a replica would have; instance names it.
	subscriber func(t *testing.T, instance int) message.Subscriber
	// unfinished describes what the broker still holds for the subscription (ready,
	// unacknowledged, pending), or "" when it holds nothing.
	unfinished func(ctx context.Context) (string, error)
}

// uniqueName returns prefix followed by random hex: one topic per test.
func uniqueName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// tracked wraps a subscriber and counts the messages it hands out that were acked, and
// those handed out and not yet acked or nacked.
type tracked struct {
	message.Subscriber
	acked, inFlight *atomic.Int64
}

func (s tracked) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	in, err := s.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		return nil, err
	}
	out := make(chan *message.Message)
	go func() {
		defer close(out)
		for msg := range in {
			s.inFlight.Add(1)
			go func() {
				select {
				case <-msg.Acked():
					s.acked.Add(1)
				case <-msg.Nacked():
				}
				s.inFlight.Add(-1)
			}()
			select {
			case out <- msg:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// runRouter runs a router with register's handlers until the returned stop is
// called (or the test ends).
func runRouter(t *testing.T, register func(r *message.Router)) (stop func()) {
	t.Helper()
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	require.NoError(t, err)
	register(r)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	select {
	case <-r.Running():
	case err := <-done:
		t.Fatalf("router stopped at start: %v", err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			require.NoError(t, r.Close())
			require.NoError(t, <-done)
		})
	}
	t.Cleanup(stop)
	return stop
}

// testLogger logs warnings and errors through t, so that a failing test shows what
// idem logged.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func newMessage(eventID, payload string) *message.Message {
	msg := message.NewMessage(watermill.NewUUID(), []byte(payload))
	msg.Metadata.Set("event_id", eventID)
	return msg
}

// The scenario's events.
const (
	scenarioEvents = 12 // evt-00 … evt-11, each applied once
	flakyEvent     = "evt-flaky"
	poisonEvent    = "evt-poison"
	replicas       = 3
)

// errGateway is the flaky event's transient failure.
var errGateway = errors.New("payment gateway timeout")

// runScenario consumes, on three consumer instances sharing newBroker's subscription
// and one PostgreSQL schema, scenarioEvents events published with duplicates, one
// event that fails twice (retried in-process, then handed back to the broker) before it
// succeeds, and one poison event (retry.Permanent), published twice. Each event's
// effect commits once, the poison event is one dead letter, and the broker ends
// drained.
func runScenario(t *testing.T, newBroker func(t *testing.T, pool *pgxpool.Pool) *broker) {
	t.Helper()
	start := time.Now()
	store, pool := testdb.Store(t)
	br := newBroker(t, pool)
	ctx := context.Background()
	effects := pgx.Identifier{store.Schema(), "effects"}.Sanitize()
	_, err := pool.Exec(ctx, "CREATE TABLE "+effects+" (event_id text NOT NULL, instance int NOT NULL)")
	require.NoError(t, err)

	var flakyCalls, poisonCalls atomic.Int32
	var acked, inFlight atomic.Int64
	var stops []func()
	for i := range replicas {
		c, err := consumer.New(consumer.Config{
			Store:           store,
			Retry:           retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond},
			AckDeadline:     br.ackDeadline,
			MessagingSystem: br.system,
			Logger:          testLogger(t).With("instance", i),
		})
		require.NoError(t, err)
		sub := tracked{Subscriber: br.subscriber(t, i), acked: &acked, inFlight: &inFlight}
		stops = append(stops, runRouter(t, func(r *message.Router) {
			c.AddConsumerHandler(r, "billing", br.topic, sub, func(msg *message.Message) error {
				ctx := msg.Context()
				tx, ok := postgres.TxFromContext(ctx)
				if !ok {
					return postgres.ErrNoTx
				}
				id := msg.Metadata.Get("event_id")
				if _, err := tx.Exec(ctx, "INSERT INTO "+effects+" (event_id, instance) VALUES ($1, $2)", id, i); err != nil {
					return err
				}
				switch id {
				case flakyEvent:
					switch flakyCalls.Add(1) {
					case 1:
						return errGateway // retried in-process; the effect rolls back
					case 2:
						// A wait longer than the delivery's budget: handed back to the broker.
						return retry.After(time.Hour, errGateway)
					}
				case poisonEvent:
					poisonCalls.Add(1)
					return retry.Permanent(fmt.Errorf("order %s: unknown currency %q", id, "XXX"))
				}
				return nil
			})
		}))
	}

	var msgs []*message.Message
	for i := range scenarioEvents {
		id := fmt.Sprintf("evt-%02d", i)
		msgs = append(msgs, newMessage(id, "order "+id))
		if i%3 == 0 {
			// A duplicate publish: same event, new message UUID, right behind it.
			msgs = append(msgs, newMessage(id, "order "+id))
		}
	}
	msgs = append(msgs, newMessage(flakyEvent, "flaky"), newMessage(poisonEvent, "poison"))
	for i := range scenarioEvents / 2 {
		// Duplicates of earlier events at the end, likely after their first copy was applied.
		id := fmt.Sprintf("evt-%02d", 2*i+1)
		msgs = append(msgs, newMessage(id, "order "+id))
	}
	msgs = append(msgs, newMessage(poisonEvent, "poison"))
	for _, m := range msgs {
		require.NoError(t, br.publisher.Publish(br.topic, m), "publish %s", m.Metadata.Get("event_id"))
	}
	published := int64(len(msgs))

	count := func(query string, args ...any) int {
		var n int
		require.NoError(t, pool.QueryRow(ctx, query, args...).Scan(&n))
		return n
	}
	processed := pgx.Identifier{store.Schema(), "processed"}.Sanitize()
	deadLetters := pgx.Identifier{store.Schema(), "dead_letters"}.Sanitize()
	var last string
	done := func() bool {
		p := count("SELECT count(*) FROM " + processed)
		dl := count("SELECT count(*) FROM " + deadLetters)
		held, err := br.unfinished(ctx)
		require.NoError(t, err)
		last = fmt.Sprintf("processed %d/%d, dead letters %d/1, acked %d/%d, in flight %d, broker: %q",
			p, scenarioEvents+1, dl, acked.Load(), published, inFlight.Load(), held)
		return p == scenarioEvents+1 && dl == 1 && acked.Load() == published && inFlight.Load() == 0 && held == ""
	}
	if !assertEventually(done, 20*time.Second) {
		t.Fatalf("not done after 20s: %s", last)
	}
	for _, stop := range stops {
		stop()
	}
	// With every subscriber gone, whatever was delivered and not acked is back in
	// the queue: still nothing.
	held, err := br.unfinished(ctx)
	require.NoError(t, err)
	require.Empty(t, held, "the broker holds messages after the consumers stopped")

	rows, err := pool.Query(ctx, "SELECT event_id, count(*) FROM "+effects+" GROUP BY event_id ORDER BY event_id")
	require.NoError(t, err)
	applied := map[string]int{}
	for rows.Next() {
		var id string
		var n int
		require.NoError(t, rows.Scan(&id, &n))
		applied[id] = n
	}
	require.NoError(t, rows.Err())
	want := map[string]int{flakyEvent: 1}
	for i := range scenarioEvents {
		want[fmt.Sprintf("evt-%02d", i)] = 1
	}
	require.Equal(t, want, applied, "each event's effect committed exactly once; the poison event's never")

	require.Equal(t, int32(3), flakyCalls.Load(), "the flaky event: a failure, a failure handed back to the broker, a success")
	var attempts int
	require.NoError(t, pool.QueryRow(ctx, "SELECT attempts FROM "+pgx.Identifier{store.Schema(), "attempts"}.Sanitize()+
		" WHERE consumer = 'billing' AND event_id = $1", flakyEvent).Scan(&attempts))
	require.Equal(t, 2, attempts, "both failures of the flaky event are counted")

	d, err := store.DeadLetter(ctx, "billing", poisonEvent)
	require.NoError(t, err)
	require.Equal(t, dlq.ReasonPermanent, d.Reason)
	require.Equal(t, br.topic, d.Topic)
	require.Equal(t, []byte("poison"), d.Payload)
	require.Contains(t, d.Error, "unknown currency")
	require.Equal(t, int(poisonCalls.Load()), d.Count, "each delivery of the poison event updates its one dead letter")
	t.Logf("%s: %d messages, %d events, on %d instances, in %s", br.system, published, scenarioEvents+2, replicas, time.Since(start).Round(time.Millisecond))
}

// assertEventually polls cond every 10ms until it holds or timeout passes.
func assertEventually(cond func() bool, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
}
