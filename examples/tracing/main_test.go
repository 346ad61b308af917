package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// exportedSpan is a span as the stdout exporter writes it.
type exportedSpan struct {
	Name        string
	SpanKind    int // 4 producer, 5 consumer (trace.SpanKind)
	SpanContext struct{ TraceID, SpanID string }
	Parent      struct{ TraceID, SpanID string }
	Attributes  []struct {
		Key   string
		Value struct{ Value any }
	}
	Events []struct{ Name string }
}

func (s exportedSpan) attr(key string) any {
	for _, a := range s.Attributes {
		if a.Key == key {
			return a.Value.Value
		}
	}
	return nil
}

// readSpans decodes the spans from the telemetry file, skipping the metrics.
func readSpans(t *testing.T, path string) []exportedSpan {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var spans []exportedSpan
	dec := json.NewDecoder(f)
	for {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return spans
		}
		require.NoError(t, err)
		if !bytes.Contains(raw, []byte(`"SpanContext"`)) {
			continue // the metrics
		}
		var s exportedSpan
		require.NoError(t, json.Unmarshal(raw, &s))
		spans = append(spans, s)
	}
}

func TestTracing(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	var stdout bytes.Buffer
	res, err := run(ctx, []string{"-db", filepath.Join(dir, "tracing.db")}, &stdout)
	require.NoError(t, err, stdout.String())

	spans := readSpans(t, filepath.Join(dir, "idem-tracing.json"))
	require.Len(t, spans, len(res.spans), "the exporter got every span")
	byID := map[string]exportedSpan{}
	for _, s := range spans {
		byID[s.SpanContext.SpanID] = s
	}
	var checkout exportedSpan
	process := map[string]exportedSpan{} // by event ID
	for _, s := range spans {
		switch {
		case s.Name == "POST /checkout":
			checkout = s
		case s.SpanKind == 5:
			process[s.attr("idem.event_id").(string)] = s
		}
	}
	require.NotEmpty(t, checkout.SpanContext.TraceID)
	require.Len(t, process, 2)
	for id, s := range process {
		send, ok := byID[s.Parent.SpanID]
		require.True(t, ok, "%s: the process span's parent was exported", id)
		require.Equal(t, "send orders", send.Name)
		require.Equal(t, 4, send.SpanKind, "a producer span")
		require.Equal(t, checkout.SpanContext.SpanID, send.Parent.SpanID, "sent from the checkout")
		require.Equal(t, checkout.SpanContext.TraceID, s.SpanContext.TraceID, "%s: one trace from the checkout to the consumer", id)
	}

	good := process["placed-"+goodOrder]
	require.Equal(t, "processed", good.attr("idem.outcome"))
	require.Empty(t, good.Events)

	bad := process["placed-"+badOrder]
	require.Equal(t, "dead-lettered", bad.attr("idem.outcome"))
	require.Equal(t, "exhausted", bad.attr("idem.dead_letter.reason"))
	require.EqualValues(t, maxAttempts, bad.attr("idem.attempts"))
	require.Len(t, bad.Events, maxAttempts, "two retried attempts and the last one")
	for _, e := range bad.Events {
		require.Equal(t, "idem.attempt_failed", e.Name)
	}
	require.Equal(t, bad.SpanContext.TraceID, res.deadLetterTraceID, "the dead letter keeps the trace")
	require.Equal(t, bad.SpanContext.SpanID, res.deadLetterSpanID, "and the process span")

	require.Equal(t, map[string]int64{"processed": 1, "dead-lettered": 1}, res.messages)
	out := stdout.String()
	require.Contains(t, out, "idem.outcome=dead-lettered")
	require.Contains(t, out, "trace_id "+bad.SpanContext.TraceID+" span_id "+bad.SpanContext.SpanID)

	log, err := os.ReadFile(filepath.Join(dir, "idem-tracing.log"))
	require.NoError(t, err)
	var deadLettered string
	for _, line := range strings.Split(string(log), "\n") {
		if strings.Contains(line, `msg="idem: message dead-lettered"`) {
			deadLettered = line
		}
	}
	require.Contains(t, deadLettered, "trace_id="+bad.SpanContext.TraceID, "the log line carries the trace")
	require.Contains(t, deadLettered, "span_id="+bad.SpanContext.SpanID)
}
