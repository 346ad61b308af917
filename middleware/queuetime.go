package middleware

import (
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem/dlq"
)

// PublishedAtKey is the metadata key of the time a message was first published: RFC
// 3339 with nanoseconds, in UTC (time.RFC3339Nano, "2025-03-14T09:26:53.589793238Z").
// [Publisher] and outbox.PublishTx set it on messages that lack it, so a message
// relayed from the outbox or forwarded keeps its first stamp, and [Metrics] measures
// from it how long the message waited before a consumer took it (idem.queue.duration).
const PublishedAtKey = "published_at"

// StampPublishedAt sets metadata [PublishedAtKey] on msg to t, unless msg carries a
// non-empty one already (the first stamp is kept, whatever it says). Call it from
// producers that publish without [Publisher] or the outbox.
func StampPublishedAt(msg *message.Message, t time.Time) {
	if msg.Metadata[PublishedAtKey] != "" {
		return
	}
	if msg.Metadata == nil {
		msg.Metadata = message.Metadata{}
	}
	msg.Metadata[PublishedAtKey] = formatPublishedAt(t)
}

func formatPublishedAt(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// PublishedAt returns the time metadata [PublishedAtKey] of msg says it was first
// published; ok is false when msg has no such stamp or one that is not RFC 3339.
func PublishedAt(msg *message.Message) (t time.Time, ok bool) {
	v := msg.Metadata[PublishedAtKey]
	if v == "" {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, false
	}
	return t, true
}

// queueTime is how long msg waited between its publish stamp and now, for
// idem.queue.duration. ok is false when there is nothing to measure: no stamp, an
// unreadable one, or a replayed dead letter (its stamp is the original publish, and
// the time it then spent in the dead-letter store is not time in a queue). A stamp
// ahead of now, from a producer whose clock runs ahead, is a wait of 0.
func queueTime(msg *message.Message, now time.Time) (d time.Duration, ok bool) {
	at, ok := PublishedAt(msg)
	if !ok {
		return 0, false
	}
	if _, replayed := msg.Metadata[dlq.ReplayCountKey]; replayed {
		return 0, false
	}
	return max(now.Sub(at), 0), true
}
