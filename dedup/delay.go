package dedup

import (
	"context"
	"time"
)

// Parker is implemented by stores that keep messages for a later attempt: delayed
// retries, which free the partition a failing message would block while it waits for
// its next attempt. Both of idem's stores implement it. Implementations must be safe
// for concurrent use, also by many processes sharing one database.
type Parker interface {
	// Park keeps p for another attempt after p.Delay, measured on the database's
	// clock, in a transaction of its own, and returns once it committed. A message of
	// the same key parked before is replaced.
	Park(ctx context.Context, p Parked) error
	// TakeDue hands the parked messages whose time has come, up to limit, earliest
	// first, to fn, and removes each for which fn returns nil, in one transaction that
	// commits when fn has seen them all; one for which fn fails stays parked. Messages
	// another caller is handing out at the same time are skipped, not waited for. It
	// returns how many it removed.
	TakeDue(ctx context.Context, limit int, fn func(ctx context.Context, p Parked) error) (int, error)
}

// Parked is a message kept for a later attempt.
type Parked struct {
	// Key is the event's key: one message is parked per key.
	Key Key
	// Topic is the topic the message is published to again when due.
	Topic string
	// Payload and Metadata are the message's, byte for byte.
	Payload  []byte
	Metadata map[string]string
	// Delay is how long it waits, for Park.
	Delay time.Duration
	// Due is when its time came, as TakeDue reports it.
	Due time.Time
}
