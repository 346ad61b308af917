package dlq

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

const scope = "github.com/idemkit/idem/dlq"

// MetricAlerter is an Alerter that counts dead letters on the OpenTelemetry counter
// idem.dead_letter.alerts, with attributes consumer, topic, reason and summary; a
// summary adds its Count. Alerting rules then fire on the counter's rate. It is safe
// for concurrent use.
type MetricAlerter struct {
	counter metric.Int64Counter
}

// NewMetricAlerter creates the counter on provider (nil: otel.GetMeterProvider()).
func NewMetricAlerter(provider metric.MeterProvider) (*MetricAlerter, error) {
	if provider == nil {
		provider = otel.GetMeterProvider()
	}
	c, err := provider.Meter(scope).Int64Counter("idem.dead_letter.alerts",
		metric.WithDescription("Dead letters announced by alerts, by consumer, topic, reason and whether in a summary."),
		metric.WithUnit("{dead_letter}"))
	if err != nil {
		return nil, fmt.Errorf("dlq: create counter idem.dead_letter.alerts: %w", err)
	}
	return &MetricAlerter{counter: c}, nil
}

// Alert adds a.Count to the counter.
func (m *MetricAlerter) Alert(ctx context.Context, a Alert) error {
	m.counter.Add(ctx, int64(a.Count), metric.WithAttributes(
		attribute.String("consumer", a.Consumer),
		attribute.String("topic", a.Topic),
		attribute.String("reason", string(a.Reason)),
		attribute.Bool("summary", a.Summary),
	))
	return nil
}
