package demo

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/internal/testdb"
)

// RunOnBothStores is the broker examples' smoke test: it runs the example twice on a
// SQLite file and twice on a PostgreSQL schema (the second run of each must start
// clean), each time on a queue or stream of its own, checks the report, then lets
// check look at the broker. brokerArgs returns the example's broker flags for a
// queue or stream named name.
func RunOnBothStores(t *testing.T,
	run func(ctx context.Context, args []string, stdout io.Writer) error,
	brokerArgs func(name string) []string,
	check func(t *testing.T, name, out string),
) {
	t.Helper()
	runExample := func(t *testing.T, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		name := randomName("idem_example_")
		var out bytes.Buffer
		start := time.Now()
		require.NoError(t, run(ctx, append(brokerArgs(name), args...), &out), out.String())
		t.Logf("%s in %s", args, time.Since(start).Round(time.Millisecond))
		for _, line := range ReportLines() {
			require.Contains(t, out.String(), line)
		}
		check(t, name, out.String())
		return out.String()
	}

	t.Run("SQLite", func(t *testing.T) {
		t.Parallel()
		db := filepath.Join(t.TempDir(), "example.db")
		for range 2 { // the second run starts from a clean file
			require.Contains(t, runExample(t, "-db", db, "-database-url", ""), "store SQLite "+db)
		}
	})

	t.Run("PostgreSQL", func(t *testing.T) {
		t.Parallel()
		pool := testdb.Pool(t)
		schema := randomName("example_")
		t.Cleanup(func() {
			_, err := pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
			require.NoError(t, err)
		})
		for range 2 { // the second run empties the tables first
			require.Contains(t, runExample(t, "-database-url", testdb.URL(), "-schema", schema), "store PostgreSQL, schema "+schema)
		}
	})
}

func randomName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}
