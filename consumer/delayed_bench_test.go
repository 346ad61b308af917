package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
)

// BenchmarkHeadOfLine measures what a flaky event costs the events behind it on
// watermill-sql, which hands its subscriber one message at a time: 100 events, of
// which every third fails its first attempt, with in-process retries and with
// delayed retries. It reports the time to apply them all and the p50/p99 delay from
// publish to effect of the events that never failed. Run:
//
//	go test -run '^$' -bench HeadOfLine -benchtime 3x ./consumer/
func BenchmarkHeadOfLine(b *testing.B) {
	for _, delayed := range []bool{false, true} {
		b.Run(map[bool]string{false: "in-process", true: "delayed"}[delayed], func(b *testing.B) {
			var total time.Duration
			var good []time.Duration
			for range b.N {
				t, g := headOfLineRun(b, delayed)
				total += t
				good = append(good, g...)
			}
			slices.Sort(good)
			b.ReportMetric(total.Seconds()/float64(b.N), "s/100-events")
			b.ReportMetric(float64(good[len(good)/2].Milliseconds()), "p50-ms")
			b.ReportMetric(float64(good[len(good)*99/100].Milliseconds()), "p99-ms")
		})
	}
}

func headOfLineRun(b *testing.B, delayed bool) (time.Duration, []time.Duration) {
	b.Helper()
	store, pool := testdb.Store(b)
	effects := pgx.Identifier{store.Schema(), "effects"}.Sanitize()
	if _, err := pool.Exec(context.Background(), "CREATE TABLE "+effects+" (event_id text NOT NULL)"); err != nil {
		b.Fatal(err)
	}
	br := newSQLBroker(b, pool)
	cfg := consumer.Config{Store: store, Logger: discardLogger(),
		Retry: retry.Policy{MaxAttempts: 5, InitialInterval: 100 * time.Millisecond, MaxInterval: 400 * time.Millisecond}}
	if delayed {
		cfg.DelayedRetry = consumer.DelayedRetryConfig{Publisher: br.pub, Interval: 20 * time.Millisecond}
	}
	c, err := consumer.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if delayed {
		go func() { _ = c.RunDelayedRetries(ctx) }()
	}
	const n = 100
	var mu sync.Mutex
	failed := map[string]bool{}
	applied := map[string]time.Time{}
	done := make(chan struct{})
	runRouter(b, func(r *message.Router) {
		c.AddConsumerHandler(r, "billing", br.topic, br.sub, postgres.Handler(func(ctx context.Context, tx pgx.Tx, e struct{ N int }) error {
			id := fmt.Sprintf("evt-%d", e.N)
			mu.Lock()
			first := e.N%3 == 0 && !failed[id]
			failed[id] = true
			mu.Unlock()
			if first {
				return errors.New("gateway timeout")
			}
			if _, err := tx.Exec(ctx, "INSERT INTO "+effects+" (event_id) VALUES ($1)", id); err != nil {
				return err
			}
			mu.Lock()
			applied[id] = time.Now()
			if len(applied) == n {
				close(done)
			}
			mu.Unlock()
			return nil
		}))
	})
	published := make([]time.Time, n)
	start := time.Now()
	for i := range n {
		published[i] = time.Now()
		br.publish(b, newMessage(fmt.Sprintf("evt-%d", i), fmt.Sprintf(`{"N": %d}`, i)))
	}
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		b.Fatal("not every event was applied within two minutes")
	}
	total := time.Since(start)
	mu.Lock()
	defer mu.Unlock()
	var good []time.Duration
	for i := range n {
		if i%3 != 0 {
			good = append(good, applied[fmt.Sprintf("evt-%d", i)].Sub(published[i]))
		}
	}
	return total, good
}
