package dlqtest_test

import (
	"testing"

	"github.com/idemkit/idem/dlq/dlqtest"
)

func TestMemoryStoreConformance(t *testing.T) {
	t.Parallel()
	dlqtest.Run(t, func(t *testing.T) dlqtest.Harness {
		s := dlqtest.NewMemoryStore()
		return dlqtest.Harness{Store: s, Get: s.Get}
	})
}
