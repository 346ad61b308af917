package middleware

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem/retry"
)

// RetryConfig configures [Retry].
type RetryConfig struct {
	// Policy bounds the attempts and paces them. Its zero value is ready to use.
	Policy retry.Policy
	// AckDeadline is how long the transport waits for an ack before it redelivers the
	// message anyway (watermill-sql AckDeadline, NATS AckWait, Redis MaxIdleTime). In-
	// process retrying stops before a wait would cross it, and before the delivery's
	// context deadline, whichever comes first. Defaults to 0: no deadline known.
	AckDeadline time.Duration
	// AttemptTimeout bounds each attempt: the handler's context ends after it, with
	// the cause [ErrAttemptTimeout], and the attempt counts as a transient failure
	// (unlike the end of the delivery's own context, which is not the message's
	// fault). Keep it, times the attempts, within the ack deadline. Defaults to 0: no
	// bound of its own.
	AttemptTimeout time.Duration
	// MaxAttemptsPerDelivery bounds the attempts one delivery makes in-process: past
	// it, the message is handed back (or, with delayed retries, parked by
	// [DeadLetter]) for its next attempt, freeing the consumer. Defaults to 0: no
	// bound of its own.
	MaxAttemptsPerDelivery int
	// MaxWait is the longest wait Retry sleeps in-process before the next attempt
	// (a retry.After longer than it, say); a longer one hands the message back, or
	// has it parked, instead. Defaults to 0: no bound of its own.
	MaxWait time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// ErrAttemptTimeout is the cause of the context of an attempt that ran longer than
// RetryConfig.AttemptTimeout.
var ErrAttemptTimeout = errors.New("middleware: the attempt ran longer than its AttemptTimeout")

// deliveryEnded reports whether ctx ended for a reason that is not the message's fault
// (shutdown, the ack deadline), as opposed to its attempt timing out.
func deliveryEnded(ctx context.Context) bool {
	return ctx.Err() != nil && !errors.Is(context.Cause(ctx), ErrAttemptTimeout)
}

// Retry tries a failing handler again in-process, after a backoff with full jitter that
// is computed once per wait. It stops, returning the last error, when the error is not
// transient (permanent errors are not retried; failures that are not the message's
// fault go back to the broker at once), when the event has used its attempts
// (counted durably by [Dedup] across redeliveries, or in-process without it), when the
// next wait would cross Policy.MaxElapsedTime, the ack deadline or the context
// deadline, and when the message context ends.
func Retry(cfg RetryConfig) (message.HandlerMiddleware, error) {
	p := cfg.Policy.WithDefaults()
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("middleware: RetryConfig.Policy: %w", err)
	}
	if cfg.AckDeadline < 0 {
		return nil, fmt.Errorf("middleware: RetryConfig.AckDeadline must not be negative, got %s", cfg.AckDeadline)
	}
	if cfg.AttemptTimeout < 0 {
		return nil, fmt.Errorf("middleware: RetryConfig.AttemptTimeout must not be negative, got %s", cfg.AttemptTimeout)
	}
	if cfg.MaxAttemptsPerDelivery < 0 {
		return nil, fmt.Errorf("middleware: RetryConfig.MaxAttemptsPerDelivery must not be negative, got %d", cfg.MaxAttemptsPerDelivery)
	}
	if cfg.MaxWait < 0 {
		return nil, fmt.Errorf("middleware: RetryConfig.MaxWait must not be negative, got %s", cfg.MaxWait)
	}
	logger := cmp.Or(cfg.Logger, slog.Default())
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			d := deliveryOf(msg)
			ctx := msg.Context()
			start := time.Now()
			// A wait must end strictly before the deadline: an attempt that starts at the
			// deadline starts with its context already expired.
			deadline, hasDeadline := ctx.Deadline()
			if cfg.AckDeadline > 0 && (!hasDeadline || start.Add(cfg.AckDeadline).Before(deadline)) {
				deadline, hasDeadline = start.Add(cfg.AckDeadline), true
			}
			if p.MaxElapsedTime > 0 && (!hasDeadline || start.Add(p.MaxElapsedTime).Before(deadline)) {
				deadline, hasDeadline = start.Add(p.MaxElapsedTime), true
			}
			for attempt := 1; ; attempt++ {
				d.attempt = attempt
				produced, err := runAttempt(msg, h, cfg.AttemptTimeout)
				if err == nil {
					return produced, nil
				}
				d.failed = append(d.failed, attemptFailure{attempt: attempt, err: err, at: time.Now()})
				if ctx.Err() != nil || p.Class(err) != retry.ClassTransient {
					return nil, err
				}
				if !d.recorded {
					d.failures = attempt
				}
				if d.failures >= p.MaxAttempts {
					return nil, err
				}
				wait := p.Delay(d.failures, err)
				if hasDeadline && !time.Now().Add(wait).Before(deadline) ||
					cfg.MaxAttemptsPerDelivery > 0 && attempt >= cfg.MaxAttemptsPerDelivery ||
					cfg.MaxWait > 0 && wait > cfg.MaxWait {
					d.nextWait = wait // for a delayed retry, the wait computed once
					return nil, err   // hand it back to the broker; the attempts so far stay counted
				}
				d.failed[len(d.failed)-1].wait = wait
				attrs := append(logAttrs(msg, d),
					slog.Int("attempt", attempt), slog.Int("failures", d.failures),
					slog.Duration("wait", wait), slog.String("error", err.Error()))
				logger.LogAttrs(ctx, slog.LevelWarn, "idem: attempt failed, retrying", attrs...)
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return nil, err
				}
				d.retries++
			}
		}
	}, nil
}

// runAttempt calls h once, within timeout when it is positive.
func runAttempt(msg *message.Message, h message.HandlerFunc, timeout time.Duration) ([]*message.Message, error) {
	if timeout <= 0 {
		return h(msg)
	}
	ctx := msg.Context()
	actx, cancel := context.WithTimeoutCause(ctx, timeout, ErrAttemptTimeout)
	defer cancel()
	msg.SetContext(actx)
	defer msg.SetContext(ctx)
	return h(msg)
}
