package middleware

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem/dedup"
)

// MaxBatchSize is the largest BatchConfig.MaxSize [Dedup] accepts.
const MaxBatchSize = 10000

// BatchConfig turns on group commit in [Dedup]: the deliveries of one consumer that
// are in flight at the same time share one transaction of the store (which must
// implement dedup.BatchRunner), one COMMIT for them all instead of one each.
//
// A batch forms by itself: the first delivery to arrive starts one, and while the
// consumer's previous batch is still in its transaction, every delivery that arrives
// joins it, up to MaxSize. When the previous batch has committed, the new one runs,
// after waiting up to MaxWait more for deliveries when MaxWait is set. So a consumer
// with one delivery in flight runs batches of one, without waiting, and one with
// many in flight fills them.
//
// In a batch every event keeps its own fate: its handler runs in a savepoint of its
// own, and a failing or panicking event rolls back alone, its claim with it, and is
// retried or dead-lettered by the usual rules, while its neighbours commit. Every
// delivery is acked only after the batch's COMMIT; a COMMIT that fails, or whose
// outcome is unknown, hands every delivery of the batch back to the broker as not
// their fault. The handlers of a batch run one at a time, on the batch's one
// connection.
type BatchConfig struct {
	// MaxSize is the most events one transaction holds. Defaults to 0: batching off.
	// On PostgreSQL, keep it at most 64 when handlers write: each writing event uses a
	// subtransaction, and past 64 in one transaction PostgreSQL's snapshots slow
	// down; batch handlers (postgres.BatchHandler) write a whole batch in one.
	MaxSize int
	// MaxWait is how long a batch whose turn has come waits for more deliveries
	// before it runs, unless it is full. Defaults to 0: it runs at once, with the
	// deliveries that arrived while the previous batch ran.
	MaxWait time.Duration
	// Transactions is how many batches of one consumer may be in their transactions
	// at the same time, each on a connection of its own: while all are, arriving
	// deliveries gather into the next batch. Defaults to DefaultBatchTransactions.
	Transactions int
}

// DefaultBatchTransactions is BatchConfig.Transactions by default.
const DefaultBatchTransactions = 4

// Validate reports whether c is usable, naming the field that is not.
func (c BatchConfig) Validate() error {
	switch {
	case c.MaxSize < 0 || c.MaxSize > MaxBatchSize:
		return fmt.Errorf("MaxSize must be from 0 (off) to %d, got %d", MaxBatchSize, c.MaxSize)
	case c.MaxWait < 0:
		return fmt.Errorf("MaxWait must not be negative, got %s", c.MaxWait)
	case c.Transactions < 0 || c.Transactions > 1000:
		return fmt.Errorf("Transactions must be from 0 (the default, %d) to 1000, got %d", DefaultBatchTransactions, c.Transactions)
	case c.MaxWait > 0 && c.MaxSize == 0:
		return fmt.Errorf("MaxWait %s is set but MaxSize is 0: set MaxSize to turn batching on", c.MaxWait)
	}
	return nil
}

// batcher gathers the deliveries of one consumer into batches; see BatchConfig.
type batcher struct {
	runner  dedup.BatchRunner
	maxSize int
	maxWait time.Duration
	tracer  trace.Tracer
	sizes   metric.Int64Histogram
	// turn holds a token for each batch of this consumer in its transaction.
	turn chan struct{}

	mu   sync.Mutex
	open *openBatch // the batch deliveries join, nil when none is forming
}

type openBatch struct {
	items []*dedup.BatchItem
	full  chan struct{} // closed when it reached maxSize
	done  chan struct{} // closed when its items are settled
}

func newBatcher(runner dedup.BatchRunner, cfg BatchConfig, tp trace.TracerProvider, mp metric.MeterProvider) (*batcher, error) {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	sizes, err := mp.Meter(instrumentationScope).Int64Histogram("idem.batch.size",
		metric.WithDescription("Events per batch transaction (group commit), duplicates included."),
		metric.WithUnit("{message}"),
		metric.WithExplicitBucketBoundaries(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
	if err != nil {
		return nil, fmt.Errorf("middleware: create idem.batch.size: %w", err)
	}
	return &batcher{
		runner: runner, maxSize: cfg.MaxSize, maxWait: cfg.MaxWait,
		tracer: tp.Tracer(instrumentationScope), sizes: sizes,
		turn: make(chan struct{}, cmp.Or(cfg.Transactions, DefaultBatchTransactions)),
	}, nil
}

// run is Store.Run for one delivery, through the consumer's batches: it returns once
// the batch holding the attempt settled it.
func (b *batcher) run(ctx context.Context, key dedup.Key, fn func(context.Context) error) (bool, error) {
	it := &dedup.BatchItem{Ctx: ctx, Key: key, Fn: fn}
	b.mu.Lock()
	ob := b.open
	leader := ob == nil
	if leader {
		ob = &openBatch{full: make(chan struct{}), done: make(chan struct{})}
		b.open = ob
	}
	ob.items = append(ob.items, it)
	if len(ob.items) >= b.maxSize {
		b.open = nil
		close(ob.full)
	}
	b.mu.Unlock()
	if !leader {
		<-ob.done // the batch runs every item it took, whatever happens to this delivery
		return it.Claimed, it.Err
	}

	b.turn <- struct{}{} // fewer than Transactions batches of the consumer are running
	if b.maxWait > 0 {
		t := time.NewTimer(b.maxWait)
		select {
		case <-ob.full:
		case <-t.C:
		}
		t.Stop()
	}
	b.mu.Lock()
	if b.open == ob {
		b.open = nil
	}
	items := ob.items
	b.mu.Unlock()
	b.execute(ctx, items)
	<-b.turn
	close(ob.done)
	return it.Claimed, it.Err
}

// execute runs one batch in the store, under a span linked to the span of each of its
// deliveries, and tells each delivery the batch's size.
func (b *batcher) execute(ctx context.Context, items []*dedup.BatchItem) {
	links := make([]trace.Link, 0, len(items))
	for _, it := range items {
		if sc := trace.SpanContextFromContext(it.Ctx); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
		if d, ok := it.Ctx.Value(deliveryKey{}).(*delivery); ok {
			d.batchSize = len(items)
		}
	}
	// The batch outlives any one delivery's cancellation: its transaction holds the
	// others' work too. Each handler still runs with its own delivery's context.
	bctx, span := b.tracer.Start(context.WithoutCancel(ctx), "idem batch",
		trace.WithSpanKind(trace.SpanKindInternal), trace.WithLinks(links...),
		trace.WithAttributes(attribute.Int(attrBatchSize, len(items))))
	b.runner.RunBatch(bctx, items)
	failed := 0
	for _, it := range items {
		if it.Err != nil {
			failed++
		}
	}
	if failed > 0 {
		span.SetAttributes(attribute.Int(attrBatchFailed, failed))
		if failed == len(items) {
			span.SetStatus(codes.Error, "every event of the batch failed")
		}
	}
	span.End()
	b.sizes.Record(bctx, int64(len(items)))
}
