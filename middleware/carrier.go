package middleware

import (
	"context"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// The W3C Trace Context metadata keys: the trace context travels in a message's
// metadata under the same names as in HTTP headers.
const (
	TraceParentKey = "traceparent"
	TraceStateKey  = "tracestate"
)

// MetadataCarrier lets OpenTelemetry propagators read and write a message's metadata:
//
//	otel.GetTextMapPropagator().Inject(ctx, middleware.MetadataCarrier(msg.Metadata))
//
// Set writes into the map, so the metadata must not be nil. Like message.Metadata, it
// is not safe for concurrent writes.
type MetadataCarrier message.Metadata

var _ propagation.TextMapCarrier = MetadataCarrier(nil)

// Get returns the value of key, or "" when it is missing.
func (c MetadataCarrier) Get(key string) string { return c[key] }

// Set stores value under key.
func (c MetadataCarrier) Set(key, value string) { c[key] = value }

// Keys lists the metadata keys.
func (c MetadataCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// w3c is the propagator idem falls back on when none is configured: DESIGN §5 makes
// W3C traceparent/tracestate in the metadata part of the contract.
var w3c propagation.TextMapPropagator = propagation.TraceContext{}

// propagator is the configured propagator, or, when none is, the global one, falling
// back on W3C Trace Context while the global one propagates nothing (OpenTelemetry's
// default until otel.SetTextMapPropagator is called).
type propagator struct {
	configured propagation.TextMapPropagator
}

// extract returns ctx with the trace context of md, if any. A missing or malformed
// trace context leaves ctx as it is.
func (p propagator) extract(ctx context.Context, md message.Metadata) context.Context {
	if p.configured != nil {
		return p.configured.Extract(ctx, MetadataCarrier(md))
	}
	out := otel.GetTextMapPropagator().Extract(ctx, MetadataCarrier(md))
	if md[TraceParentKey] != "" && trace.SpanContextFromContext(out).Equal(trace.SpanContextFromContext(ctx)) {
		out = w3c.Extract(out, MetadataCarrier(md))
	}
	return out
}

// inject writes the trace context of ctx into md, which must not be nil, replacing
// the W3C trace context md carried.
func (p propagator) inject(ctx context.Context, md message.Metadata) {
	delete(md, TraceParentKey)
	delete(md, TraceStateKey)
	if p.configured != nil {
		p.configured.Inject(ctx, MetadataCarrier(md))
		return
	}
	otel.GetTextMapPropagator().Inject(ctx, MetadataCarrier(md))
	if md[TraceParentKey] == "" {
		w3c.Inject(ctx, MetadataCarrier(md))
	}
}
