package middleware_test

import (
	"context"
	"slices"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem/middleware"
)

func TestMetadataCarrier(t *testing.T) {
	t.Parallel()

	t.Run("GetSetKeys", func(t *testing.T) {
		t.Parallel()
		md := message.Metadata{"event_id": "evt-1"}
		c := middleware.MetadataCarrier(md)
		c.Set("traceparent", "tp")
		require.Equal(t, "tp", md.Get("traceparent"), "Set writes through to the metadata")
		require.Equal(t, "evt-1", c.Get("event_id"))
		require.Empty(t, c.Get("missing"))
		keys := c.Keys()
		slices.Sort(keys)
		require.Equal(t, []string{"event_id", "traceparent"}, keys)
	})

	t.Run("RoundTripsW3CTraceContext", func(t *testing.T) {
		t.Parallel()
		tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
		sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
		ts, err := trace.ParseTraceState("vendor=1")
		require.NoError(t, err)
		sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, TraceState: ts})
		md := message.Metadata{}
		p := propagation.TraceContext{}
		p.Inject(trace.ContextWithSpanContext(context.Background(), sc), middleware.MetadataCarrier(md))
		require.Equal(t, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", md.Get(middleware.TraceParentKey))
		require.Equal(t, "vendor=1", md.Get(middleware.TraceStateKey))

		got := trace.SpanContextFromContext(p.Extract(context.Background(), middleware.MetadataCarrier(md)))
		require.True(t, got.IsRemote())
		require.True(t, got.Equal(sc.WithRemote(true)))
	})
}
