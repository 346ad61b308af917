// Tracing follows events across a producer, a consumer that retries, and a dead
// letter, with OpenTelemetry traces and metrics and correlated logs:
//
//	go run ./examples/tracing
//
// A checkout publishes two OrderPlaced events to the "orders" topic through idem's
// publisher decorator, inside its own span ("POST /checkout"). The "billing" consumer
// charges each order through a payment gateway. The gateway accepts ord-1, and
// refuses ord-2 on every attempt: idem retries it twice, then dead-letters it. The
// program then prints each trace as a tree (the producer's send span, the consumer's
// process span with one event per failed attempt, the handler's own span), shows that
// the dead letter kept the trace and span IDs of its process span, and prints idem's
// metrics.
//
// It wires the OpenTelemetry SDK with the stdout exporters, which write every span
// and the metrics as JSON to idem-tracing.json (flag -telemetry; "-" for standard
// output). For a collector, swap in the OTLP exporters
// (go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc and
// …/otlpmetric/otlpmetricgrpc): nothing else changes, since idem uses only the
// OpenTelemetry API and takes its providers from consumer.Config.
//
// idem's log goes to idem-tracing.log (flag -log) through middleware.LogHandler, so
// every line about a message carries its correlation_id, trace_id and span_id. With
// no server to install, it runs on Watermill's in-process gochannel and idem's
// embedded SQLite store, idem-tracing.db (flag -db), recreated on every run.
package main

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/stdout/stdoutmetric"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/retry"
	"github.com/idemkit/idem/sqlite"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if _, err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "tracing:", err)
		stop()
		os.Exit(1)
	}
}

// The scenario.
const (
	topic        = "orders"
	consumerName = "billing"
	maxAttempts  = 3 // ord-2 is retried twice, then dead-lettered
	goodOrder    = "ord-1"
	badOrder     = "ord-2" // the gateway refuses it on every attempt
	ackTimeout   = 20 * time.Second
)

// OrderPlaced is the event, as JSON.
type OrderPlaced struct {
	ID         string
	TotalCents int64
}

// errGatewayUnavailable is transient: idem retries it, with backoff.
var errGatewayUnavailable = errors.New("payment gateway unavailable (503)")

// result is what run observed, for the smoke test.
type result struct {
	// spans are the ended spans, as the exporter got them.
	spans []sdktrace.ReadOnlySpan
	// deadLetterTraceID and deadLetterSpanID are what the dead letter of badOrder
	// recorded.
	deadLetterTraceID, deadLetterSpanID string
	// messages counts idem.messages by outcome.
	messages map[string]int64
}

type options struct {
	dbPath, telemetryPath, logPath string
}

func parseFlags(args []string, stdout io.Writer) (options, error) {
	var opts options
	fs := flag.NewFlagSet("tracing", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&opts.dbPath, "db", "idem-tracing.db", "the SQLite database `FILE`; removed first: every run starts clean")
	fs.StringVar(&opts.telemetryPath, "telemetry", "", "write the exported spans and metrics as JSON to `FILE` (\"-\": standard output); defaults to idem-tracing.json next to the database")
	fs.StringVar(&opts.logPath, "log", "", "write idem's log to `FILE`; defaults to idem-tracing.log next to the database")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprintln(stdout, "usage: go run ./examples/tracing [flags]")
			fs.PrintDefaults()
		}
		return opts, err
	}
	if fs.NArg() > 0 {
		return opts, fmt.Errorf("unexpected argument %q (see -h)", fs.Arg(0))
	}
	dir := filepath.Dir(opts.dbPath)
	opts.telemetryPath = cmp.Or(opts.telemetryPath, filepath.Join(dir, "idem-tracing.json"))
	opts.logPath = cmp.Or(opts.logPath, filepath.Join(dir, "idem-tracing.log"))
	return opts, nil
}

