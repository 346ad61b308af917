package sqlite_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/sqlite"
)

// BenchmarkRun measures one processed event: claim, one effect row written through
// the transaction, commit (an fsync: synchronous=FULL), at 1 and 8 concurrent
// callers. Run:
//
//	go test -run '^$' -bench Run ./sqlite/
func BenchmarkRun(b *testing.B) {
	for _, conc := range []int{1, 8} {
		b.Run(fmt.Sprintf("concurrency=%d", conc), func(b *testing.B) {
			store := testStore(b, sqlite.Config{})
			if _, err := store.DB().Exec("CREATE TABLE effects (event_id TEXT PRIMARY KEY) STRICT"); err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			var next atomic.Int64
			var failed atomic.Value
			var wg sync.WaitGroup
			b.ResetTimer()
			for range conc {
				wg.Go(func() {
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						id := "evt-" + strconv.FormatInt(i, 10)
						_, err := store.Run(ctx, dedup.Key{Consumer: "orders", EventID: id}, func(ctx context.Context) error {
							tx, _ := sqlite.TxFromContext(ctx)
							_, err := tx.ExecContext(ctx, "INSERT INTO effects (event_id) VALUES (?1)", id)
							return err
						})
						if err != nil {
							failed.Store(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			if err, ok := failed.Load().(error); ok {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
