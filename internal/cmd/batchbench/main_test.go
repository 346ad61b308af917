package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem/internal/testdb"
)

func setupBench(t testing.TB, inFlight int) *bench {
	t.Helper()
	pool := testdb.PoolWith(t, func(c *pgxpool.Config) { c.MaxConns = int32(inFlight) + 2 })
	b, err := newBench(context.Background(), pool, testdb.Schema(t, pool), 64, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.store.Close)
	return b
}

// TestModes: every mode the command compares applies each event once, duplicates
// included, so that the figures compare the same work.
func TestModes(t *testing.T) {
	t.Parallel()
	const events, inFlight = 300, 16
	b := setupBench(t, inFlight)
	ctx := context.Background()
	for i, m := range b.modes() {
		h, err := m.build()
		if err != nil {
			t.Fatal(err)
		}
		prefix := fmt.Sprintf("m%d-", i)
		for pass := range 2 { // the second pass delivers every event again
			r, err := b.measure(ctx, h, inFlight, events, prefix)
			if err != nil {
				t.Fatalf("%s, pass %d: %v", m.name, pass, err)
			}
			if r.rate <= 0 || r.p99 < r.p50 {
				t.Fatalf("%s: implausible result %+v", m.name, r)
			}
		}
		var n int
		if err := b.pool.QueryRow(ctx, "SELECT count(*) FROM "+b.effects+" WHERE event_id LIKE $1", prefix+"%").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != events {
			t.Errorf("%s: %d effect rows for %d events delivered twice", m.name, n, events)
		}
	}
}

// BenchmarkModes is the command's comparison as a Go benchmark: each mode at 16, 32
// and 64 deliveries in flight, b.N events each, with msgs/s, p50 and p99 latency and
// WAL bytes per message. The command interleaves the modes in rounds, which suits a
// shared machine better; run this one with -count for medians:
//
//	go test -run '^$' -bench Modes -benchtime 5000x -count 3 ./internal/cmd/batchbench/
func BenchmarkModes(b *testing.B) {
	for _, inFlight := range []int{16, 32, 64} {
		for i, m := range new(bench).modes() {
			name := strings.ReplaceAll(m.name, " ", "-")
			b.Run(fmt.Sprintf("in-flight=%d/%s", inFlight, name), func(b *testing.B) {
				bench := setupBench(b, inFlight)
				h, err := bench.modes()[i].build()
				if err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				r, err := bench.measure(context.Background(), h, inFlight, b.N, "b-")
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(r.rate, "msgs/s")
				b.ReportMetric(float64(r.p50.Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(r.p99.Microseconds())/1000, "p99-ms")
				b.ReportMetric(r.walPerMsg, "WAL-B/msg")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}
