package consumer_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
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
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
	"github.com/idemkit/idem/sqlite"
)

// Three versions of one event, as its producer evolved it. Version 2 renamed and
// restructured the total (a new version, with an upcaster); version 3 replaced the
// decimal string with minor units (another).
type placedV1 struct {
	OrderID    string `json:"order_id"`
	TotalCents int64  `json:"total_cents"`
}

type placedV2 struct {
	OrderID string `json:"order_id"`
	Total   struct {
		Amount   string `json:"amount"` // "12.50"
		Currency string `json:"currency"`
	} `json:"total"`
}

type placedV3 struct {
	OrderID     string `json:"order_id"`
	AmountMinor int64  `json:"amount_minor"`
	Currency    string `json:"currency"`
}

type cancelledV1 struct {
	OrderID string `json:"order_id"`
}

// Every version 1 order was in euros.
func placedV2From1(e placedV1) (placedV2, error) {
	var v2 placedV2
	v2.OrderID = e.OrderID
	v2.Total.Amount = fmt.Sprintf("%d.%02d", e.TotalCents/100, e.TotalCents%100)
	v2.Total.Currency = "EUR"
	return v2, nil
}

func placedV3From2(e placedV2) (placedV3, error) {
	units, cents, ok := strings.Cut(e.Total.Amount, ".")
	u, err1 := strconv.ParseInt(units, 10, 64)
	c, err2 := strconv.ParseInt(cents, 10, 64)
	if !ok || len(cents) != 2 || err1 != nil || err2 != nil {
		return placedV3{}, fmt.Errorf("order %s: amount %q is not a decimal with two places", e.OrderID, e.Total.Amount)
	}
	return placedV3{OrderID: e.OrderID, AmountMinor: u*100 + c, Currency: e.Total.Currency}, nil
}

// versionedEvent returns a message of typ at version (no event_version when version is
// ""), with its event ID.
func versionedEvent(eventID, typ, version, payload string) *message.Message {
	msg := newMessage(eventID, payload)
	msg.Metadata.Set(middleware.EventTypeKey, typ)
	if version != "" {
		msg.Metadata.Set(middleware.EventVersionKey, version)
	}
	return msg
}

