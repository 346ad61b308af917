package soak

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
)

// consumerEnv carries a consumer process's ConsumerConfig, as JSON: the harness runs
// its own binary again with it set.
const consumerEnv = "IDEM_SOAK_CONSUMER"

// crashExitCode is what a consumer exits with when a crash-poison event's handler
// calls os.Exit.
const crashExitCode = 86

// ConsumerConfig configures one consumer process.
type ConsumerConfig struct {
	LegConfig
	Instance    int    `json:"instance"`
	MaxAttempts int    `json:"max_attempts"`
	CrashGuard  int    `json:"crash_guard"`
	WebhookURL  string `json:"webhook_url"`
	StatsURL    string `json:"stats_url"`
}

// payload is the JSON body of every event message.
type payload struct {
	ID        string `json:"id"`
	Class     Class  `json:"class"`
	FailFirst int    `json:"fail_first,omitempty"`
	From      int    `json:"from"`
	To        int    `json:"to"`
	Amount    int64  `json:"amount"`
}

// ConsumerStats is what a consumer process reports to the harness, cumulative since it
// started.
type ConsumerStats struct {
	Leg      string `json:"leg"`
	Instance int    `json:"instance"`
	PID      int    `json:"pid"`
	// Deliveries counts deliveries that reached idem's stack; Outcomes counts them by
	// idem's outcome (idem.messages); Retries counts in-process retries (idem.retries).
	Deliveries    int64            `json:"deliveries"`
	HandlerCalls  int64            `json:"handler_calls"`
	Outcomes      map[string]int64 `json:"outcomes"`
	Retries       int64            `json:"retries"`
	AlertsSent    int64            `json:"alerts_sent"`
	AlertsFailed  int64            `json:"alerts_failed"`
	AlertsDropped int64            `json:"alerts_dropped"`
	Final         bool             `json:"final"`
}

var (
	errGateway  = errors.New("payment gateway timeout")
	errUpstream = errors.New("ledger service unavailable")
)

// consumerMain runs one consumer process until SIGTERM: the whole stack on the leg's
// subscriber, with the crash guard on, alerts to the harness's webhook. It prints
// "ready" once consuming and "first" when its first delivery has an outcome.
func consumerMain(raw string) int {
	var cfg ConsumerConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Println("error:", err)
		return 2
	}
	if err := runConsumer(cfg); err != nil {
		fmt.Println("error:", err)
		return 2
	}
	return 0
}

func runConsumer(cfg ConsumerConfig) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).
		With("leg", cfg.Leg, "instance", cfg.Instance, "pid", os.Getpid())

	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return err
	}
	pcfg.ConnConfig.RuntimeParams["application_name"] = consumerAppName(cfg.Leg, cfg.Instance)
	pcfg.MaxConns = 8
	pcfg.ConnConfig.ConnectTimeout = 5 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	store, err := postgres.New(pool, postgres.Config{Schema: cfg.Schema})
	if err != nil {
		return err
	}

	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()

	webhook, err := dlq.NewWebhook(dlq.WebhookConfig{URL: cfg.WebhookURL, Timeout: 5 * time.Second, Retries: 5, Backoff: 50 * time.Millisecond})
	if err != nil {
		return err
	}
	// A window of a nanosecond alerts every dead letter on its own, so that the
	// harness can tell which dead letters were alerted.
	alerts, err := dlq.NewDispatcher(dlq.DispatcherConfig{Alerters: []dlq.Alerter{webhook}, Window: time.Nanosecond, QueueSize: 1 << 16, Logger: logger})
	if err != nil {
		return err
	}
	c, err := consumer.New(consumer.Config{
		Store:           store,
		Retry:           retry.Policy{MaxAttempts: cfg.MaxAttempts, InitialInterval: time.Millisecond, MaxInterval: 20 * time.Millisecond},
		AckDeadline:     cfg.AckDeadline,
		CrashGuard:      cfg.CrashGuard,
		Alerts:          alerts,
		TracerProvider:  tp,
		MeterProvider:   mp,
		MessagingSystem: messagingSystem(cfg.Leg),
		Logger:          logger,
	})
	if err != nil {
		return err
	}
	defer c.Close()
	sub, err := newSubscriber(cfg.LegConfig, cfg.Instance, pool)
	if err != nil {
		return err
	}

	var stats ConsumerStats
	stats.Leg, stats.Instance, stats.PID = cfg.Leg, cfg.Instance, os.Getpid()
	var deliveries, calls atomic.Int64
	var firstOnce sync.Once
	h := c.WrapConsumer(consumerName, handler(cfg, pool, &calls))
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 15 * time.Second}, watermill.NopLogger{})
	if err != nil {
		return err
	}
	r.AddConsumerHandler(consumerName, cfg.Topic, sub, func(msg *message.Message) error {
		deliveries.Add(1)
		err := h(msg)
		firstOnce.Do(func() { fmt.Println("first") })
		return err
	})

	report := func(final bool) {
		s := stats
		s.Deliveries, s.HandlerCalls, s.Final = deliveries.Load(), calls.Load(), final
		s.Outcomes, s.Retries = collectMetrics(reader)
		s.AlertsSent, s.AlertsFailed, s.AlertsDropped = alerts.Sent(), alerts.Failed(), alerts.Dropped()
		postJSON(cfg.StatsURL, s)
	}
	done := make(chan error, 1)
	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- r.Run(runCtx) }()
	select {
	case <-r.Running():
	case err := <-done:
		return err
	case <-ctx.Done():
		return nil
	}
	fmt.Println("ready")
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for running := true; running; {
		select {
		case <-tick.C:
			report(false)
		case <-ctx.Done():
			running = false
		case err := <-done:
			return fmt.Errorf("router stopped: %w", err)
		}
	}
	cancel()
	closeErr := r.Close()
	<-done
	cctx, ccancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer ccancel()
	alertErr := alerts.Close(cctx)
	report(true)
	fmt.Println("stopped")
	return errors.Join(closeErr, alertErr)
}

