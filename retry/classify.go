package retry

import (
	"context"
	"errors"
	"strconv"
)

// Class is what a failure means for the message that caused it. See the
// package documentation for how each class is handled.
type Class uint8

const (
	// ClassUnknown is the zero Class: no decision. [Classify] returns it only
	// for a nil error; a [Policy.Classify] function returns it to fall through
	// to the default rules.
	ClassUnknown Class = iota
	// ClassTransient is a failure that may succeed next time. The message is
	// retried in-process with backoff and full jitter, and each attempt
	// counts against [Policy.MaxAttempts].
	ClassTransient
	// ClassPermanent is a failure no retry can fix. The message is
	// dead-lettered on its first failure.
	ClassPermanent
	// ClassInfrastructure is a failure that is not the message's fault. The
	// message is handed back (nacked) after a back-off, its retry budget is
	// untouched, and it is never dead-lettered.
	ClassInfrastructure
)

// String returns the class's name in lower case: "unknown", "transient",
// "permanent" or "infrastructure".
func (c Class) String() string {
	switch c {
	case ClassUnknown:
		return "unknown"
	case ClassTransient:
		return "transient"
	case ClassPermanent:
		return "permanent"
	case ClassInfrastructure:
		return "infrastructure"
	}
	return "Class(" + strconv.Itoa(int(c)) + ")"
}

// valid reports whether c is one of the defined classes other than
// ClassUnknown.
func (c Class) valid() bool {
	return c >= ClassTransient && c <= ClassInfrastructure
}

// Classify returns the class of err by the default rules, by behaviour and
// never by error text. The first rule that matches decides:
//
//  1. A nil error is [ClassUnknown].
//  2. Markers: the outermost of [Permanent], [Infrastructure] and [After] in
//     err's chain decides (permanent, infrastructure and transient
//     respectively). The chain is walked depth first, outermost first,
//     through Unwrap() error and Unwrap() []error (errors.Join), as errors.As
//     does. [ErrPermanent] and [ErrInfrastructure] wrapped with %w count as
//     markers too.
//  3. Behaviour: the outermost error in the chain with a method
//     Permanent() bool returning true is [ClassPermanent]; with a method
//     Infrastructure() bool returning true, [ClassInfrastructure]. Other
//     packages mark their errors this way without importing retry. An error
//     reporting both is permanent.
//  4. [context.Canceled] anywhere in the chain is [ClassInfrastructure]:
//     shutdown is not the message's fault.
//  5. [context.DeadlineExceeded] anywhere in the chain is [ClassTransient]: a
//     handler that timed out may succeed next time.
//  6. Anything else is [ClassTransient].
//
// [Policy.Class] adds a custom classifier between rules 2 and 3.
func Classify(err error) Class {
	if err == nil {
		return ClassUnknown
	}
	if c := markerClass(err); c != ClassUnknown {
		return c
	}
	return defaultClass(err)
}

// markerClass returns the class given by the outermost marker in err's chain,
// or ClassUnknown if there is none.
func markerClass(err error) Class {
	var class Class
	walk(err, func(e error) bool {
		switch {
		case isNode[*PermanentError](e), isNodeSentinel(e, ErrPermanent):
			class = ClassPermanent
		case isNode[*InfrastructureError](e), isNodeSentinel(e, ErrInfrastructure):
			class = ClassInfrastructure
		case isNode[*AfterError](e):
			class = ClassTransient
		}
		return class != ClassUnknown
	})
	return class
}

// defaultClass applies the rules that follow the markers: behaviour
// interfaces, context errors, then transient. err is not nil.
func defaultClass(err error) Class {
	var class Class
	walk(err, func(e error) bool {
		if p, ok := asNode[interface{ Permanent() bool }](e); ok && p.Permanent() {
			class = ClassPermanent
		} else if i, ok := asNode[interface{ Infrastructure() bool }](e); ok && i.Infrastructure() {
			class = ClassInfrastructure
		}
		return class != ClassUnknown
	})
	switch {
	case class != ClassUnknown:
		return class
	case errors.Is(err, context.Canceled):
		return ClassInfrastructure
	default: // context.DeadlineExceeded included
		return ClassTransient
	}
}

// walk calls visit on err and then on every error in its chain, depth first
// and outermost first (the order errors.Is and errors.As use), until visit
// returns true. It reports whether visit returned true.
func walk(err error, visit func(error) bool) bool {
	for err != nil {
		if visit(err) {
			return true
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				if walk(e, visit) {
					return true
				}
			}
			return false
		default:
			return false
		}
	}
	return false
}

// asNode is errors.As for err alone, without looking at the errors it wraps:
// it tries a type assertion, then err's As method if it has one.
func asNode[T any](err error) (T, bool) {
	if t, ok := err.(T); ok {
		return t, true
	}
	var t T
	if a, ok := err.(interface{ As(any) bool }); ok && a.As(&t) {
		return t, true
	}
	return t, false
}

// isNode reports whether asNode finds a T in err alone.
func isNode[T any](err error) bool {
	_, ok := asNode[T](err)
	return ok
}

// isNodeSentinel is errors.Is for err alone, without looking at the errors it
// wraps. target is one of the package's sentinels, whose dynamic type is
// comparable, so the comparison cannot panic.
func isNodeSentinel(err, target error) bool {
	if err == target {
		return true
	}
	i, ok := err.(interface{ Is(error) bool })
	return ok && i.Is(target)
}