func TestVersioned(t *testing.T) {
	t.Parallel()

	// versionedBundle is a billing consumer that knows OrderPlaced version 3, with
	// upcasters from versions 1 and 2, and OrderCancelled version 1.
	type versionedBundle struct {
		*testBundle
		handler   message.NoPublishHandlerFunc
		calls     atomic.Int32
		orderRows string // quoted table name
	}
	setupVersioned := func(t *testing.T, defaultVersion int) *versionedBundle {
		t.Helper()
		b := &versionedBundle{testBundle: setup(t)}
		b.orderRows = pgx.Identifier{b.store.Schema(), "placed"}.Sanitize()
		_, err := b.pool.Exec(context.Background(), "CREATE TABLE "+b.orderRows+" (order_id text NOT NULL, amount_minor bigint NOT NULL, currency text NOT NULL)")
		require.NoError(t, err)
		h, err := consumer.VersionedConsumer(consumer.VersionedConfig{
			Events: []consumer.EventHandler{
				{
					Type:    "OrderPlaced",
					Version: 3,
					Handler: postgres.Handler(func(ctx context.Context, tx pgx.Tx, e placedV3) error {
						b.calls.Add(1)
						_, err := tx.Exec(ctx, "INSERT INTO "+b.orderRows+" VALUES ($1, $2, $3)", e.OrderID, e.AmountMinor, e.Currency)
						return err
					}),
					// In any order: Versioned sorts them.
					Upcasters: []consumer.Upcaster{consumer.Upcast(2, placedV3From2), consumer.Upcast(1, placedV2From1)},
				},
				{
					Type:    "OrderCancelled",
					Version: 1,
					Handler: consumer.JSON(func(ctx context.Context, e cancelledV1) error {
						b.calls.Add(1)
						return nil
					}),
				},
			},
			DefaultVersion: defaultVersion,
		})
		require.NoError(t, err)
		b.handler = b.consumer.WrapConsumer("billing", h)
		return b
	}
	type row struct {
		OrderID     string
		AmountMinor int64
		Currency    string
	}
	rows := func(t *testing.T, b *versionedBundle) []row {
		t.Helper()
		pgRows, err := b.pool.Query(context.Background(), "SELECT order_id, amount_minor, currency FROM "+b.orderRows+" ORDER BY order_id")
		require.NoError(t, err)
		got, err := pgx.CollectRows(pgRows, pgx.RowToStructByPos[row])
		require.NoError(t, err)
		return got
	}

	t.Run("CurrentVersionIsHandled", func(t *testing.T) {
		t.Parallel()
		b := setupVersioned(t, 0)
		require.NoError(t, deliver(b.handler, versionedEvent("evt-3", "OrderPlaced", "3", `{"order_id":"A-3","amount_minor":990,"currency":"USD"}`)))
		require.Equal(t, []row{{"A-3", 990, "USD"}}, rows(t, b))
		require.Zero(t, b.deadLetters(t))
	})

	t.Run("OldVersionIsUpcastAndHandledOnce", func(t *testing.T) {
		t.Parallel()
		b := setupVersioned(t, 0)
		msg := versionedEvent("evt-1", "OrderPlaced", "1", `{"order_id":"A-1","total_cents":1250}`)
		require.NoError(t, b.handler(msg))
		require.NoError(t, b.handler(msg.Copy()), "a redelivery")
		require.Equal(t, int32(1), b.calls.Load(), "upcast and handled once; the redelivery is a duplicate")
		require.Equal(t, []row{{"A-1", 1250, "EUR"}}, rows(t, b), "through version 2 to version 3")
		require.Equal(t, `{"order_id":"A-1","total_cents":1250}`, string(msg.Payload), "the delivered message stays as it came")
		require.Equal(t, "1", msg.Metadata.Get(middleware.EventVersionKey))
		require.Zero(t, b.deadLetters(t))

		require.NoError(t, deliver(b.handler, versionedEvent("evt-2", "OrderPlaced", "2", `{"order_id":"A-2","total":{"amount":"7.05","currency":"CHF"}}`)))
		require.Equal(t, []row{{"A-1", 1250, "EUR"}, {"A-2", 705, "CHF"}}, rows(t, b), "version 2 joins the chain half-way")
	})

	t.Run("HandlerSeesTheVersionItReads", func(t *testing.T) {
		t.Parallel()
		b := setupVersioned(t, 0)
		var seen []string
		var mu sync.Mutex
		h, err := consumer.VersionedConsumer(consumer.VersionedConfig{Events: []consumer.EventHandler{{
			Type: "OrderPlaced", Version: 2,
			Handler: func(msg *message.Message) error {
				mu.Lock()
				defer mu.Unlock()
				seen = append(seen, msg.Metadata.Get(middleware.EventVersionKey)+" "+msg.Metadata.Get(dedup.MetadataKey)+" "+string(msg.Payload))
				return nil
			},
			Upcasters: []consumer.Upcaster{consumer.Upcast(1, placedV2From1)},
		}}})
		require.NoError(t, err)
		wrapped := b.consumer.WrapConsumer("billing", h)
		require.NoError(t, deliver(wrapped, versionedEvent("evt-1", "OrderPlaced", "1", `{"order_id":"A-1","total_cents":5}`)))
		require.Equal(t, []string{`2 evt-1 {"order_id":"A-1","total":{"amount":"0.05","currency":"EUR"}}`}, seen,
			"the copy carries version 2, the same event ID and the upcast payload")
	})

	t.Run("DuplicateIsSkippedWhateverItsVersion", func(t *testing.T) {
		t.Parallel()
		b := setupVersioned(t, 0)
		require.NoError(t, deliver(b.handler, versionedEvent("evt-1", "OrderPlaced", "1", `{"order_id":"A-1","total_cents":1250}`)))
		// The same event again, republished by a newer build of the producer.
		require.NoError(t, deliver(b.handler, versionedEvent("evt-1", "OrderPlaced", "3", `{"order_id":"A-1","amount_minor":1250,"currency":"EUR"}`)))
		require.Equal(t, int32(1), b.calls.Load(), "the event ID is the dedup key, not the version")
		require.Len(t, rows(t, b), 1)
	})

	t.Run("UnknownVersionIsDeadLetteredAsPermanent", func(t *testing.T) {
		t.Parallel()
		b := setupVersioned(t, 0)
		payload := `{"order_id":"A-4","amount":{"minor":1}}`
		require.NoError(t, deliver(b.handler, versionedEvent("evt-4", "OrderPlaced", "4", payload)), "dead-lettered and acked")
		require.Zero(t, b.calls.Load())
		dl := b.deadLetter(t, "billing", "evt-4")
		require.Equal(t, string(dlq.ReasonPermanent), dl.Reason)
		require.Equal(t, 1, dl.Attempts, "no retries")
		require.Equal(t, `OrderPlaced event_version "4": this handler knows versions 1, 2 and 3 only`, dl.Error)
		require.Equal(t, payload, string(dl.Payload), "kept byte for byte, for a replay")
		d, err := b.store.DeadLetter(context.Background(), "billing", "evt-4")
		require.NoError(t, err)
		require.Equal(t, "OrderPlaced", d.EventType, "the dead letter records the event type")
		require.Equal(t, "4", d.EventVersion, "and the version")
	})

	t.Run("UnknownVersionIsAppliedOnceReplayedToANewerBuild", func(t *testing.T) {
		t.Parallel()
		b := setupVersioned(t, 0)
		msg := versionedEvent("evt-4", "OrderPlaced", "4", `{"order_id":"A-4","amount_minor":1,"currency":"EUR"}`)
		require.NoError(t, deliver(b.handler, msg))
		require.Equal(t, 1, b.deadLetters(t), "this build does not know version 4")

		// The next build knows version 4 (here, the same shape as version 3), and the
		// dead letter is replayed to it with its event ID.
		newer, err := consumer.VersionedConsumer(consumer.VersionedConfig{Events: []consumer.EventHandler{{
			Type: "OrderPlaced", Version: 4,
			Handler: postgres.Handler(func(ctx context.Context, tx pgx.Tx, e placedV3) error {
				b.calls.Add(1)
				_, err := tx.Exec(ctx, "INSERT INTO "+b.orderRows+" VALUES ($1, $2, $3)", e.OrderID, e.AmountMinor, e.Currency)
				return err
			}),
			Upcasters: []consumer.Upcaster{
				consumer.Upcast(1, placedV2From1), consumer.Upcast(2, placedV3From2),
				consumer.Upcast(3, func(e placedV3) (placedV3, error) { return e, nil }),
			},
		}}})
		require.NoError(t, err)
		replayed := b.consumer.WrapConsumer("billing", newer)
		require.NoError(t, deliver(replayed, msg))
		require.NoError(t, deliver(replayed, msg), "replayed twice")
		require.Equal(t, int32(1), b.calls.Load())
		require.Equal(t, []row{{"A-4", 1, "EUR"}}, rows(t, b))
	})

	t.Run("UnknownTypeIsDeadLetteredAsPermanent", func(t *testing.T) {
		t.Parallel()
		b := setupVersioned(t, 0)
		require.NoError(t, deliver(b.handler, versionedEvent("evt-5", "OrderShipped", "1", `{}`)))
		require.Zero(t, b.calls.Load())
		dl := b.deadLetter(t, "billing", "evt-5")
		require.Equal(t, string(dlq.ReasonPermanent), dl.Reason)
		require.Equal(t, `event_type "OrderShipped" (event_version "1"): this handler knows OrderCancelled (version 1) and OrderPlaced (versions 1, 2 and 3) only`, dl.Error)
	})

	t.Run("OldVersionThatDoesNotDecodeIsPermanent", func(t *testing.T) {
		t.Parallel()
		b := setupVersioned(t, 0)
		payload := `{"order_id":"A-1","total_cents":"twelve"}`
		require.NoError(t, deliver(b.handler, versionedEvent("evt-1", "OrderPlaced", "1", payload)))
		require.Zero(t, b.calls.Load())
		dl := b.deadLetter(t, "billing", "evt-1")
		require.Equal(t, string(dlq.ReasonPermanent), dl.Reason)
		require.Equal(t, 1, dl.Attempts, "no retries")
		require.Contains(t, dl.Error, "upcast OrderPlaced from version 1 to 3: consumer: decode payload as consumer_test.placedV1")
		require.Equal(t, payload, string(dl.Payload))
	})

	t.Run("UpcasterErrorIsPermanent", func(t *testing.T) {
		t.Parallel()
		b := setupVersioned(t, 0)
		require.NoError(t, deliver(b.handler, versionedEvent("evt-2", "OrderPlaced", "2", `{"order_id":"A-2","total":{"amount":"7,05","currency":"CHF"}}`)))
		require.Zero(t, b.calls.Load())
		dl := b.deadLetter(t, "billing", "evt-2")
		require.Equal(t, string(dlq.ReasonPermanent), dl.Reason)
		require.Equal(t, 1, dl.Attempts)
		require.Equal(t, `upcast OrderPlaced from version 2 to 3: from version 2: order A-2: amount "7,05" is not a decimal with two places`, dl.Error)
	})

	t.Run("MissingVersionIsDefaultVersion", func(t *testing.T) {
		t.Parallel()
		b := setupVersioned(t, 0)
		require.NoError(t, deliver(b.handler, versionedEvent("evt-1", "OrderPlaced", "", `{"order_id":"A-1","total_cents":100}`)))
		require.Equal(t, []row{{"A-1", 100, "EUR"}}, rows(t, b), "no event_version: version 1 by default, upcast")

		b = setupVersioned(t, 3)
		require.NoError(t, deliver(b.handler, versionedEvent("evt-1", "OrderPlaced", "", `{"order_id":"A-1","amount_minor":100,"currency":"SEK"}`)))
		require.Equal(t, []row{{"A-1", 100, "SEK"}}, rows(t, b), "DefaultVersion 3")

		b = setupVersioned(t, -1)
		require.NoError(t, deliver(b.handler, versionedEvent("evt-1", "OrderPlaced", "", `{"order_id":"A-1","total_cents":100}`)))
		require.Zero(t, b.calls.Load())
		dl := b.deadLetter(t, "billing", "evt-1")
		require.Equal(t, string(dlq.ReasonPermanent), dl.Reason)
		require.Equal(t, "OrderPlaced event_version missing (no default version): this handler knows versions 1, 2 and 3 only", dl.Error)
	})

	t.Run("AddedFieldIsCompatible", func(t *testing.T) {
		t.Parallel()
		b := setupVersioned(t, 0)
		// A producer added a field and called it version 3.1, or kept version 3.
		require.NoError(t, deliver(b.handler, versionedEvent("evt-1", "OrderPlaced", "3.1", `{"order_id":"A-1","amount_minor":1,"currency":"EUR","coupon":"SPRING"}`)))
		require.NoError(t, deliver(b.handler, versionedEvent("evt-2", "OrderPlaced", "3", `{"order_id":"A-2","amount_minor":2,"currency":"EUR","coupon":"SPRING"}`)))
		// A version 1 consumer reads a version 1 payload with a field it never knew.
		require.NoError(t, deliver(b.handler, versionedEvent("evt-3", "OrderPlaced", "1", `{"order_id":"A-3","total_cents":3,"customer":"ada"}`)))
		require.Equal(t, []row{{"A-1", 1, "EUR"}, {"A-2", 2, "EUR"}, {"A-3", 3, "EUR"}}, rows(t, b))
		require.Zero(t, b.deadLetters(t))
	})
}

