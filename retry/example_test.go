package retry_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/idemkit/idem/retry"
)

// Example shows the decision a consumer makes after a failed attempt.
func Example() {
	p := retry.Policy{MaxAttempts: 3} // other fields take their defaults
	if err := p.Validate(); err != nil {
		fmt.Println(err)
		return
	}

	errs := []error{
		errors.New("connection reset by peer"),
		retry.Permanent(errors.New("unknown schema version 9")),
		fmt.Errorf("reserve stock: %w", context.Canceled),
	}
	for _, err := range errs {
		fmt.Printf("%s: %s\n", err, p.Class(err))
	}
	// Output:
	// connection reset by peer: transient
	// unknown schema version 9: permanent
	// reserve stock: context canceled: infrastructure
}

// ExamplePermanent marks a failure no retry can fix.
func ExamplePermanent() {
	err := retry.Permanent(fmt.Errorf("decode order: %w", errors.New("unexpected EOF")))
	fmt.Println(err)
	fmt.Println(retry.Classify(err))
	fmt.Println(errors.Is(err, retry.ErrPermanent))
	// Output:
	// decode order: unexpected EOF
	// permanent
	// true
}

// ExampleAfter honours a peer's rate limit: the next attempt comes exactly
// when the peer asked, with no jitter.
func ExampleAfter() {
	err := retry.After(30*time.Second, errors.New("429 Too Many Requests"))

	var p retry.Policy
	fmt.Println(retry.Classify(err))
	fmt.Println(p.Delay(1, err))
	// Output:
	// transient
	// 30s
}

// ExampleInfrastructure marks a failure that is not the message's fault.
func ExampleInfrastructure() {
	err := retry.Infrastructure(errors.New("dial tcp 10.0.0.7:5432: connection refused"))
	fmt.Println(retry.Classify(err))
	// Output: infrastructure
}

// ExamplePolicy_Backoff prints the backoff caps of the default Policy.
func ExamplePolicy_Backoff() {
	var p retry.Policy
	for failures := 1; failures <= 5; failures++ {
		fmt.Println(failures, p.Backoff(failures))
	}
	fmt.Println(1000, p.Backoff(1000))
	// Output:
	// 1 100ms
	// 2 200ms
	// 3 400ms
	// 4 800ms
	// 5 1.6s
	// 1000 10s
}

// ExamplePolicy_Delay draws a jittered delay, never above the cap.
func ExamplePolicy_Delay() {
	var p retry.Policy
	d := p.Delay(3, errors.New("timeout"))
	fmt.Println(d >= 0 && d <= p.Backoff(3))
	// Output: true
}

// ExamplePolicy_Validate shows that validation errors name the field.
func ExamplePolicy_Validate() {
	p := retry.Policy{Multiplier: 0.5}
	fmt.Println(p.Validate())
	// Output: retry: Multiplier must be at least 1, got 0.5
}

// rateLimitedError is how another package might mark its errors, without
// importing retry.
type rateLimitedError struct{}

func (rateLimitedError) Error() string        { return "quota exhausted" }
func (rateLimitedError) Infrastructure() bool { return true }

// ExampleClassify shows errors classified by behaviour.
func ExampleClassify() {
	fmt.Println(retry.Classify(fmt.Errorf("call quota: %w", rateLimitedError{})))
	fmt.Println(retry.Classify(context.DeadlineExceeded))
	fmt.Println(retry.Classify(nil))
	// Output:
	// infrastructure
	// transient
	// unknown
}

// ExamplePolicy_Class plugs a driver's knowledge into a Policy.
func ExamplePolicy_Class() {
	errValidation := errors.New("validation failed")
	p := retry.Policy{Classify: func(err error) retry.Class {
		if errors.Is(err, errValidation) {
			return retry.ClassPermanent
		}
		return retry.ClassUnknown // fall through to the default rules
	}}
	fmt.Println(p.Class(fmt.Errorf("order 42: %w", errValidation)))
	fmt.Println(p.Class(errors.New("flaky")))
	// Output:
	// permanent
	// transient
}
