// Package retry decides what a failed message deserves: another attempt
// soon, a dead letter now, or a trip back to the broker that costs it
// nothing. It holds the retry [Policy] (backoff with full jitter, attempt and
// time budgets), the markers handlers use to state intent ([Permanent],
// [After], [Infrastructure]) and the classification of errors ([Classify]).
//
// Package retry imports only the standard library. It runs nothing and
// sleeps nowhere: the middleware and the consumer apply its answers.
//
// # Usage
//
// Handlers state intent by wrapping the error they return:
//
//	if err := json.Unmarshal(msg.Payload, &order); err != nil {
//		return retry.Permanent(fmt.Errorf("decode order: %w", err)) // skip retries, dead-letter now
//	}
//	if resp.StatusCode == http.StatusTooManyRequests {
//		return retry.After(30*time.Second, errRateLimited) // honour the peer's rate limit
//	}
//	if err := stock.Reserve(ctx, order); err != nil {
//		return err // transient by default: retried with backoff
//	}
//
// The code that runs the handler asks a Policy what to do next:
//
//	p := retry.Policy{MaxAttempts: 8} // zero fields take their defaults
//	if err := p.Validate(); err != nil {
//		return err
//	}
//	switch p.Class(err) {
//	case retry.ClassTransient:
//		wait := p.Delay(failures, err) // computed once, passed along
//		// …
//	}
//
// # Classes
//
// Every failure falls into one of three classes, each with a fixed fate for
// the message:
//
//   - [ClassTransient]: the failure may go away. The message is retried
//     in-process after [Policy.Delay] (exponential backoff with full jitter,
//     or exactly the duration an [After] marker asks for), and each attempt
//     counts against [Policy.MaxAttempts]. When in-process retrying has gone
//     on for [Policy.MaxElapsedTime], or the delivery's deadline is near, the
//     message is handed back to the broker for redelivery. Once MaxAttempts
//     attempts have failed, across retries and redeliveries, it is
//     dead-lettered.
//   - [ClassPermanent]: no attempt can succeed (bad payload, failed
//     validation, [Permanent]). The message is dead-lettered on its first
//     failure.
//   - [ClassInfrastructure]: the failure is not the message's fault (a
//     database outage, a shutdown, [Infrastructure]). The message is handed
//     back (nacked) after a back-off, its retry budget is untouched, and it is
//     never dead-lettered.
//
// Errors are classified by behaviour, never by their text: by the markers of
// this package, by a [Policy.Classify] function, by the methods
// Permanent() bool and Infrastructure() bool (so other packages can mark
// their errors without importing retry), and by [context.Canceled] and
// [context.DeadlineExceeded]. See [Classify] for the exact rules.
//
// # Backoff
//
// [Policy.Backoff] is the cap before the next attempt,
// min(MaxInterval, InitialInterval*Multiplier^(failures-1)), and
// [Policy.Delay] draws the actual wait uniformly from [0, cap] ("full
// jitter"), so that replicas failing together do not retry together. A
// Policy is a value with no hidden state: asking for a delay twice does not
// advance any schedule.
package retry