// TestVersionedReadsEventVersion checks how event_version is read, without a store:
// the dispatcher alone, in front of a handler that accepts everything.
func TestVersionedReadsEventVersion(t *testing.T) {
	t.Parallel()
	h, err := consumer.VersionedConsumer(consumer.VersionedConfig{Events: []consumer.EventHandler{
		{Type: "OrderPlaced", Version: 1, Handler: func(*message.Message) error { return nil }},
	}})
	require.NoError(t, err)
	for _, tc := range []struct {
		eventType, version string
		want               string // the error's text; "" when handled
	}{
		{"OrderPlaced", "1", ""},
		{"OrderPlaced", "1.3", ""}, // a minor version adds fields only
		{"OrderPlaced", "1.0", ""},
		{"OrderPlaced", "", ""}, // DefaultVersion defaults to 1
		{"OrderPlaced", "2", `OrderPlaced event_version "2": this handler knows version 1 only`},
		{"OrderPlaced", "2.0", `OrderPlaced event_version "2.0": this handler knows version 1 only`},
		{"OrderPlaced", "0", `OrderPlaced event_version "0" is not a version number: this handler knows version 1 only`},
		{"OrderPlaced", "v1", `OrderPlaced event_version "v1" is not a version number: this handler knows version 1 only`},
		{"OrderPlaced", "01", `OrderPlaced event_version "01" is not a version number: this handler knows version 1 only`},
		{"OrderPlaced", "+1", `OrderPlaced event_version "+1" is not a version number: this handler knows version 1 only`},
		{"OrderPlaced", "1.", `OrderPlaced event_version "1." is not a version number: this handler knows version 1 only`},
		{"OrderPlaced", "1.x", `OrderPlaced event_version "1.x" is not a version number: this handler knows version 1 only`},
		{"OrderPlaced", " 1", `OrderPlaced event_version " 1" is not a version number: this handler knows version 1 only`},
		{"OrderPlaced", "99999999999999999999", `OrderPlaced event_version "99999999999999999999" is not a version number: this handler knows version 1 only`},
		{"OrderCancelled", "1", `event_type "OrderCancelled" (event_version "1"): this handler knows OrderPlaced (version 1) only`},
		{"", "1", `event_type missing (event_version "1"): this handler knows OrderPlaced (version 1) only`},
		{"orderplaced", "1", `event_type "orderplaced" (event_version "1"): this handler knows OrderPlaced (version 1) only`},
	} {
		t.Run(tc.eventType+"@"+tc.version, func(t *testing.T) {
			t.Parallel()
			err := h(versionedEvent("evt-1", tc.eventType, tc.version, `{}`))
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			require.EqualError(t, err, tc.want)
			require.ErrorIs(t, err, retry.ErrPermanent)
			require.Equal(t, retry.ClassPermanent, retry.Classify(err))
			var unknown *consumer.UnknownEventError
			require.ErrorAs(t, err, &unknown)
			require.Equal(t, tc.eventType, unknown.Type)
			require.Equal(t, tc.version, unknown.Version)
			require.Equal(t, map[string][]int{"OrderPlaced": {1}}, unknown.Known)
		})
	}

	t.Run("MissingVersionTakenAsAVersionNotKnown", func(t *testing.T) {
		t.Parallel()
		h, err := consumer.VersionedConsumer(consumer.VersionedConfig{Events: []consumer.EventHandler{
			{Type: "OrderPlaced", Version: 2, Handler: func(*message.Message) error { return nil }},
		}})
		require.NoError(t, err)
		err = h(versionedEvent("evt-1", "OrderPlaced", "", `{}`))
		require.EqualError(t, err, "OrderPlaced event_version missing (taken as 1): this handler knows version 2 only")
		require.ErrorIs(t, err, retry.ErrPermanent)
	})
}