func run(ctx context.Context, args []string, stdout io.Writer) (*result, error) {
	opts, err := parseFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}

	// Telemetry: the SDK, exporting to stdout-style JSON. Only programs wire the SDK;
	// idem itself uses the API.
	telemetry := stdout
	if opts.telemetryPath != "-" {
		f, err := os.Create(opts.telemetryPath)
		if err != nil {
			return nil, fmt.Errorf("create the telemetry file (flag -telemetry): %w", err)
		}
		defer f.Close()
		telemetry = f
	}
	spanExporter, err := stdouttrace.New(stdouttrace.WithWriter(telemetry))
	if err != nil {
		return nil, err
	}
	recorder := tracetest.NewSpanRecorder() // keeps the spans for the tree printed below
	res := resource.NewSchemaless(attribute.String("service.name", "idem-tracing-example"))
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSyncer(spanExporter), // a real service uses WithBatcher
		sdktrace.WithSpanProcessor(recorder),
	)
	defer tp.Shutdown(context.WithoutCancel(ctx))
	reader := sdkmetric.NewManualReader() // a real service uses NewPeriodicReader
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(res), sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.WithoutCancel(ctx))
	propagator := propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	// A service would set these once, globally, and leave consumer.Config's
	// providers empty:
	//   otel.SetTracerProvider(tp); otel.SetMeterProvider(mp); otel.SetTextMapPropagator(propagator)

	// Logs: every line about a message carries its correlation and trace IDs.
	logFile, err := os.Create(opts.logPath)
	if err != nil {
		return nil, fmt.Errorf("create the log file (flag -log): %w", err)
	}
	defer logFile.Close()
	logger := slog.New(middleware.LogHandler(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelDebug})))

	store, err := openStore(ctx, opts.dbPath)
	if err != nil {
		return nil, err
	}
	defer store.Close()

	c, err := consumer.New(consumer.Config{
		Store:           store,
		Retry:           retry.Policy{MaxAttempts: maxAttempts, InitialInterval: 10 * time.Millisecond, MaxInterval: 50 * time.Millisecond},
		TracerProvider:  tp,
		MeterProvider:   mp,
		Propagator:      propagator,
		MessagingSystem: "gochannel",
		Logger:          logger,
	})
	if err != nil {
		return nil, err
	}
	defer c.Close()

	tracer := tp.Tracer("github.com/idemkit/idem/examples/tracing")
	g := &gateway{refuse: badOrder}
	handler := sqlite.Handler(func(ctx context.Context, tx *sql.Tx, o OrderPlaced) error {
		// The handler's own span is a child of idem's process span.
		ctx, span := tracer.Start(ctx, "charge "+o.ID)
		defer span.End()
		if err := g.charge(ctx, o); err != nil {
			span.RecordError(err)
			return err
		}
		logger.InfoContext(ctx, "order billed", "order", o.ID)
		_, err := tx.ExecContext(ctx, "INSERT INTO billed (order_id, total_cents) VALUES (?1, ?2)", o.ID, o.TotalCents)
		return err
	})

	checkout := func(ctx context.Context, pub *middleware.Publisher) error {
		ctx, span := tracer.Start(ctx, "POST /checkout", trace.WithSpanKind(trace.SpanKindServer))
		defer span.End()
		ctx = middleware.WithCorrelationID(ctx, "checkout-"+watermill.NewShortUUID())
		for _, o := range []OrderPlaced{{ID: goodOrder, TotalCents: 1250}, {ID: badOrder, TotalCents: 990}} {
			msg := message.NewMessage(watermill.NewUUID(), fmt.Appendf(nil, `{"ID":%q,"TotalCents":%d}`, o.ID, o.TotalCents))
			msg.Metadata.Set("event_id", "placed-"+o.ID)
			if err := pub.PublishContext(ctx, topic, msg); err != nil {
				return err
			}
		}
		return nil
	}
	if err := consume(ctx, c, handler, checkout, logger); err != nil {
		return nil, err
	}
	if err := tp.ForceFlush(ctx); err != nil {
		return nil, err
	}

	out := &result{spans: recorder.Ended(), messages: map[string]int64{}}
	letter, err := store.DeadLetter(ctx, consumerName, "placed-"+badOrder)
	if err != nil {
		return nil, fmt.Errorf("read the dead letter: %w", err)
	}
	out.deadLetterTraceID, out.deadLetterSpanID = letter.TraceID, letter.SpanID

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		return nil, err
	}
	metricExporter, err := stdoutmetric.New(stdoutmetric.WithWriter(telemetry))
	if err != nil {
		return nil, err
	}
	if err := metricExporter.Export(ctx, &rm); err != nil {
		return nil, err
	}

	p := &printer{w: stdout}
	p.line("idem tracing: one trace per event, from the producer to the dead letter")
	p.line("  telemetry: %s (every span and the metrics, as the stdout exporters write them)", opts.telemetryPath)
	p.line("  log:       %s (each line with correlation_id, trace_id, span_id)", opts.logPath)
	p.line("")
	p.traces(out.spans)
	p.line("dead letter of %s: reason %s after %d attempts", letter.EventID, letter.Reason, letter.Attempts)
	p.line("  trace_id %s span_id %s: the trace and the process span above,", letter.TraceID, letter.SpanID)
	p.line("  kept in the dead letter (and in its log line) to find them in a tracing backend")
	p.line("")
	p.metrics(rm, out.messages)
	return out, p.err
}

