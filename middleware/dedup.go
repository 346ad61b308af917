package middleware

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/retry"
)

// DefaultBookkeepingTimeout bounds the short transactions idem writes on failure
// (attempt counts, dead letters), which run detached from the delivery's cancellation.
const DefaultBookkeepingTimeout = 10 * time.Second

// DedupConfig configures [Dedup].
type DedupConfig struct {
	// Store claims events and counts failed attempts. Required.
	Store dedup.Store
	// Consumer names the dedup scope; it must pass dedup.ValidateConsumer. Defaults to
	// the Watermill handler name (a message whose handler name does not pass is
	// dead-lettered as malformed).
	Consumer string
	// KeyFunc extracts the event ID. Defaults to dedup.FromMetadata(dedup.MetadataKey).
	KeyFunc dedup.KeyFunc
	// Classify tells failures that are not the message's fault (not counted) from the
	// others. Defaults to retry.Classify.
	Classify func(error) retry.Class
	// Timeout bounds recording a failed attempt. Defaults to DefaultBookkeepingTimeout.
	Timeout time.Duration
	// Produce, when set, receives the messages the handler returned, inside the
	// attempt's transaction (ctx carries it), after the handler succeeded and before
	// COMMIT: write them to a transactional outbox there, and they are published if
	// and only if the attempt commits; publish them to the broker there, and they are
	// published at least once, never lost to a failed publish after the commit. An
	// error rolls the attempt back. Dedup then returns no messages to the router.
	// Before Produce, a message without an event ID gets one derived from the consumed
	// event's (dedup.ProducedEventID), the same on every attempt. Defaults to nil: the
	// messages are returned to the router, which publishes them after the commit.
	Produce func(ctx context.Context, msgs []*message.Message) error
	// SkipPayloadHash turns off keeping the SHA-256 of each processed event's
	// payload. By default the store keeps it with the claim (stores that support it:
	// both of idem's), and a duplicate whose payload differs — a producer that reused
	// an event ID for other content — is skipped all the same, but logged at warning
	// level (IDs and hashes only) and counted by Metrics as a conflicting duplicate.
	// Defaults to false.
	SkipPayloadHash bool
	// Batch turns on group commit: the attempts of deliveries in flight at the same
	// time share one transaction (see BatchConfig). The store must implement
	// dedup.BatchRunner. Defaults to off.
	Batch BatchConfig
	// Ordering keeps the events of one entity in order (see OrderingConfig). The
	// store must implement dedup.Sequencer; it does not combine with Batch. Defaults
	// to off.
	Ordering OrderingConfig
	// TracerProvider and MeterProvider record each batch: a span "idem batch" linked
	// to its deliveries' spans, and the histogram idem.batch.size. They default to
	// the globals; without Batch they are not used.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Dedup runs each attempt in its own transaction of cfg.Store: it claims the event's
// key, and when the claim is new runs the handler with the transaction in the message
// context, committing the claim and the handler's writes together. A duplicate is
// acknowledged without running the handler. A failed attempt rolls back, and, unless
// the failure is not the message's fault, is counted durably in a short transaction
// of its own.
//
// The event's key is worked out once per delivery, by the outermost of DeadLetter and
// Dedup: when assembling the stack by hand, give both the same Consumer and KeyFunc (the
// consumer package does).
func Dedup(cfg DedupConfig) (message.HandlerMiddleware, error) {
	if cfg.Store == nil {
		return nil, errors.New("middleware: DedupConfig.Store is required")
	}
	if err := validConsumer(cfg.Consumer); err != nil {
		return nil, fmt.Errorf("middleware: DedupConfig.Consumer: %w", err)
	}
	classify := cfg.Classify
	if classify == nil {
		classify = retry.Classify
	}
	if err := cfg.Batch.Validate(); err != nil {
		return nil, fmt.Errorf("middleware: DedupConfig.Batch: %w", err)
	}
	if err := cfg.Ordering.Validate(); err != nil {
		return nil, fmt.Errorf("middleware: DedupConfig.Ordering: %w", err)
	}
	var entityFunc dedup.EntityFunc
	if cfg.Ordering.Enabled {
		if _, ok := cfg.Store.(dedup.Sequencer); !ok {
			return nil, fmt.Errorf("middleware: DedupConfig.Ordering needs a store that orders events (dedup.Sequencer); %T does not", cfg.Store)
		}
		if cfg.Batch.MaxSize > 0 {
			return nil, errors.New("middleware: DedupConfig.Ordering does not combine with Batch: turn one of them off")
		}
		entityFunc = cfg.Ordering.entityFunc()
		if _, ok := cfg.Store.(dedup.Quarantiner); cfg.Ordering.Quarantine && !ok {
			return nil, fmt.Errorf("middleware: DedupConfig.Ordering.Quarantine needs a store that quarantines entities (dedup.Quarantiner); %T does not", cfg.Store)
		}
	}
	run := cfg.Store.Run
	if cfg.Batch.MaxSize > 0 {
		runner, ok := cfg.Store.(dedup.BatchRunner)
		if !ok {
			return nil, fmt.Errorf("middleware: DedupConfig.Batch needs a store that runs batches (dedup.BatchRunner); %T does not", cfg.Store)
		}
		b, err := newBatcher(runner, cfg.Batch, cfg.TracerProvider, cfg.MeterProvider)
		if err != nil {
			return nil, err
		}
		run = b.run
	}
	timeout := cmp.Or(cfg.Timeout, DefaultBookkeepingTimeout)
	logger := cmp.Or(cfg.Logger, slog.Default())
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			d := keyedDeliveryOf(msg, cfg.Consumer, cfg.KeyFunc)
			if d.keyErr != nil {
				return nil, d.keyErr
			}
			d.recorded = true
			ctx := msg.Context()
			runCtx := ctx
			if !cfg.SkipPayloadHash {
				if d.payloadHash == nil {
					d.payloadHash = dedup.HashPayload(msg.Payload) // once per delivery, not per attempt
				}
				runCtx = dedup.WithPayloadHash(ctx, d.payloadHash)
			}
			if entityFunc != nil {
				e, err := entityOf(msg, entityFunc)
				if err != nil {
					return nil, err // permanent: dead-lettered as malformed, never counted
				}
				runCtx = dedup.WithEntity(runCtx, e, cfg.Ordering.Gap)
				d.entity, d.ordered = e, true
				if topic := message.SubscribeTopicFromCtx(ctx); cfg.Ordering.Quarantine && topic != "" {
					runCtx = dedup.WithParking(runCtx, dedup.Parked{Key: d.key, Topic: topic, Payload: msg.Payload, Metadata: maps.Clone(msg.Metadata)})
				}
			}
			var produced []*message.Message
			var timing attemptTiming
			start := time.Now()
			claimed, err := run(runCtx, d.key, func(txCtx context.Context) error {
				handlerStart := time.Now()
				timing.claim, timing.ran = handlerStart.Sub(start), true
				msg.SetContext(txCtx)
				defer msg.SetContext(ctx)
				var herr error
				produced, herr = h(msg)
				timing.handler, timing.handlerErr = time.Since(handlerStart), herr != nil
				if herr != nil || cfg.Produce == nil || len(produced) == 0 {
					return herr
				}
				for i, p := range produced {
					if p.Metadata.Get(dedup.MetadataKey) == "" {
						p.Metadata.Set(dedup.MetadataKey, dedup.ProducedEventID(d.key, i))
					}
				}
				return cfg.Produce(txCtx, produced)
			})
			if !timing.ran {
				timing.claim = time.Since(start)
			}
			var conflict *dedup.ConflictingDuplicateError
			if !claimed && errors.As(err, &conflict) {
				d.conflict, err = true, nil
				logger.LogAttrs(ctx, slog.LevelWarn, "idem: conflicting duplicate skipped: the event ID was processed with a different payload",
					append(logAttrs(msg, d), slog.String("payload_sha256", hex.EncodeToString(conflict.Got)),
						slog.String("processed_payload_sha256", hex.EncodeToString(conflict.Kept)))...)
			}
			var stale *dedup.StaleEventError
			if !claimed && errors.As(err, &stale) {
				d.outcome, err = dedup.Stale, nil
			}
			var held *dedup.QuarantinedError
			if !claimed && errors.As(err, &held) {
				d.outcome, err = dedup.Deferred, nil
			}
			switch {
			case d.outcome == dedup.Stale:
				timing.result = claimStale
			case d.outcome == dedup.Deferred:
				timing.result = claimFailed
			case !timing.ran && err == nil:
				timing.result = claimDuplicate
			case timing.ran:
				timing.result = claimNew
			default:
				timing.result = claimFailed
			}
			d.addTiming(timing)
			switch {
			case d.outcome == dedup.Stale:
				logger.LogAttrs(ctx, slog.LevelDebug, "idem: stale event skipped: a later event of its entity was applied",
					append(logAttrs(msg, d), slog.String("entity_id", stale.Entity.ID), slog.Int64("entity_seq", stale.Entity.Seq),
						slog.Int64("mark", stale.Mark))...)
				return nil, nil
			case d.outcome == dedup.Deferred:
				logger.LogAttrs(ctx, slog.LevelWarn, "idem: event parked behind its entity's dead letter",
					append(logAttrs(msg, d), slog.String("entity_id", held.Entity.ID), slog.Int64("entity_seq", held.Entity.Seq),
						slog.String("blocked_by", held.BlockedBy), slog.Int64("blocked_seq", held.BlockedSeq))...)
				return nil, nil
			case err == nil && !claimed:
				d.outcome = dedup.Duplicate
				logger.LogAttrs(ctx, slog.LevelDebug, "idem: duplicate skipped", logAttrs(msg, d)...)
				return nil, nil
			case err == nil:
				d.outcome = dedup.Processed
				if cfg.Produce != nil {
					return nil, nil // produced inside the transaction
				}
				return produced, nil
			case deliveryEnded(ctx) || classify(err) == retry.ClassInfrastructure:
				return nil, err // not the message's fault: its budget is not spent
			}
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
			defer cancel()
			n, rerr := cfg.Store.RecordFailure(rctx, d.key, dlq.ScrubError(err.Error(), 0))
			switch {
			case rerr != nil && classify(rerr) == retry.ClassPermanent:
				// The store refused the record for its data: the message's fault. Without
				// a count its attempts would never end, so it is dead-lettered now.
				return nil, retry.Permanent(fmt.Errorf("%w; counting the failed attempt failed on its data: %w", err, rerr))
			case rerr != nil:
				return nil, retry.Infrastructure(fmt.Errorf("%w; counting the failed attempt failed too: %w", err, rerr))
			}
			d.failures = n
			return nil, err
		}
	}, nil
}