func TestVersionedConfigIsValidated(t *testing.T) {
	t.Parallel()
	noop := func(*message.Message) error { return nil }
	produce := func(*message.Message) ([]*message.Message, error) { return nil, nil }
	type placedV2b struct{ OrderID string }
	for _, tc := range []struct {
		name string
		cfg  consumer.VersionedConfig
		want string
	}{
		{"NoEvents", consumer.VersionedConfig{}, "consumer: VersionedConfig.Events is required"},
		{"NoType", consumer.VersionedConfig{Events: []consumer.EventHandler{{Version: 1, Handler: noop}}},
			"consumer: VersionedConfig.Events[0].Type is required"},
		{"NoCurrentVersion", consumer.VersionedConfig{Events: []consumer.EventHandler{{Type: "OrderPlaced", Handler: noop}}},
			"consumer: VersionedConfig.Events[0].Version is required: the version of OrderPlaced that its handler reads, 1 or more; got 0"},
		{"NoHandler", consumer.VersionedConfig{Events: []consumer.EventHandler{{Type: "OrderPlaced", Version: 1}}},
			"consumer: VersionedConfig.Events[0].Handler is required: the handler of OrderPlaced version 1"},
		{"BothHandlers", consumer.VersionedConfig{Events: []consumer.EventHandler{{Type: "OrderPlaced", Version: 1, Handler: noop, ProducingHandler: produce}}},
			"consumer: VersionedConfig.Events[0]: set Handler or ProducingHandler, not both"},
		{"ProducingHandlerWithoutPublisher", consumer.VersionedConfig{Events: []consumer.EventHandler{{Type: "OrderPlaced", Version: 1, ProducingHandler: produce}}},
			"consumer: VersionedConfig.Events[0].ProducingHandler: VersionedConsumer cannot produce messages"},
		{"DuplicateVersion", consumer.VersionedConfig{Events: []consumer.EventHandler{
			{Type: "OrderPlaced", Version: 1, Handler: noop}, {Type: "OrderCancelled", Version: 1, Handler: noop}, {Type: "OrderPlaced", Version: 1, Handler: noop},
		}}, "consumer: VersionedConfig.Events[2].Version: OrderPlaced version 1 is registered twice, first by Events[0].Version"},
		{"VersionHandledAndUpcast", consumer.VersionedConfig{Events: []consumer.EventHandler{
			{Type: "OrderPlaced", Version: 1, Handler: noop},
			{Type: "OrderPlaced", Version: 2, Handler: noop, Upcasters: []consumer.Upcaster{consumer.Upcast(1, placedV2From1)}},
		}}, "consumer: VersionedConfig.Events[1].Upcasters[0]: OrderPlaced version 1 is registered twice, first by Events[0].Version"},
		{"DuplicateUpcaster", consumer.VersionedConfig{Events: []consumer.EventHandler{
			{Type: "OrderPlaced", Version: 2, Handler: noop, Upcasters: []consumer.Upcaster{consumer.Upcast(1, placedV2From1), consumer.Upcast(1, placedV2From1)}},
		}}, "consumer: VersionedConfig.Events[0].Upcasters[1]: OrderPlaced version 1 is registered twice, first by Events[0].Upcasters[0]"},
		{"ChainWithAGap", consumer.VersionedConfig{Events: []consumer.EventHandler{
			{Type: "OrderPlaced", Version: 3, Handler: noop, Upcasters: []consumer.Upcaster{consumer.Upcast(1, placedV2From1)}},
		}}, "consumer: VersionedConfig.Events[0].Upcasters: the chain from OrderPlaced version 1 to 3 has a gap: no upcaster from version 2"},
		{"ChainWithAGapInside", consumer.VersionedConfig{Events: []consumer.EventHandler{
			{Type: "OrderPlaced", Version: 4, Handler: noop, Upcasters: []consumer.Upcaster{
				consumer.Upcast(3, func(e placedV3) (placedV3, error) { return e, nil }), consumer.Upcast(1, placedV2From1),
			}},
		}}, "consumer: VersionedConfig.Events[0].Upcasters: the chain from OrderPlaced version 1 to 4 has a gap: no upcaster from version 2"},
		{"ChainOfMismatchedTypes", consumer.VersionedConfig{Events: []consumer.EventHandler{
			{Type: "OrderPlaced", Version: 3, Handler: noop, Upcasters: []consumer.Upcaster{
				consumer.Upcast(1, placedV2From1), consumer.Upcast(2, func(e placedV2b) (placedV3, error) { return placedV3{}, nil }),
			}},
		}}, "consumer: VersionedConfig.Events[0].Upcasters: the upcaster from OrderPlaced version 1 returns consumer_test.placedV2, but the upcaster from version 2 takes consumer_test.placedV2b"},
		{"UpcasterFromTheCurrentVersion", consumer.VersionedConfig{Events: []consumer.EventHandler{
			{Type: "OrderPlaced", Version: 2, Handler: noop, Upcasters: []consumer.Upcaster{consumer.Upcast(2, placedV3From2)}},
		}}, "consumer: VersionedConfig.Events[0].Upcasters[0] upcasts OrderPlaced from version 2, which is not between 1 and Events[0].Version - 1 (1)"},
		{"ZeroUpcaster", consumer.VersionedConfig{Events: []consumer.EventHandler{
			{Type: "OrderPlaced", Version: 2, Handler: noop, Upcasters: []consumer.Upcaster{{}}},
		}}, "consumer: VersionedConfig.Events[0].Upcasters[0] is the zero Upcaster: make it with consumer.Upcast"},
		{"DefaultVersionBelowMinusOne", consumer.VersionedConfig{DefaultVersion: -2, Events: []consumer.EventHandler{{Type: "OrderPlaced", Version: 1, Handler: noop}}},
			"consumer: VersionedConfig.DefaultVersion must be 1 or more, or -1 for none; got -2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := consumer.VersionedConsumer(tc.cfg)
			require.ErrorContains(t, err, tc.want)
		})
	}

	t.Run("VersionedTakesProducingHandlers", func(t *testing.T) {
		t.Parallel()
		_, err := consumer.Versioned(consumer.VersionedConfig{Events: []consumer.EventHandler{
			{Type: "OrderPlaced", Version: 1, ProducingHandler: produce}, {Type: "OrderCancelled", Version: 1, Handler: noop},
		}})
		require.NoError(t, err)
	})
}

