package deduptest_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/idemkit/idem/dedup/deduptest"
)

func TestMemoryStoreConformance(t *testing.T) {
	t.Parallel()
	deduptest.Run(t, func(t *testing.T) deduptest.Harness {
		var mu sync.Mutex
		effects := map[string]int{}
		return deduptest.Harness{
			PayloadHashes: true,
			Store:         deduptest.NewMemoryStore(),
			Effect: func(ctx context.Context, id string) error {
				tx, ok := deduptest.TxFromContext(ctx)
				if !ok {
					return errors.New("no transaction in the context")
				}
				tx.OnCommit(func() {
					mu.Lock()
					defer mu.Unlock()
					effects[id]++
				})
				return nil
			},
			Effects: func(ctx context.Context, id string) (int, error) {
				mu.Lock()
				defer mu.Unlock()
				return effects[id], nil
			},
		}
	})
}
