package middleware

import (
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// PublishedAtKey is the metadata key of the time a message was first published: RFC
// 3339 with nanoseconds, in UTC (time.RFC3339Nano, "2025-03-14T09:26:53.589793238Z").
// [Publisher] and outbox.PublishTx set it on messages that lack it, so a message
// relayed from the outbox or forwarded keeps its first stamp.
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
