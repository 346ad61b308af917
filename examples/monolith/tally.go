package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Counting what the router did, to know when every delivery has been handled, and
// what idem skipped as duplicates.

// tally counts the deliveries each handler has finished (returned nil: acked), and
// the PaymentCaptured messages payments produced, which shipping has to handle.
type tally struct {
	mu       sync.Mutex
	done     map[string]int64
	produced int64
	want     map[string]int64
	changed  chan struct{}
}

func newTally() *tally {
	return &tally{done: map[string]int64{}, changed: make(chan struct{}, 1)}
}

func (t *tally) middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		produced, err := h(msg)
		if err == nil {
			t.mu.Lock()
			t.done[message.HandlerNameFromCtx(msg.Context())]++
			t.mu.Unlock()
			t.notify()
		}
		return produced, err
	}
}

// publisher counts the messages published through pub: the PaymentCaptured messages
// payments produces (idem publishes them inside the attempt, before its commit).
func (t *tally) publisher(pub message.Publisher) message.Publisher {
	return countingPublisher{Publisher: pub, t: t}
}

type countingPublisher struct {
	message.Publisher
	t *tally
}

func (p countingPublisher) Publish(topic string, msgs ...*message.Message) error {
	if err := p.Publisher.Publish(topic, msgs...); err != nil {
		return err
	}
	p.t.mu.Lock()
	p.t.produced += int64(len(msgs))
	p.t.mu.Unlock()
	p.t.notify()
	return nil
}

func (t *tally) notify() {
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

func (t *tally) expect(want map[string]int64) {
	t.mu.Lock()
	t.want = want
	t.mu.Unlock()
	t.notify()
}

// finished reports whether every handler has handled all it was sent.
func (t *tally) finished() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.want != nil && t.done[payments] >= t.want[payments] &&
		t.done[notifications] >= t.want[notifications] && t.done[shipping] >= t.produced
}

func (t *tally) count(name string) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.done[name]
}

func (t *tally) total() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var n int64
	for _, d := range t.done {
		n += d
	}
	return n
}

func (t *tally) wait(ctx context.Context, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for !t.finished() {
		select {
		case <-t.changed:
		case <-timer.C:
			t.mu.Lock()
			defer t.mu.Unlock()
			return fmt.Errorf("not every delivery was handled within %s (handled %v, expected %v and %d for shipping); rerun with -v", timeout, t.done, t.want, t.produced)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// duplicates counts idem's "duplicate skipped" log records per consumer.
type duplicates struct {
	mu         sync.Mutex
	byConsumer map[string]int64
}

func (d *duplicates) get(name string) int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.byConsumer[name]
}

func (d *duplicates) handler(next slog.Handler) slog.Handler { return &dupHandler{next: next, d: d} }

type dupHandler struct {
	next slog.Handler
	d    *duplicates
}

func (h *dupHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *dupHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "idem: duplicate skipped" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "consumer" {
				h.d.mu.Lock()
				h.d.byConsumer[a.Value.String()]++
				h.d.mu.Unlock()
				return false
			}
			return true
		})
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h *dupHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &dupHandler{next: h.next.WithAttrs(attrs), d: h.d}
}

func (h *dupHandler) WithGroup(name string) slog.Handler {
	return &dupHandler{next: h.next.WithGroup(name), d: h.d}
}
