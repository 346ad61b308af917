package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/retry"
)

// The modules: each owns its tables, and reacts to the others' events through typed
// handlers that see nothing of the database but a Tx.

// Tx is all a module's handler needs from the database: the transaction idem runs the
// attempt in, whose writes commit together with the event's claim. The transactions
// of both stores fit it in three lines (sqliteTx, pgxTx), which is what keeps the
// handlers unchanged from one deployment to the other. The SQL uses $1 placeholders
// and column types that SQLite and PostgreSQL both accept.
type Tx interface {
	Exec(ctx context.Context, query string, args ...any) error
}

// on adapts a module's typed handler to Watermill, as postgres.Handler and
// sqlite.Handler do for one store each: it decodes the payload (consumer.Decode: a
// payload that does not decode is permanent), and runs fn with the attempt's
// transaction. It handles one version of one event type: put it behind idem's version
// dispatch (see readsOnly), and register that through a consumer.Consumer, which
// provides the transaction.
func on[T any](st *storage, fn func(ctx context.Context, tx Tx, event T) ([]*message.Message, error)) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		event, err := consumer.Decode[T](msg.Payload)
		if err != nil {
			return nil, err
		}
		ctx := msg.Context()
		tx, ok := st.txFromContext(ctx)
		if !ok {
			return nil, retry.Infrastructure(errors.New("no idem transaction in the message context: register the handler through consumer.Consumer"))
		}
		return fn(ctx, tx, event)
	}
}

// onEach is [on] for a handler that produces no messages.
func onEach[T any](st *storage, fn func(ctx context.Context, tx Tx, event T) error) message.NoPublishHandlerFunc {
	h := on(st, func(ctx context.Context, tx Tx, event T) ([]*message.Message, error) {
		return nil, fn(ctx, tx, event)
	})
	return func(msg *message.Message) error {
		_, err := h(msg)
		return err
	}
}

// moduleTables are the modules' own tables, beside idem's in the same database: that is
// what lets one transaction hold a handler's writes and the event's claim. No UNIQUE
// constraint on order_id, on purpose: the row counts show that idem, not a constraint,
// kept each effect to one row.
var moduleTables = []struct{ name, ddl string }{
	{"orders", "CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer TEXT NOT NULL, total_cents BIGINT NOT NULL)"},
	{"payments", "CREATE TABLE payments (order_id TEXT NOT NULL, amount_cents BIGINT NOT NULL)"},
	{"notifications", "CREATE TABLE notifications (order_id TEXT NOT NULL, kind TEXT NOT NULL)"},
	{"shipments", "CREATE TABLE shipments (order_id TEXT NOT NULL)"},
}

// orders owns the orders table and announces OrderPlaced. It is not a consumer: it
// writes in a transaction of its own, then publishes.
type orders struct {
	st        *storage
	pub       message.Publisher
	topic     string
	published int // OrderPlaced messages published
}

type order struct {
	id         string
	customer   string
	totalCents int64
}

// Place stores o and announces it. The event is published only after the order's
// transaction committed (publish-after-commit), so no consumer ever hears of an order
// that rolled back. Known gap, kept to show it: a crash between the COMMIT and the
// publish loses the event. outbox.PublishTx would write it in the same transaction.
func (m *orders) Place(ctx context.Context, o order) error {
	if err := m.insert(ctx, o); err != nil {
		return err
	}
	return m.announce(OrderPlaced{OrderID: o.id, Customer: o.customer, TotalCents: o.totalCents})
}

// announce publishes the OrderPlaced of an order. Called again for the same order, as
// a publish retried after a timeout is, it publishes another copy of the same event:
// the same event_id, which every consumer recognises.
func (m *orders) announce(e OrderPlaced) error {
	msg, err := newEvent(orderPlacedV1, orderPlacedID(e.OrderID), e)
	if err != nil {
		return err
	}
	return m.publish(msg)
}

