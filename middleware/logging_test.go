package middleware_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"testing/slogtest"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/idemkit/idem/dedup/deduptest"
	"github.com/idemkit/idem/middleware"
)

func TestLogHandler(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		buf    bytes.Buffer
		logger *slog.Logger
	}
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		bundle := &testBundle{}
		bundle.logger = slog.New(middleware.LogHandler(slog.NewJSONHandler(&bundle.buf, nil)))
		return bundle
	}
	// lines decodes the JSON lines logged so far.
	lines := func(t *testing.T, bundle *testBundle) []map[string]any {
		t.Helper()
		var out []map[string]any
		for _, line := range strings.Split(strings.TrimSpace(bundle.buf.String()), "\n") {
			m := map[string]any{}
			require.NoError(t, json.Unmarshal([]byte(line), &m), line)
			out = append(out, m)
		}
		return out
	}
	// handle runs h as a handler inside Correlation, Trace and Dedup.
	handle := func(t *testing.T, msg *message.Message, h func(ctx context.Context)) {
		t.Helper()
		tracing, err := middleware.Trace(middleware.TraceConfig{TracerProvider: sdktrace.NewTracerProvider()})
		require.NoError(t, err)
		dedupe, err := middleware.Dedup(middleware.DedupConfig{Store: deduptest.NewMemoryStore(), Consumer: "orders", Logger: testLogger(t)})
		require.NoError(t, err)
		_, err = chain(func(msg *message.Message) ([]*message.Message, error) {
			h(msg.Context())
			return nil, nil
		}, middleware.Correlation, tracing, dedupe)(msg)
		require.NoError(t, err)
	}

	t.Run("IsAConformingHandler", func(t *testing.T) {
		t.Parallel()
		var buf bytes.Buffer
		h := middleware.LogHandler(slog.NewJSONHandler(&buf, nil))
		results := func() []map[string]any {
			var ms []map[string]any
			for _, line := range bytes.Split(buf.Bytes(), []byte{'\n'}) {
				if len(line) == 0 {
					continue
				}
				var m map[string]any
				require.NoError(t, json.Unmarshal(line, &m))
				ms = append(ms, m)
			}
			return ms
		}
		require.NoError(t, slogtest.TestHandler(h, results))
	})

	t.Run("AddsWhatTheContextKnows", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		msg := newMessage("evt-1", "x")
		msg.Metadata.Set(middleware.CorrelationIDKey, "corr-1")
		handle(t, msg, func(ctx context.Context) { bundle.logger.InfoContext(ctx, "charging card", "amount", 42) })
		line := lines(t, bundle)[0]
		require.Equal(t, "corr-1", line["correlation_id"])
		require.Equal(t, "orders", line["consumer"])
		require.Equal(t, "evt-1", line["event_id"])
		require.Len(t, line["trace_id"], 32)
		require.Len(t, line["span_id"], 16)
		require.EqualValues(t, 42, line["amount"])
	})

	t.Run("NeverTwice", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		handle(t, newMessage("evt-1", "x"), func(ctx context.Context) {
			bundle.logger.InfoContext(ctx, "own", "event_id", "mine")
			bundle.logger.With("consumer", "set-by-with").InfoContext(ctx, "with")
		})
		out := bundle.buf.String()
		require.Equal(t, 2, strings.Count(out, `"consumer"`), "one per line:\n%s", out)
		require.Equal(t, 2, strings.Count(out, `"event_id"`), "one per line:\n%s", out)
		ls := lines(t, bundle)
		require.Equal(t, "mine", ls[0]["event_id"], "the record's own value wins")
		require.Equal(t, "set-by-with", ls[1]["consumer"], "the logger's own value wins")
	})

	t.Run("NothingWithoutAMessage", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		bundle.logger.Info("starting")
		line := lines(t, bundle)[0]
		for _, key := range []string{"correlation_id", "consumer", "event_id", "trace_id", "span_id"} {
			require.NotContains(t, line, key)
		}
	})

	t.Run("CorrelationOutsideAConsumer", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		bundle.logger.InfoContext(middleware.WithCorrelationID(context.Background(), "checkout-7"), "placing order")
		require.Equal(t, "checkout-7", lines(t, bundle)[0]["correlation_id"])
	})

	t.Run("InAGroup", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		handle(t, newMessage("evt-1", "x"), func(ctx context.Context) {
			bundle.logger.WithGroup("order").InfoContext(ctx, "charged", "id", 7)
		})
		order, ok := lines(t, bundle)[0]["order"].(map[string]any)
		require.True(t, ok)
		require.Equal(t, "evt-1", order["event_id"], "under a group, like the record's own attributes")
	})

	t.Run("WrapsOnce", func(t *testing.T) {
		t.Parallel()
		h := middleware.LogHandler(slog.DiscardHandler)
		require.Same(t, h, middleware.LogHandler(h))
	})
}