// TestVersionedOnARouter registers versioned handlers on a Watermill router over
// gochannel: one that produces a message for every order placed, in any version, and
// one that consumes what it produced.
func TestVersionedOnARouter(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pubSub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	t.Cleanup(func() { _ = pubSub.Close() })

	invoice, err := consumer.Versioned(consumer.VersionedConfig{Events: []consumer.EventHandler{{
		Type: "OrderPlaced", Version: 2,
		ProducingHandler: func(msg *message.Message) ([]*message.Message, error) {
			e, err := consumer.Decode[placedV2](msg.Payload)
			if err != nil {
				return nil, err
			}
			out := message.NewMessage(watermill.NewUUID(), []byte(e.OrderID+" "+e.Total.Amount+" "+e.Total.Currency))
			out.Metadata.Set(middleware.EventTypeKey, "InvoiceIssued")
			out.Metadata.Set(middleware.EventVersionKey, "1")
			return []*message.Message{out}, nil
		},
		Upcasters: []consumer.Upcaster{consumer.Upcast(1, placedV2From1)},
	}}})
	require.NoError(t, err)
	record, err := consumer.VersionedConsumer(consumer.VersionedConfig{Events: []consumer.EventHandler{{
		Type: "InvoiceIssued", Version: 1,
		Handler: func(msg *message.Message) error { return b.effect(msg.Context(), msg) },
	}}})
	require.NoError(t, err)

	var mu sync.Mutex
	acked := map[string]int{}
	runRouter(t, func(r *message.Router) {
		// Outside idem's stack: counts the deliveries each handler acked.
		r.AddMiddleware(func(h message.HandlerFunc) message.HandlerFunc {
			return func(msg *message.Message) ([]*message.Message, error) {
				produced, err := h(msg)
				if err == nil {
					mu.Lock()
					acked[message.HandlerNameFromCtx(msg.Context())]++
					mu.Unlock()
				}
				return produced, err
			}
		})
		b.consumer.AddHandler(r, "invoicing", "orders", pubSub, "invoices", pubSub, invoice)
		b.consumer.AddConsumerHandler(r, "ledger", "invoices", pubSub, record)
	})

	for _, msg := range []*message.Message{
		versionedEvent("evt-1", "OrderPlaced", "1", `{"order_id":"A-1","total_cents":1250}`),
		versionedEvent("evt-2", "OrderPlaced", "2", `{"order_id":"A-2","total":{"amount":"3.00","currency":"USD"}}`),
		versionedEvent("evt-1", "OrderPlaced", "1", `{"order_id":"A-1","total_cents":1250}`), // a copy
		versionedEvent("evt-3", "OrderPlaced", "3", `{}`),                                    // from a newer producer
	} {
		require.NoError(t, pubSub.Publish("orders", msg))
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return acked["invoicing"] == 4 && acked["ledger"] == 2
	}, 10*time.Second, 5*time.Millisecond)
	require.Equal(t, 1, b.effectsOf(t, dedup.ProducedEventID(dedupKey("invoicing", "evt-1"), 0)), "version 1 upcast, invoiced once")
	require.Equal(t, 1, b.effectsOf(t, dedup.ProducedEventID(dedupKey("invoicing", "evt-2"), 0)))
	require.Equal(t, 2, b.count(t, "SELECT count(*) FROM "+b.effects+" WHERE note IN ('A-1 12.50 EUR', 'A-2 3.00 USD')"))
	require.Equal(t, string(dlq.ReasonPermanent), b.deadLetter(t, "invoicing", "evt-3").Reason)
	require.Equal(t, 1, b.deadLetters(t))
}

