package consumer_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
	"github.com/idemkit/idem/sqlite"
)

// reviewStore is what these tests need of a store: consume through it, read back
// what it kept.
type reviewStore interface {
	dedup.Store
	dlq.Store
	dlq.Reviewer
}

// bothStores runs test once on a fresh PostgreSQL schema and once on a fresh SQLite
// file.
func bothStores(t *testing.T, test func(t *testing.T, store reviewStore)) {
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		store, _ := testdb.Store(t)
		test(t, store)
	})
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		test(t, sqliteStore(t))
	})
}

// sqliteStore returns a migrated SQLite store in a fresh file.
func sqliteStore(t *testing.T) *sqlite.Store {
	t.Helper()
	store, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "idem.db"), sqlite.Config{Migrate: true})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, store.Close()) })
	return store
}

// deliverUntilAcked redelivers msg as an at-least-once broker does until the stack
// acks it, and fails the test when that takes more than max deliveries: a message
// that is nacked forever blocks its partition.
func deliverUntilAcked(t *testing.T, h message.NoPublishHandlerFunc, msg *message.Message, max int) int {
	t.Helper()
	var errs []string
	for n := 1; n <= max; n++ {
		err := deliver(h, msg)
		if err == nil {
			return n
		}
		errs = append(errs, err.Error())
	}
	t.Fatalf("still nacked after %d deliveries; the errors were:\n%s", max, strings.Join(errs, "\n"))
	return 0
}

// requireStorable fails unless s is text every store can hold: valid UTF-8 without NUL.
func requireStorable(t *testing.T, field, s string) {
	t.Helper()
	require.True(t, utf8.ValidString(s), "%s is not valid UTF-8: %q", field, s)
	require.NotContains(t, s, "\x00", "%s holds a NUL byte: %q", field, s)
}

