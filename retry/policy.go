package retry

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Defaults of [Policy]'s fields, applied by [Policy.WithDefaults] to fields
// left at zero.
const (
	// DefaultMaxAttempts is the default of Policy.MaxAttempts.
	DefaultMaxAttempts = 5
	// DefaultInitialInterval is the default of Policy.InitialInterval.
	DefaultInitialInterval = 100 * time.Millisecond
	// DefaultMaxInterval is the default of Policy.MaxInterval.
	DefaultMaxInterval = 10 * time.Second
	// DefaultMultiplier is the default of Policy.Multiplier.
	DefaultMultiplier = 2.0
	// DefaultMaxElapsedTime is the default of Policy.MaxElapsedTime.
	DefaultMaxElapsedTime = 30 * time.Second
)

// Policy says how often and how fast a failing message is tried again, and
// what each failure means for it. The zero Policy is ready to use: every
// field left at zero takes its default.
//
// Policy is a plain value with no hidden state: each method computes its
// answer from its arguments alone. Its methods are safe for concurrent use,
// provided Classify is.
type Policy struct {
	// MaxAttempts is the total number of attempts a message gets before it is
	// dead-lettered, counting in-process retries and redeliveries together
	// (the caller counts them, durably). It must be at least 1; there is no
	// way to retry forever, because poison must end. Defaults to
	// DefaultMaxAttempts (5).
	MaxAttempts int

	// InitialInterval is the backoff cap after the first failed attempt.
	// Defaults to DefaultInitialInterval (100ms).
	InitialInterval time.Duration

	// MaxInterval is the largest backoff cap, however many attempts failed.
	// It must be at least InitialInterval. Defaults to DefaultMaxInterval
	// (10s).
	MaxInterval time.Duration

	// Multiplier is the factor by which the backoff cap grows after each
	// failed attempt. It must be at least 1 (1 keeps the cap constant).
	// Defaults to DefaultMultiplier (2).
	Multiplier float64

	// MaxElapsedTime is how long in-process retrying of one delivery may go
	// on before the message is handed back to the broker for redelivery. The
	// special value -1 sets no bound other than MaxAttempts and the
	// delivery's context deadline. Defaults to DefaultMaxElapsedTime (30s).
	MaxElapsedTime time.Duration

	// Classify is an extra classifier, consulted by [Policy.Class] after the
	// explicit markers ([Permanent], [Infrastructure], [After]) and before the
	// default rules of [Classify]. It returns ClassUnknown (0), or any value
	// that is not a defined Class, to fall through to the default rules. It
	// is how knowledge of a driver's errors, such as PostgreSQL SQLSTATEs,
	// reaches a Policy without retry importing the driver. It must be safe
	// for concurrent use. Defaults to nil: the default rules alone.
	Classify func(error) Class
}

// WithDefaults returns a copy of p in which every field left at zero holds
// its default. p itself is not modified.
func (p Policy) WithDefaults() Policy {
	p.MaxAttempts = cmp.Or(p.MaxAttempts, DefaultMaxAttempts)
	p.InitialInterval = cmp.Or(p.InitialInterval, DefaultInitialInterval)
	p.MaxInterval = cmp.Or(p.MaxInterval, DefaultMaxInterval)
	p.Multiplier = cmp.Or(p.Multiplier, DefaultMultiplier)
	p.MaxElapsedTime = cmp.Or(p.MaxElapsedTime, DefaultMaxElapsedTime)
	return p
}

// Validate reports whether p, with its defaults applied, is usable. Each
// problem is reported in an error that names the field; several problems
// are joined with errors.Join. The zero Policy is valid.
func (p Policy) Validate() error {
	p = p.WithDefaults()
	var errs []error
	if p.MaxAttempts < 1 {
		errs = append(errs, fmt.Errorf("retry: MaxAttempts must be at least 1, got %d", p.MaxAttempts))
	}
	if p.InitialInterval < 0 {
		errs = append(errs, fmt.Errorf("retry: InitialInterval must not be negative, got %s", p.InitialInterval))
	}
	if p.MaxInterval < 0 {
		errs = append(errs, fmt.Errorf("retry: MaxInterval must not be negative, got %s", p.MaxInterval))
	} else if p.MaxInterval < p.InitialInterval {
		errs = append(errs, fmt.Errorf("retry: MaxInterval must be at least InitialInterval (%s), got %s",
			p.InitialInterval, p.MaxInterval))
	}
	if !(p.Multiplier >= 1) { // also rejects NaN
		errs = append(errs, fmt.Errorf("retry: Multiplier must be at least 1, got %v", p.Multiplier))
	} else if math.IsInf(p.Multiplier, 1) {
		errs = append(errs, fmt.Errorf("retry: Multiplier must be finite, got %v", p.Multiplier))
	}
	if p.MaxElapsedTime < 0 && p.MaxElapsedTime != -1 {
		errs = append(errs, fmt.Errorf("retry: MaxElapsedTime must be positive or -1, got %s", p.MaxElapsedTime))
	}
	return errors.Join(errs...)
}

// Backoff returns the backoff cap, without jitter, before the next attempt
// after failures failed attempts (1-based):
//
//	min(MaxInterval, InitialInterval * Multiplier^(failures-1))
//
// with p's defaults applied. A failures below 1 is treated as 1. Backoff does
// not overflow, however large failures is: the result never exceeds
// MaxInterval. Use [Policy.Delay] for the duration to actually wait.
func (p Policy) Backoff(failures int) time.Duration {
	p = p.WithDefaults()
	failures = max(failures, 1)
	d := float64(p.InitialInterval) * math.Pow(p.Multiplier, float64(failures-1))
	switch {
	case !(d < float64(p.MaxInterval)): // also catches +Inf and NaN
		return max(p.MaxInterval, 0)
	case d < 0:
		return 0
	default:
		return time.Duration(d)
	}
}

// Delay returns how long to wait before the next attempt after failures
// failed attempts (1-based), the last of which failed with err. If err
// carries an [After] marker, Delay returns exactly its duration. Otherwise it
// applies full jitter: a uniformly random duration in [0, Backoff(failures)].
//
// Delay computes its answer once per call and keeps no state, so reporting a
// delay (to a hook, a log line or a span) never advances any schedule: call
// it once and pass the result along.
func (p Policy) Delay(failures int, err error) time.Duration {
	if d, ok := RetryAfter(err); ok {
		return d
	}
	limit := p.Backoff(failures)
	switch {
	case limit <= 0:
		return 0
	case limit == math.MaxInt64:
		return time.Duration(rand.Int64()) // [0, MaxInt64]; limit+1 would overflow
	default:
		return time.Duration(rand.Int64N(int64(limit) + 1))
	}
}

// Class returns the class of err under p. The first rule that matches
// decides: the explicit markers ([Permanent], [Infrastructure], [After],
// outermost first), then p.Classify if it is set and returns a defined class
// other than ClassUnknown, then the remaining default rules of [Classify]. A
// nil err is ClassUnknown and p.Classify is not called.
func (p Policy) Class(err error) Class {
	if err == nil {
		return ClassUnknown
	}
	if c := markerClass(err); c != ClassUnknown {
		return c
	}
	if p.Classify != nil {
		if c := p.Classify(err); c.valid() {
			return c
		}
	}
	return defaultClass(err)
}
