package middleware

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem/dedup"
)

// CrashGuardConfig configures [CrashGuard].
type CrashGuardConfig struct {
	// Store counts started deliveries. Required.
	Store dedup.StartRecorder
	// Deliveries is how many deliveries of one event may start and never finish
	// because their process died before the next delivery is dead-lettered as
	// crash-looped without running the handler. Required, at least 1.
	Deliveries int
	// Consumer names the dedup scope; it must pass dedup.ValidateConsumer. Defaults to
	// the Watermill handler name (a message whose handler name does not pass is
	// dead-lettered as malformed).
	Consumer string
	// KeyFunc extracts the event ID. Defaults to dedup.FromMetadata(dedup.MetadataKey).
	KeyFunc dedup.KeyFunc
	// Timeout bounds the bookkeeping writes. Defaults to DefaultBookkeepingTimeout.
	Timeout time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// CrashLoopError reports an event whose last deliveries all started and never
// finished because their process died: the handler crashes the process. It is
// permanent; [DeadLetter] stores it with reason crash-looped.
type CrashLoopError struct {
	// Deliveries is how many processes died with a delivery of the event started
	// and not finished.
	Deliveries int
}

func (e *CrashLoopError) Error() string {
	return fmt.Sprintf("the last %d deliveries of this event started and never finished, their process dying each time: the handler crashes the process; not running it again", e.Deliveries)
}

// Permanent reports true: running the handler again would crash again.
func (e *CrashLoopError) Permanent() bool { return true }

// CrashGuard counts each delivery in a short transaction of its own before the rest
// of the stack runs, so that a message that kills the process (a crash, an OOM kill,
// os.Exit) is recognised after cfg.Deliveries deliveries and dead-lettered as
// crash-looped without running the handler again. It sits between DeadLetter and
// Retry. Its cost is one extra short write per delivery; a delivery that ends in an
// error writes once more to reset the count.
//
// Only a delivery whose process died counts: deliveries of one event that run at the
// same time, in one process or in several replicas (a redelivery while the first
// delivery still runs), are not crashes of each other. When cfg.Store is a
// [dedup.LiveStartRecorder], CrashGuard holds its liveness for the whole of each
// delivery it counts, so that the other replicas know the delivery still runs. A
// handler that hangs without killing the process is for RetryConfig.AttemptTimeout
// to end, not for the crash guard.
func CrashGuard(cfg CrashGuardConfig) (message.HandlerMiddleware, error) {
	if cfg.Store == nil {
		return nil, errors.New("middleware: CrashGuardConfig.Store is required")
	}
	if err := validConsumer(cfg.Consumer); err != nil {
		return nil, fmt.Errorf("middleware: CrashGuardConfig.Consumer: %w", err)
	}
	if cfg.Deliveries < 1 {
		return nil, fmt.Errorf("middleware: CrashGuardConfig.Deliveries must be at least 1, got %d", cfg.Deliveries)
	}
	timeout := cmp.Or(cfg.Timeout, DefaultBookkeepingTimeout)
	logger := cmp.Or(cfg.Logger, slog.Default())
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			d := keyedDeliveryOf(msg, cfg.Consumer, cfg.KeyFunc)
			if d.keyErr != nil {
				return h(msg) // malformed: DeadLetter deals with it without running the handler
			}
			ctx := msg.Context()
			if live, ok := cfg.Store.(dedup.LiveStartRecorder); ok {
				release, err := live.HoldLive(ctx)
				if err != nil {
					return nil, err // not the message's fault: the store classifies its error
				}
				defer release()
			}
			started, err := cfg.Store.StartAttempt(ctx, d.key)
			if err != nil {
				return nil, err // not the message's fault: the store classifies its error
			}
			if crashed := started - 1; crashed >= cfg.Deliveries {
				logger.LogAttrs(ctx, slog.LevelError, "idem: crash loop detected, dead-lettering without running the handler",
					append(logAttrs(msg, d), slog.Int("unfinished_deliveries", crashed))...)
				d.failures = max(d.failures, crashed)
				return nil, &CrashLoopError{Deliveries: crashed}
			}
			produced, err := h(msg)
			// A stale event (ordering) ends without a processed row, like a failure:
			// its count must not survive it, or its redeliveries would look like a
			// crash loop.
			if err != nil || d.outcome == dedup.Stale {
				fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
				defer cancel()
				if ferr := cfg.Store.FinishAttempt(fctx, d.key); ferr != nil {
					logger.LogAttrs(ctx, slog.LevelWarn, "idem: crash guard could not record the end of a delivery",
						append(logAttrs(msg, d), slog.String("error", ferr.Error()))...)
				}
			}
			return produced, err
		}
	}, nil
}