// TestInputTheStoreCannotHoldEndsInADeadLetter sends, through a real consumer on each
// store, messages and errors carrying bytes a text column cannot hold, or values too
// large for one: each ends, acked, in exactly one dead letter within its attempts,
// with its text columns made storable and its payload and metadata kept byte for byte.
func TestInputTheStoreCannotHoldEndsInADeadLetter(t *testing.T) {
	t.Parallel()

	const nul, bad = "a\x00b", "a\xffb\xc3"
	huge := strings.Repeat("x", 1<<20)
	type input struct {
		name     string
		metadata map[string]string // over a valid event_id
		uuid     string
		err      error // the handler's, every attempt
		reason   dlq.Reason
	}
	permanent := retry.Permanent(errBoom)
	inputs := []input{
		{name: "CorrelationIDWithNUL", metadata: map[string]string{"correlation_id": nul}, err: permanent, reason: dlq.ReasonPermanent},
		{name: "CorrelationIDNotUTF8", metadata: map[string]string{"correlation_id": bad}, err: permanent, reason: dlq.ReasonPermanent},
		{name: "EventTypeWithNUL", metadata: map[string]string{"event_type": nul}, err: permanent, reason: dlq.ReasonPermanent},
		{name: "EventTypeNotUTF8", metadata: map[string]string{"event_type": bad}, err: errBoom, reason: dlq.ReasonExhausted},
		{name: "EventVersionWithNUL", metadata: map[string]string{"event_version": nul}, err: errBoom, reason: dlq.ReasonExhausted},
		{name: "EventVersionNotUTF8", metadata: map[string]string{"event_version": bad}, err: permanent, reason: dlq.ReasonPermanent},
		{name: "MessageUUIDWithNUL", uuid: nul, err: permanent, reason: dlq.ReasonPermanent},
		{name: "MessageUUIDNotUTF8", uuid: bad, err: errBoom, reason: dlq.ReasonExhausted},
		{name: "HugeMetadataValues", metadata: map[string]string{"correlation_id": huge, "event_type": huge, "event_version": huge}, uuid: huge, err: permanent, reason: dlq.ReasonPermanent},
		{name: "MetadataKeyWithNULAndNotUTF8", metadata: map[string]string{nul: nul, bad: bad}, err: permanent, reason: dlq.ReasonPermanent},
		{name: "RetryableErrorWithNUL", err: errors.New("bad byte \x00 here"), reason: dlq.ReasonExhausted},
		{name: "PermanentErrorWithNUL", err: retry.Permanent(errors.New("bad byte \x00 here")), reason: dlq.ReasonPermanent},
		{name: "ErrorNotUTF8", err: fmt.Errorf("bad bytes %s", bad), reason: dlq.ReasonExhausted},
		{name: "HugeErrorWithNULs", err: errors.New(strings.Repeat("\x00boom", 1<<18)), reason: dlq.ReasonExhausted},
	}
	for _, in := range inputs {
		t.Run(in.name, func(t *testing.T) {
			t.Parallel()
			bothStores(t, func(t *testing.T, store reviewStore) {
				c, err := consumer.New(consumer.Config{Store: store, Retry: fastPolicy(), Logger: testLogger(t)})
				require.NoError(t, err)
				h := c.WrapConsumer("billing", func(*message.Message) error { return in.err })
				msg := message.NewMessage(cmpOr(in.uuid, watermill.NewUUID()), []byte("payload \x00\xff"))
				msg.Metadata.Set("event_id", "evt-1")
				for k, v := range in.metadata {
					msg.Metadata.Set(k, v)
				}
				deliverUntilAcked(t, h, msg, 3)

				recs, err := store.List(context.Background(), dlq.Filter{})
				require.NoError(t, err)
				require.Len(t, recs, 1)
				d := recs[0]
				require.Equal(t, in.reason, d.Reason)
				require.Equal(t, "billing", d.Consumer)
				require.Equal(t, "evt-1", d.EventID)
				for field, s := range map[string]string{
					"error": d.Error, "message_uuid": d.MessageUUID, "correlation_id": d.CorrelationID,
					"event_type": d.EventType, "event_version": d.EventVersion, "fingerprint": d.Fingerprint,
				} {
					requireStorable(t, field, s)
					require.LessOrEqual(t, len(s), dlq.DefaultMaxErrorLength, "%s is %d bytes", field, len(s))
				}
				require.Equal(t, []byte(msg.Payload), []byte(d.Payload), "the payload is kept byte for byte")
				require.Equal(t, map[string]string(msg.Metadata), d.Metadata, "the metadata is kept byte for byte")
				for _, f := range d.History {
					requireStorable(t, "history", f.Error)
				}
			})
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// TestAConsumerNameNoStoreCanHoldIsRefused: a handler name with a NUL byte or invalid
// UTF-8 made every claim fail (SQLSTATE 22021) and its messages loop; it is refused
// when the handler is registered, naming the rule, and a handler name that reaches
// the stack at message time all the same dead-letters its messages instead.
func TestAConsumerNameNoStoreCanHoldIsRefused(t *testing.T) {
	t.Parallel()

	for _, name := range []string{"billing\x00", "billing\xff", "", "  ", "bill\ning", strings.Repeat("b", 201)} {
		t.Run(fmt.Sprintf("%q", name), func(t *testing.T) {
			t.Parallel()
			c, err := consumer.New(consumer.Config{Store: sqliteStore(t), Retry: fastPolicy()})
			require.NoError(t, err)
			for what, register := range map[string]func(){
				"Wrap":         func() { c.Wrap(name, func(*message.Message) ([]*message.Message, error) { return nil, nil }) },
				"WrapConsumer": func() { c.WrapConsumer(name, func(*message.Message) error { return nil }) },
			} {
				var got any
				func() {
					defer func() { got = recover() }()
					register()
				}()
				require.NotNil(t, got, "%s accepted the name", what)
				perr, ok := got.(error)
				require.True(t, ok, "%s panicked with %T, not an error", what, got)
				require.ErrorIs(t, perr, dedup.ErrInvalidConsumer)
				require.ErrorContains(t, perr, "a consumer name must be 1 to 200 bytes of valid UTF-8")
			}
		})
	}

	t.Run("HandlerNameAtMessageTime", func(t *testing.T) {
		t.Parallel()
		bothStores(t, func(t *testing.T, store reviewStore) {
			// The stack assembled by hand without a Consumer: the Watermill handler
			// name, read at message time, is the consumer name.
			dl, err := middleware.DeadLetter(middleware.DeadLetterConfig{Store: store, Policy: fastPolicy(), Logger: testLogger(t)})
			require.NoError(t, err)
			dd, err := middleware.Dedup(middleware.DedupConfig{Store: store, Logger: testLogger(t)})
			require.NoError(t, err)
			var ran atomic.Bool
			h := dl(dd(func(*message.Message) ([]*message.Message, error) { ran.Store(true); return nil, nil }))
			bus := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 10, Persistent: true}, watermill.NopLogger{})
			t.Cleanup(func() { _ = bus.Close() })
			runRouter(t, func(r *message.Router) {
				r.AddConsumerHandler("billing\x00\xff", "orders", bus, func(msg *message.Message) error { _, err := h(msg); return err })
			})
			require.NoError(t, bus.Publish("orders", newMessage("evt-1", "{}")))
			require.Eventually(t, func() bool {
				recs, err := store.List(context.Background(), dlq.Filter{})
				return err == nil && len(recs) == 1
			}, 10*time.Second, 5*time.Millisecond)
			require.False(t, ran.Load())
			recs, err := store.List(context.Background(), dlq.Filter{})
			require.NoError(t, err)
			require.Len(t, recs, 1)
			require.Equal(t, dlq.ReasonMalformed, recs[0].Reason)
			require.Equal(t, "billing\uFFFD\uFFFD", recs[0].Consumer)
			require.Contains(t, recs[0].Error, "invalid consumer name")
		})
	})

	t.Run("MiddlewareConfig", func(t *testing.T) {
		t.Parallel()
		store := sqliteStore(t)
		_, err := middleware.DeadLetter(middleware.DeadLetterConfig{Store: store, Consumer: "a\x00"})
		require.ErrorIs(t, err, dedup.ErrInvalidConsumer)
		require.ErrorContains(t, err, "DeadLetterConfig.Consumer")
		_, err = middleware.Dedup(middleware.DedupConfig{Store: store, Consumer: "a\xff"})
		require.ErrorIs(t, err, dedup.ErrInvalidConsumer)
		require.ErrorContains(t, err, "DedupConfig.Consumer")
		_, err = middleware.CrashGuard(middleware.CrashGuardConfig{Store: store, Consumer: " "})
		require.ErrorIs(t, err, dedup.ErrInvalidConsumer)
		require.ErrorContains(t, err, "CrashGuardConfig.Consumer")
	})
}

// TestKeysEveryStoreCanHold: an event ID of white space only is as unusable as an
// empty one, and whatever a custom KeyFunc returns is checked like the default's.
func TestKeysEveryStoreCanHold(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name    string
		keyFunc dedup.KeyFunc
		id      string
	}{
		{name: "WhiteSpaceEventID", id: " \t "},
		{name: "KeyFuncReturnsNUL", keyFunc: func(*message.Message) (string, error) { return "evt\x00", nil }},
		{name: "KeyFuncReturnsInvalidUTF8", keyFunc: func(*message.Message) (string, error) { return "evt\xff", nil }},
		{name: "KeyFuncReturnsHugeID", keyFunc: func(*message.Message) (string, error) { return strings.Repeat("e", 1<<16), nil }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			bothStores(t, func(t *testing.T, store reviewStore) {
				c, err := consumer.New(consumer.Config{Store: store, Retry: fastPolicy(), KeyFunc: tt.keyFunc, Logger: testLogger(t)})
				require.NoError(t, err)
				var ran bool
				h := c.WrapConsumer("billing", func(*message.Message) error { ran = true; return nil })
				deliverUntilAcked(t, h, newMessage(cmpOr(tt.id, "evt-1"), "{}"), 1)
				require.False(t, ran, "the handler never runs without a usable key")
				recs, err := store.List(context.Background(), dlq.Filter{})
				require.NoError(t, err)
				require.Len(t, recs, 1)
				require.Equal(t, dlq.ReasonMalformed, recs[0].Reason)
				require.True(t, strings.HasPrefix(recs[0].EventID, dlq.DerivedEventIDPrefix), recs[0].EventID)
				require.Contains(t, recs[0].Error, "invalid event ID")
			})
		})
	}
}