// placeV2 is Place as the next release of orders does it, with OrderPlaced version 2.
func (m *orders) placeV2(ctx context.Context, o order) error {
	if err := m.insert(ctx, o); err != nil {
		return err
	}
	e := orderPlacedV2{OrderID: o.id, Customer: o.customer}
	e.Total.Amount, e.Total.Currency = fmt.Sprintf("%d.%02d", o.totalCents/100, o.totalCents%100), "EUR"
	msg, err := newEvent(schema{"OrderPlaced", 2}, orderPlacedID(o.id), e)
	if err != nil {
		return err
	}
	return m.publish(msg)
}

func (m *orders) insert(ctx context.Context, o order) error {
	err := m.st.inTx(ctx, func(tx Tx) error {
		return tx.Exec(ctx, "INSERT INTO orders (order_id, customer, total_cents) VALUES ($1, $2, $3)", o.id, o.customer, o.totalCents)
	})
	if err != nil {
		return fmt.Errorf("orders: place %s: %w", o.id, err)
	}
	return nil
}

func (m *orders) publish(msg *message.Message) error {
	if err := m.pub.Publish(m.topic, msg); err != nil {
		return fmt.Errorf("orders: publish %s: %w", msg.Metadata.Get(dedup.MetadataKey), err)
	}
	m.published++
	return nil
}

// capturePayment is the payments module's handler of OrderPlaced. It records the
// payment and announces it: idem publishes the PaymentCaptured it returns inside the
// attempt, before the COMMIT of the payment and the event's claim.
//
// The event ID is derived from what happened (this order's payment), never random:
// should that COMMIT fail after the publish, payments runs again on the redelivery and
// publishes again, and the same ID makes the copy a duplicate for shipping.
func capturePayment(ctx context.Context, tx Tx, e OrderPlaced) ([]*message.Message, error) {
	if err := tx.Exec(ctx, "INSERT INTO payments (order_id, amount_cents) VALUES ($1, $2)", e.OrderID, e.TotalCents); err != nil {
		return nil, err
	}
	captured, err := newEvent(paymentCapturedV1, "payment-captured:"+e.OrderID, PaymentCaptured{OrderID: e.OrderID, AmountCents: e.TotalCents})
	if err != nil {
		return nil, err
	}
	return []*message.Message{captured}, nil
}

// queueConfirmation is the notifications module's handler of OrderPlaced: it queues
// the order confirmation in its own table, for a mailer to send. (Calling a mail
// service from the handler instead would not be covered by idem's transaction: pass
// the event ID along as the idempotency key.)
func queueConfirmation(ctx context.Context, tx Tx, e OrderPlaced) error {
	return tx.Exec(ctx, "INSERT INTO notifications (order_id, kind) VALUES ($1, 'order-confirmation')", e.OrderID)
}

// scheduleShipment is the shipping module's handler of PaymentCaptured.
func scheduleShipment(ctx context.Context, tx Tx, e PaymentCaptured) error {
	return tx.Exec(ctx, "INSERT INTO shipments (order_id) VALUES ($1)", e.OrderID)
}

// handlers are the consumers' handlers, each behind idem's version dispatch: today's
// build of every module knows version 1 of the event it reads.
type handlers struct {
	payments                message.HandlerFunc
	notifications, shipping message.NoPublishHandlerFunc
}

// newHandlers puts each module's typed handler behind the dispatch of the one event
// version it reads.
func newHandlers(st *storage) (*handlers, error) {
	var h handlers
	var errs [3]error
	h.payments, errs[0] = consumer.Versioned(readsOnly(orderPlacedV1, consumer.EventHandler{ProducingHandler: on(st, capturePayment)}))
	h.notifications, errs[1] = consumer.VersionedConsumer(readsOnly(orderPlacedV1, consumer.EventHandler{Handler: onEach(st, queueConfirmation)}))
	h.shipping, errs[2] = consumer.VersionedConsumer(readsOnly(paymentCapturedV1, consumer.EventHandler{Handler: onEach(st, scheduleShipment)}))
	if err := errors.Join(errs[:]...); err != nil {
		return nil, err
	}
	return &h, nil
}
