package retry

import (
	"errors"
	"time"
)

// ErrPermanent is the sentinel every error returned by [Permanent] matches
// with errors.Is. A handler may also wrap it directly
// (fmt.Errorf("bad payload: %w", retry.ErrPermanent)) with the same effect.
var ErrPermanent = errors.New("retry: permanent error")

// ErrInfrastructure is the sentinel every error returned by [Infrastructure]
// matches with errors.Is. A caller may also wrap it directly with the same
// effect.
var ErrInfrastructure = errors.New("retry: infrastructure error")

// Permanent marks err as permanent: skip retries, dead-letter now. Use it for
// failures that no number of attempts can fix, such as a payload that does
// not decode or fails validation.
//
// Permanent returns nil if err is nil, so "return retry.Permanent(err)" is
// safe on every path. The result's text is err's text, it unwraps to err, and
// it matches [ErrPermanent] with errors.Is.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// PermanentError is the error returned by [Permanent]. Find it with
// errors.As, or test for it with errors.Is(err, ErrPermanent).
type PermanentError struct {
	// Err is the failure that no retry can fix.
	Err error
}

// Error returns the text of the wrapped error, so that marking an error does
// not change what is logged or how it is grouped.
func (e *PermanentError) Error() string {
	if e.Err == nil {
		return ErrPermanent.Error()
	}
	return e.Err.Error()
}

// Unwrap returns the wrapped error.
func (e *PermanentError) Unwrap() error { return e.Err }

// Is reports whether target is [ErrPermanent].
func (e *PermanentError) Is(target error) bool { return target == ErrPermanent }

// After marks err as transient and asks for the next attempt in exactly d,
// with no jitter and no cap, for example to honour a peer's rate limit
// (HTTP 429 with Retry-After). A negative d is treated as zero. The message's
// attempt still counts against [Policy.MaxAttempts].
//
// After returns nil if err is nil. The result's text is err's text and it
// unwraps to err. [RetryAfter] finds it again and [Policy.Delay] honours it.
func After(d time.Duration, err error) error {
	if err == nil {
		return nil
	}
	return &AfterError{Delay: max(d, 0), Err: err}
}

// AfterError is the error returned by [After]. Find it with [RetryAfter] or
// errors.As.
type AfterError struct {
	// Delay is how long to wait before the next attempt.
	Delay time.Duration
	// Err is the failure that caused the wait.
	Err error
}

// Error returns the text of the wrapped error, so that marking an error does
// not change what is logged or how it is grouped.
func (e *AfterError) Error() string {
	if e.Err == nil {
		return "retry: retry after " + e.Delay.String()
	}
	return e.Err.Error()
}

// Unwrap returns the wrapped error.
func (e *AfterError) Unwrap() error { return e.Err }

// RetryAfter returns the delay asked for by the outermost [After] in err's
// chain, and whether there is one.
func RetryAfter(err error) (time.Duration, bool) {
	var a *AfterError
	if errors.As(err, &a) {
		return max(a.Delay, 0), true
	}
	return 0, false
}

// Infrastructure marks err as an infrastructure failure: not the message's
// fault, because a dependency (database, broker, network) is down or the
// process is shutting down. The message is handed back to the broker (nacked)
// after a back-off, without spending its retry budget, and it is never
// dead-lettered.
//
// Infrastructure returns nil if err is nil. The result's text is err's text,
// it unwraps to err, and it matches [ErrInfrastructure] with errors.Is.
func Infrastructure(err error) error {
	if err == nil {
		return nil
	}
	return &InfrastructureError{Err: err}
}

// InfrastructureError is the error returned by [Infrastructure]. Find it with
// errors.As, or test for it with errors.Is(err, ErrInfrastructure).
type InfrastructureError struct {
	// Err is the failure of the dependency.
	Err error
}

// Error returns the text of the wrapped error, so that marking an error does
// not change what is logged or how it is grouped.
func (e *InfrastructureError) Error() string {
	if e.Err == nil {
		return ErrInfrastructure.Error()
	}
	return e.Err.Error()
}

// Unwrap returns the wrapped error.
func (e *InfrastructureError) Unwrap() error { return e.Err }

// Is reports whether target is [ErrInfrastructure].
func (e *InfrastructureError) Is(target error) bool { return target == ErrInfrastructure }