// refusingStore hands its first dead letter to PostgreSQL with a NUL byte in a text
// field, as a field made storable by nobody would reach it.
type refusingStore struct {
	*postgres.Store
	refused atomic.Bool
}

func (s *refusingStore) Put(ctx context.Context, d *dlq.DeadLetter) (bool, error) {
	if s.refused.CompareAndSwap(false, true) {
		bad := *d
		bad.EventType = "order\x00placed"
		return s.Store.Put(ctx, &bad)
	}
	return s.Store.Put(ctx, d)
}

// TestADeadLetterTheStoreRefusesIsKeptReduced: when PostgreSQL refuses a dead letter
// for its data (SQLSTATE 22021 here), that is the message's fault, not an outage: the
// message is dead-lettered in reduced form and acked, not handed back forever.
func TestADeadLetterTheStoreRefusesIsKeptReduced(t *testing.T) {
	t.Parallel()
	pg, _ := testdb.Store(t)
	store := &refusingStore{Store: pg}
	c, err := consumer.New(consumer.Config{Store: store, Retry: fastPolicy(), Logger: testLogger(t)})
	require.NoError(t, err)
	h := c.WrapConsumer("billing", func(*message.Message) error { return retry.Permanent(errBoom) })
	msg := newMessage("evt-1", "a payload of 24 bytes...")
	msg.Metadata.Set("correlation_id", "corr-1")
	require.Equal(t, 1, deliverUntilAcked(t, h, msg, 3), "acked on its first delivery")
	require.True(t, store.refused.Load())

	recs, err := store.List(context.Background(), dlq.Filter{})
	require.NoError(t, err)
	require.Len(t, recs, 1)
	d := recs[0]
	require.True(t, d.Reduced(), "metadata %v", d.Metadata)
	require.Equal(t, dlq.ReasonPermanent, d.Reason)
	require.Equal(t, "billing", d.Consumer)
	require.Equal(t, "evt-1", d.EventID)
	require.Equal(t, "corr-1", d.CorrelationID)
	require.Empty(t, d.Payload)
	sum := sha256.Sum256(msg.Payload)
	require.Contains(t, d.Metadata[dlq.ReducedKey], fmt.Sprintf("payload 24 bytes, sha256 %x", sum))
	require.Contains(t, d.Error, "kept in reduced form")
	require.Contains(t, d.Error, "22021")
	require.Contains(t, d.Error, "boom", "the last error is kept")
}
