package middleware_test

import (
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/middleware"
)

func TestStampPublishedAt(t *testing.T) {
	t.Parallel()

	t.Run("RFC3339WithNanosecondsInUTC", func(t *testing.T) {
		t.Parallel()
		at := time.Date(2025, 3, 14, 10, 26, 53, 589793238, time.FixedZone("CET", 3600))
		msg := message.NewMessage(watermill.NewUUID(), nil)
		middleware.StampPublishedAt(msg, at)
		require.Equal(t, "2025-03-14T09:26:53.589793238Z", msg.Metadata.Get(middleware.PublishedAtKey))
		got, ok := middleware.PublishedAt(msg)
		require.True(t, ok)
		require.True(t, at.Equal(got), "read back to the nanosecond: %s", got)
	})

	t.Run("TheFirstStampIsKept", func(t *testing.T) {
		t.Parallel()
		msg := message.NewMessage(watermill.NewUUID(), nil)
		msg.Metadata.Set(middleware.PublishedAtKey, "2025-01-01T00:00:00Z")
		middleware.StampPublishedAt(msg, time.Now())
		require.Equal(t, "2025-01-01T00:00:00Z", msg.Metadata.Get(middleware.PublishedAtKey))
		msg.Metadata.Set(middleware.PublishedAtKey, "yesterday")
		middleware.StampPublishedAt(msg, time.Now())
		require.Equal(t, "yesterday", msg.Metadata.Get(middleware.PublishedAtKey), "even an unreadable one: it is the producer's")
	})

	t.Run("NilMetadataIsMade", func(t *testing.T) {
		t.Parallel()
		msg := &message.Message{UUID: watermill.NewUUID()}
		_, ok := middleware.PublishedAt(msg)
		require.False(t, ok)
		middleware.StampPublishedAt(msg, time.Now())
		_, ok = middleware.PublishedAt(msg)
		require.True(t, ok)
	})

	t.Run("UnreadableStampsAreNone", func(t *testing.T) {
		t.Parallel()
		for _, v := range []string{"", "yesterday", "1741944413", "2025-03-14 09:26:53", "2025-13-14T09:26:53Z", "\xff\xfe"} {
			msg := message.NewMessage(watermill.NewUUID(), nil)
			msg.Metadata.Set(middleware.PublishedAtKey, v)
			_, ok := middleware.PublishedAt(msg)
			require.False(t, ok, "%q", v)
		}
		msg := message.NewMessage(watermill.NewUUID(), nil)
		msg.Metadata.Set(middleware.PublishedAtKey, "2025-03-14T10:26:53+01:00")
		got, ok := middleware.PublishedAt(msg)
		require.True(t, ok, "another producer's offset and precision are RFC 3339 too")
		require.True(t, time.Date(2025, 3, 14, 9, 26, 53, 0, time.UTC).Equal(got))
	})
}