func openStore(ctx context.Context, path string) (*sqlite.Store, error) {
	for _, f := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("start from a clean database: %w", err)
		}
	}
	store, err := sqlite.Open(ctx, path, sqlite.Config{Migrate: true})
	if err != nil {
		return nil, err
	}
	if _, err := store.DB().ExecContext(ctx, "CREATE TABLE billed (order_id TEXT NOT NULL, total_cents INTEGER NOT NULL) STRICT"); err != nil {
		store.Close()
		return nil, fmt.Errorf("create the billed table: %w", err)
	}
	return store, nil
}

// gateway stands in for a payment gateway that refuses one order on every attempt.
type gateway struct {
	refuse string
}

func (g *gateway) charge(_ context.Context, o OrderPlaced) error {
	if o.ID == g.refuse {
		return fmt.Errorf("charge %s: %w", o.ID, errGatewayUnavailable)
	}
	return nil
}

// consume runs a router with the billing handler registered through c, runs
// checkout, which publishes, and waits until both deliveries were acked.
func consume(ctx context.Context, c *consumer.Consumer, h message.NoPublishHandlerFunc,
	checkout func(context.Context, *middleware.Publisher) error, logger *slog.Logger,
) error {
	wlog := watermill.NewSlogLoggerWithLevelMapping(logger, map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug})
	pubSub := gochannel.NewGoChannel(gochannel.Config{}, wlog)
	defer pubSub.Close()
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, wlog)
	if err != nil {
		return err
	}
	var acked atomic.Int64
	ackCh := make(chan struct{}, 1)
	router.AddMiddleware(func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			produced, err := h(msg)
			if err == nil {
				acked.Add(1)
				select {
				case ackCh <- struct{}{}:
				default:
				}
			}
			return produced, err
		}
	})
	c.AddConsumerHandler(router, consumerName, topic, pubSub, h)
	runErr := make(chan error, 1)
	go func() { runErr <- router.Run(ctx) }()
	closeRouter := func() error {
		if err := router.Close(); err != nil {
			return fmt.Errorf("close the router: %w", err)
		}
		return <-runErr
	}
	select {
	case <-router.Running():
	case err := <-runErr:
		return fmt.Errorf("router: %w", err)
	}
	// The producer: the decorated publisher adds the correlation ID and a send span.
	if err := checkout(ctx, c.Publisher(pubSub)); err != nil {
		return errors.Join(fmt.Errorf("publish: %w", err), closeRouter())
	}
	timeout := time.NewTimer(ackTimeout)
	defer timeout.Stop()
	for acked.Load() < 2 {
		select {
		case <-ackCh:
		case <-timeout.C:
			return errors.Join(fmt.Errorf("only %d of 2 messages were acked within %s", acked.Load(), ackTimeout), closeRouter())
		case <-ctx.Done():
			return errors.Join(ctx.Err(), closeRouter())
		}
	}
	return closeRouter()
}

// printer writes the report, keeping the first write error.
type printer struct {
	w   io.Writer
	err error
}

func (p *printer) line(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format+"\n", args...)
	}
}