// TestVersionedWithSQLite runs the dispatcher in front of sqlite.Handler, per version,
// on the embedded store.
func TestVersionedWithSQLite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "idem.db"), sqlite.Config{Migrate: true})
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	_, err = store.DB().ExecContext(ctx, "CREATE TABLE placed (order_id TEXT NOT NULL, amount TEXT NOT NULL)")
	require.NoError(t, err)
	c, err := consumer.New(consumer.Config{Store: store, Retry: fastPolicy(), Logger: testLogger(t)})
	require.NoError(t, err)
	h, err := consumer.VersionedConsumer(consumer.VersionedConfig{Events: []consumer.EventHandler{{
		Type: "OrderPlaced", Version: 2,
		Handler: sqlite.Handler(func(ctx context.Context, tx *sql.Tx, e placedV2) error {
			_, err := tx.ExecContext(ctx, "INSERT INTO placed VALUES ($1, $2)", e.OrderID, e.Total.Amount+" "+e.Total.Currency)
			return err
		}),
		Upcasters: []consumer.Upcaster{consumer.Upcast(1, placedV2From1)},
	}}})
	require.NoError(t, err)
	wrapped := c.WrapConsumer("billing", h)
	msg := versionedEvent("evt-1", "OrderPlaced", "1", `{"order_id":"A-1","total_cents":1250}`)
	require.NoError(t, deliver(wrapped, msg))
	require.NoError(t, deliver(wrapped, msg))
	require.NoError(t, deliver(wrapped, versionedEvent("evt-2", "OrderPlaced", "2", "not json")))
	var got []string
	rows, err := store.DB().QueryContext(ctx, "SELECT order_id || ' ' || amount FROM placed")
	require.NoError(t, err)
	for rows.Next() {
		var s string
		require.NoError(t, rows.Scan(&s))
		got = append(got, s)
	}
	require.NoError(t, errors.Join(rows.Err(), rows.Close()))
	require.Equal(t, []string{"A-1 12.50 EUR"}, got)
	d, err := store.DeadLetter(ctx, "billing", "evt-2")
	require.NoError(t, err)
	require.Equal(t, dlq.ReasonPermanent, d.Reason)
	require.Contains(t, d.Error, "decode payload as consumer_test.placedV2")
}

