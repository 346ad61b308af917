package consumer_test

import (
	"bytes"
	"encoding/hex"
	"log/slog"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dedup"
)

// lockedBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestConflictingDuplicatesAreLogged: a duplicate whose payload differs from the
// processed event's (a producer reusing an event ID) is skipped like any duplicate,
// and logged with IDs and hashes only; a duplicate with the same payload is not, and
// neither is anything with Config.SkipPayloadHash.
func TestConflictingDuplicatesAreLogged(t *testing.T) {
	t.Parallel()
	for _, skip := range []bool{false, true} {
		t.Run(map[bool]string{false: "Hashed", true: "SkipPayloadHash"}[skip], func(t *testing.T) {
			t.Parallel()
			bothStores(t, func(t *testing.T, store reviewStore) {
				var logs lockedBuffer
				reader := sdkmetric.NewManualReader()
				c, err := consumer.New(consumer.Config{
					Store: store, Retry: fastPolicy(), SkipPayloadHash: skip,
					MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)),
					Logger:        slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
				})
				require.NoError(t, err)
				var runs int
				h := c.WrapConsumer("billing", func(*message.Message) error { runs++; return nil })

				require.NoError(t, deliver(h, newMessage("evt-1", `{"total": 10}`)))
				require.NoError(t, deliver(h, newMessage("evt-1", `{"total": 10}`)))
				require.Empty(t, logs.String(), "a duplicate with the same payload is no conflict")
				require.NoError(t, deliver(h, newMessage("evt-1", `{"total": 99999}`)), "acked")
				require.Equal(t, 1, runs, "the conflicting duplicate is skipped")
				var rm metricdata.ResourceMetrics
				require.NoError(t, reader.Collect(t.Context(), &rm))
				var conflicts int64
				for _, sm := range rm.ScopeMetrics {
					for _, m := range sm.Metrics {
						if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == "idem.duplicates.conflicting" {
							for _, dp := range sum.DataPoints {
								conflicts += dp.Value
							}
						}
					}
				}
				if skip {
					require.Zero(t, conflicts)
					require.Empty(t, logs.String())
					return
				}
				require.Equal(t, int64(1), conflicts, "idem.duplicates.conflicting")
				out := logs.String()
				require.Contains(t, out, "conflicting duplicate skipped")
				require.Contains(t, out, "event_id=evt-1")
				require.Contains(t, out, "payload_sha256="+hex.EncodeToString(dedup.HashPayload([]byte(`{"total": 99999}`))))
				require.Contains(t, out, "processed_payload_sha256="+hex.EncodeToString(dedup.HashPayload([]byte(`{"total": 10}`))))
				require.NotContains(t, out, "99999", "no payload in the log")
			})
		})
	}
}
