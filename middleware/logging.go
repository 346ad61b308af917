package middleware

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel/trace"
)

// The attribute keys [LogHandler] adds, the same idem's own log lines use.
const (
	logKeyCorrelationID = "correlation_id"
	logKeyConsumer      = "consumer"
	logKeyEventID       = "event_id"
	logKeyTraceID       = "trace_id"
	logKeySpanID        = "span_id"
)

// the bits of logKeys, to note which a record has already.
const (
	hasCorrelationID uint8 = 1 << iota
	hasConsumer
	hasEventID
	hasTraceID
	hasSpanID
)

func logKeyBit(key string) uint8 {
	switch key {
	case logKeyCorrelationID:
		return hasCorrelationID
	case logKeyConsumer:
		return hasConsumer
	case logKeyEventID:
		return hasEventID
	case logKeyTraceID:
		return hasTraceID
	case logKeySpanID:
		return hasSpanID
	}
	return 0
}

// LogHandler wraps h so that every record logged with a context (the ctx of
// slog.InfoContext, Logger.LogAttrs, …) carries what the context knows of the message
// being handled:
//
//   - correlation_id: the correlation ID ([CorrelationID]);
//   - consumer and event_id: the event's dedup key ([EventKey]);
//   - trace_id and span_id: the current span, when it is valid.
//
// Each is added only when the context has it and the record (or the logger, through
// With) does not carry that key already, so idem's own log lines, which name the
// consumer and event, show each once. Under a group (Logger.WithGroup) the attributes
// land in the group, like any attribute of the record. Install it once, on the logger
// the service and idem share:
//
//	logger := slog.New(middleware.LogHandler(slog.NewJSONHandler(os.Stderr, nil)))
//	slog.SetDefault(logger)
//
// The returned handler is safe for concurrent use when h is.
func LogHandler(h slog.Handler) slog.Handler {
	if lh, ok := h.(*logHandler); ok {
		return lh
	}
	return &logHandler{h: h}
}

type logHandler struct {
	h slog.Handler
	// preset marks the keys the logger carries already (added through With, in any
	// group).
	preset uint8
}

func (l *logHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return l.h.Enabled(ctx, level)
}

func (l *logHandler) Handle(ctx context.Context, r slog.Record) error {
	if ctx == nil {
		return l.h.Handle(ctx, r)
	}
	correlation, hasCorrelation := CorrelationID(ctx)
	key, hasKey := EventKey(ctx)
	sc := trace.SpanContextFromContext(ctx)
	if !hasCorrelation && !hasKey && !sc.IsValid() {
		return l.h.Handle(ctx, r)
	}
	have := l.preset
	r.Attrs(func(a slog.Attr) bool {
		have |= logKeyBit(a.Key)
		return true
	})
	var add [5]slog.Attr
	n := 0
	if hasCorrelation && have&hasCorrelationID == 0 {
		add[n] = slog.String(logKeyCorrelationID, correlation)
		n++
	}
	if hasKey && have&hasConsumer == 0 {
		add[n] = slog.String(logKeyConsumer, key.Consumer)
		n++
	}
	if hasKey && have&hasEventID == 0 {
		add[n] = slog.String(logKeyEventID, key.EventID)
		n++
	}
	if sc.IsValid() && have&hasTraceID == 0 {
		add[n] = slog.String(logKeyTraceID, sc.TraceID().String())
		n++
	}
	if sc.IsValid() && have&hasSpanID == 0 {
		add[n] = slog.String(logKeySpanID, sc.SpanID().String())
		n++
	}
	if n > 0 {
		r = r.Clone() // the record may share its attributes with the caller's copy
		r.AddAttrs(add[:n]...)
	}
	return l.h.Handle(ctx, r)
}

func (l *logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return l
	}
	preset := l.preset
	for _, a := range attrs {
		preset |= logKeyBit(a.Key)
	}
	return &logHandler{h: l.h.WithAttrs(attrs), preset: preset}
}

func (l *logHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return l
	}
	return &logHandler{h: l.h.WithGroup(name), preset: l.preset}
}