// TestVersionedHandlerPerVersion gives two versions of one type a handler each.
func TestVersionedHandlerPerVersion(t *testing.T) {
	t.Parallel()
	var got []string
	record := func(name string) message.NoPublishHandlerFunc {
		return func(msg *message.Message) error {
			got = append(got, name+" "+msg.Metadata.Get(middleware.EventVersionKey))
			return nil
		}
	}
	h, err := consumer.VersionedConsumer(consumer.VersionedConfig{Events: []consumer.EventHandler{
		{Type: "OrderPlaced", Version: 1, Handler: record("v1")},
		{Type: "OrderPlaced", Version: 3, Handler: record("v3"), Upcasters: []consumer.Upcaster{consumer.Upcast(2, placedV3From2)}},
	}})
	require.NoError(t, err)
	require.NoError(t, h(versionedEvent("evt-1", "OrderPlaced", "1", `{}`)))
	require.NoError(t, h(versionedEvent("evt-2", "OrderPlaced", "2", `{"order_id":"A","total":{"amount":"1.00","currency":"EUR"}}`)))
	require.NoError(t, h(versionedEvent("evt-3", "OrderPlaced", "3", `{}`)))
	require.Equal(t, []string{"v1 1", "v3 3", "v3 3"}, got, "version 2 is upcast to 3; version 1 has a handler of its own")
}