// traces prints each trace as a tree of spans, with the events of each span.
func (p *printer) traces(spans []sdktrace.ReadOnlySpan) {
	children := map[trace.SpanID][]sdktrace.ReadOnlySpan{}
	var roots []sdktrace.ReadOnlySpan
	ids := map[trace.SpanID]bool{}
	for _, s := range spans {
		ids[s.SpanContext().SpanID()] = true
	}
	for _, s := range spans {
		if parent := s.Parent(); parent.IsValid() && ids[parent.SpanID()] {
			children[parent.SpanID()] = append(children[parent.SpanID()], s)
		} else {
			roots = append(roots, s)
		}
	}
	byStart := func(a, b sdktrace.ReadOnlySpan) int { return a.StartTime().Compare(b.StartTime()) }
	slices.SortFunc(roots, byStart)
	var walk func(s sdktrace.ReadOnlySpan, depth int)
	walk = func(s sdktrace.ReadOnlySpan, depth int) {
		indent := strings.Repeat("  ", depth+1)
		p.line("%s%s [%s]%s", indent, s.Name(), s.SpanKind(), describe(s))
		for _, e := range s.Events() {
			p.line("%s  · %s%s", indent, e.Name, eventText(e.Attributes))
		}
		kids := children[s.SpanContext().SpanID()]
		slices.SortFunc(kids, byStart)
		for _, k := range kids {
			walk(k, depth+1)
		}
	}
	for _, r := range roots {
		p.line("trace %s", r.SpanContext().TraceID())
		walk(r, 0)
		p.line("")
	}
}

// describe returns the attributes of s worth a glance.
func describe(s sdktrace.ReadOnlySpan) string {
	var parts []string
	for _, kv := range s.Attributes() {
		switch kv.Key {
		case "idem.event_id", "idem.outcome", "idem.attempts", "idem.dead_letter.reason", "messaging.message.conversation_id":
			parts = append(parts, fmt.Sprintf("%s=%s", kv.Key, kv.Value.Emit()))
		}
	}
	if s.SpanKind() == trace.SpanKindConsumer {
		parts = append(parts, "span_id="+s.SpanContext().SpanID().String())
	}
	if len(parts) == 0 {
		return ""
	}
	return " " + strings.Join(parts, " ")
}

func eventText(attrs []attribute.KeyValue) string {
	var parts []string
	for _, kv := range attrs {
		switch kv.Key {
		case "idem.attempt":
			parts = append(parts, "attempt "+kv.Value.Emit())
		case "exception.message":
			parts = append(parts, fmt.Sprintf("%q", kv.Value.AsString()))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return ": " + strings.Join(parts, " ")
}

// metrics prints idem's counters and fills messages with idem.messages by outcome.
func (p *printer) metrics(rm metricdata.ResourceMetrics, messages map[string]int64) {
	p.line("metrics (attributes: consumer, topic, and outcome, result or reason):")
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					p.line("  %-28s %-32s %d", m.Name, pointLabel(dp.Attributes), dp.Value)
					if m.Name == "idem.messages" {
						o, _ := dp.Attributes.Value("outcome")
						messages[o.AsString()] += dp.Value
					}
				}
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					p.line("  %-28s %-32s %d recorded, sum %.4fs", m.Name, pointLabel(dp.Attributes), dp.Count, dp.Sum)
				}
			case metricdata.Gauge[int64]:
				for _, dp := range d.DataPoints {
					p.line("  %-28s %-32s %d", m.Name, "", dp.Value)
				}
			case metricdata.Gauge[float64]:
				for _, dp := range d.DataPoints {
					p.line("  %-28s %-32s %.1fs", m.Name, "", dp.Value)
				}
			}
		}
	}
}

// pointLabel shows the attributes of a data point other than consumer and topic,
// which are the same throughout.
func pointLabel(s attribute.Set) string {
	var parts []string
	for _, kv := range s.ToSlice() {
		if kv.Key != "consumer" && kv.Key != "topic" {
			parts = append(parts, fmt.Sprintf("%s=%s", kv.Key, kv.Value.Emit()))
		}
	}
	return strings.Join(parts, " ")
}
