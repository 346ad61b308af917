// Package bulk is the part of batch handlers (postgres.BatchHandler,
// sqlite.BatchHandler) that both stores share: while a store runs a batch, each batch
// handler enlists its decoded event instead of writing it, and once every event of the
// batch ran, the store has the enlisted events of each handler written in one call,
// isolating the events that make that call fail.
package bulk

import (
	"context"
	"errors"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dedup"
)

// Run collects, during one batch of a store whose transactions are of type Tx, the
// events its batch handlers enlist. It is used by one goroutine at a time: the
// store's, which runs the batch's events one after the other.
type Run[Tx any] struct {
	current *dedup.BatchItem
	writes  []*write[Tx]
	byID    map[*handlerID]*write[Tx]
}

// write is one batch handler's enlisted events.
type write[Tx any] struct {
	fn     func(ctx context.Context, tx Tx, events []any) error
	items  []*dedup.BatchItem
	events []any
}

// handlerID tells batch handlers apart: each has one of its own.
type handlerID struct{ _ byte }

// SetCurrent names the item whose Fn runs now: what a handler enlists is its event.
func (r *Run[Tx]) SetCurrent(it *dedup.BatchItem) { r.current = it }

func (r *Run[Tx]) enlist(id *handlerID, fn func(ctx context.Context, tx Tx, events []any) error, event any) {
	if r.byID == nil {
		r.byID = map[*handlerID]*write[Tx]{}
	}
	w, ok := r.byID[id]
	if !ok {
		w = &write[Tx]{fn: fn}
		r.byID[id] = w
		r.writes = append(r.writes, w)
	}
	w.items = append(w.items, r.current)
	w.events = append(w.events, event)
}

type runKey[Tx any] struct{}

// NewContext returns a copy of ctx that carries r, for the Fn of each item.
func NewContext[Tx any](ctx context.Context, r *Run[Tx]) context.Context {
	return context.WithValue(ctx, runKey[Tx]{}, r)
}

func fromContext[Tx any](ctx context.Context) (*Run[Tx], bool) {
	r, ok := ctx.Value(runKey[Tx]{}).(*Run[Tx])
	return r, ok && r.current != nil
}

// Isolation is what Write needs of the store: a savepoint to try a write in, a way
// back to it, and a way to remove an event's claim when its write failed.
type Isolation[Tx any] interface {
	Savepoint(ctx context.Context) error
	RollbackTo(ctx context.Context) error
	Unclaim(ctx context.Context, key dedup.Key) error
	// TxContext returns ctx with the batch's transaction in it, as the store's
	// TxFromContext reads it.
	TxContext(ctx context.Context) context.Context
}

// Write writes the events each batch handler enlisted: all of a handler's events in
// one call, inside a savepoint. When that call fails, it rolls back to the savepoint
// and writes the events one at a time, each in a savepoint of its own, so that only
// the events whose write fails fail: each is rolled back, its claim removed, and its
// item's Err set to the error; the others stay. Each handler's events cost one call,
// or, when one of them is poison, one more call per event. Write returns an error
// only when the store's own statements fail: the whole batch must fail then.
func (r *Run[Tx]) Write(ctx context.Context, tx Tx, iso Isolation[Tx]) error {
	for _, w := range r.writes {
		if err := iso.Savepoint(ctx); err != nil {
			return err
		}
		if err := w.fn(iso.TxContext(ctx), tx, w.events); err == nil {
			continue
		}
		if err := iso.RollbackTo(ctx); err != nil {
			return err
		}
		for i, it := range w.items {
			if err := iso.Savepoint(ctx); err != nil {
				return err
			}
			werr := w.fn(iso.TxContext(it.Ctx), tx, w.events[i:i+1])
			if werr == nil {
				continue
			}
			if err := iso.RollbackTo(ctx); err != nil {
				return err
			}
			if err := iso.Unclaim(ctx, it.Key); err != nil {
				return err
			}
			it.Err = werr
		}
	}
	return nil
}

// Handler is the body of postgres.BatchHandler and sqlite.BatchHandler: it decodes
// each message's payload from JSON into a T (a payload that does not decode is a
// permanent error), and inside a batch enlists the event for fn, which then receives
// every event of the batch for it at once; outside a batch it calls fn with the one
// event, in the attempt's transaction that txFrom finds (noTx when there is none).
func Handler[Tx, T any](fn func(ctx context.Context, tx Tx, events []T) error,
	txFrom func(context.Context) (Tx, bool), noTx error,
) message.NoPublishHandlerFunc {
	id := &handlerID{}
	write := func(ctx context.Context, tx Tx, events []any) error {
		typed := make([]T, len(events))
		for i, e := range events {
			typed[i] = e.(T)
		}
		return fn(ctx, tx, typed)
	}
	return func(msg *message.Message) error {
		ctx := msg.Context()
		event, err := consumer.Decode[T](msg.Payload)
		if err != nil {
			return err
		}
		if run, ok := fromContext[Tx](ctx); ok {
			run.enlist(id, write, event)
			return nil
		}
		tx, ok := txFrom(ctx)
		if !ok {
			return noTx
		}
		return fn(ctx, tx, []T{event})
	}
}

// FailAll gives err to every item of a batch not already failed by its own handler
// (a conflicting duplicate's report included): the batch did not commit, so none of
// their effects did.
func FailAll(items []*dedup.BatchItem, err error) {
	for _, it := range items {
		if it.Err == nil || errors.As(it.Err, new(*dedup.ConflictingDuplicateError)) {
			it.Err = err
		}
	}
}