// consumerAppName is the application_name of a consumer process's connections, by
// which the chaos loop finds them to terminate.
func consumerAppName(leg string, instance int) string {
	return fmt.Sprintf("idem-soak-%s-%d", leg, instance)
}

// handler is the soak's handler: a non-idempotent effect (a row in the effects log,
// which has no unique key, and a transfer between two accounts), written in the
// attempt's transaction, then the fate of the event's class.
func handler(cfg ConsumerConfig, pool *pgxpool.Pool, calls *atomic.Int64) message.NoPublishHandlerFunc {
	effects := pgx.Identifier{cfg.Schema, "effects"}.Sanitize()
	accounts := pgx.Identifier{cfg.Schema, "accounts"}.Sanitize()
	callsTable := pgx.Identifier{cfg.Schema, "calls"}.Sanitize()
	pid := os.Getpid()
	return func(msg *message.Message) error {
		calls.Add(1)
		ctx := msg.Context()
		tx, ok := postgres.TxFromContext(ctx)
		if !ok {
			return retry.Infrastructure(postgres.ErrNoTx)
		}
		var p payload
		if err := json.Unmarshal(msg.Payload, &p); err != nil {
			return retry.Permanent(fmt.Errorf("decode event: %w", err))
		}
		var traceID, parentID string
		span := trace.SpanFromContext(ctx)
		if sc := span.SpanContext(); sc.IsValid() {
			traceID = sc.TraceID().String()
		}
		if ro, ok := span.(sdktrace.ReadOnlySpan); ok && ro.Parent().IsValid() {
			parentID = ro.Parent().SpanID().String()
		}
		if _, err := tx.Exec(ctx, "INSERT INTO "+effects+" (event_id, instance, pid, trace_id, parent_span_id, applied_at) VALUES ($1, $2, $3, $4, $5, $6)",
			p.ID, cfg.Instance, pid, traceID, parentID, time.Now()); err != nil {
			return err
		}
		// Both accounts, in the order of their IDs, so that concurrent transfers never
		// deadlock.
		first, second := p.From, p.To
		if second < first {
			first, second = second, first
		}
		for _, id := range []int{first, second} {
			delta := p.Amount
			if id == p.From {
				delta = -p.Amount
			}
			if _, err := tx.Exec(ctx, "UPDATE "+accounts+" SET balance = balance + $2 WHERE id = $1", id, delta); err != nil {
				return err
			}
		}
		switch p.Class {
		case ClassTransient:
			// Counted outside the transaction, so that failed attempts count.
			var n int
			err := pool.QueryRow(ctx, "INSERT INTO "+callsTable+" AS c (event_id, n) VALUES ($1, 1) ON CONFLICT (event_id) DO UPDATE SET n = c.n + 1 RETURNING n", p.ID).Scan(&n)
			if err != nil {
				return err
			}
			if n <= p.FailFirst {
				if n%2 == 0 {
					// Longer than the delivery's budget: handed back to the broker.
					return retry.After(time.Hour, fmt.Errorf("event %s: %w", p.ID, errGateway))
				}
				return fmt.Errorf("event %s: %w", p.ID, errGateway)
			}
		case ClassPermanent:
			return retry.Permanent(fmt.Errorf("event %s: unknown currency %q", p.ID, "XXX"))
		case ClassTransientPoison:
			if calls.Load()%2 == 0 {
				return retry.After(time.Hour, fmt.Errorf("event %s: %w", p.ID, errUpstream))
			}
			return fmt.Errorf("event %s: %w", p.ID, errUpstream)
		case ClassCrash:
			os.Exit(crashExitCode) // with the effects written and not committed
		}
		return nil
	}
}

// collectMetrics reads idem.messages by outcome and idem.retries from reader.
func collectMetrics(reader *sdkmetric.ManualReader) (map[string]int64, int64) {
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		return nil, 0
	}
	outcomes := map[string]int64{}
	var retries int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, dp := range sum.DataPoints {
				switch m.Name {
				case "idem.messages":
					o, _ := dp.Attributes.Value("outcome")
					outcomes[o.AsString()] += dp.Value
				case "idem.retries":
					retries += dp.Value
				}
			}
		}
	}
	return outcomes, retries
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

func postJSON(url string, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		return
	}
	resp, err := httpClient.Post(url, "application/json", bytes.NewReader(body))
	if err == nil {
		_ = resp.Body.Close()
	}
}
