package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/examples/internal/demo"
	"github.com/idemkit/idem/internal/testbroker"
	"github.com/idemkit/idem/internal/testdb"
)

// requireReport checks the counts run printed.
func requireReport(t *testing.T, out string) {
	t.Helper()
	for _, line := range demo.ReportLines() {
		require.Contains(t, out, line)
	}
}

func randomName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func TestRedisExample(t *testing.T) {
	t.Parallel()
	url := testbroker.RedisURL(t)
	runExample := func(t *testing.T, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		stream := randomName("idem_example_")
		var out bytes.Buffer
		start := time.Now()
		require.NoError(t, run(ctx, append([]string{"-redis-url", url, "-stream", stream}, args...), &out), out.String())
		t.Logf("%s in %s", args, time.Since(start).Round(time.Millisecond))
		requireReport(t, out.String())
		require.Contains(t, out.String(), "stream "+stream+" deleted (0 messages pending)\n")

		opts, err := redis.ParseURL(url)
		require.NoError(t, err)
		client := redis.NewClient(opts)
		defer client.Close()
		n, err := client.Exists(ctx, stream).Result()
		require.NoError(t, err)
		require.Zero(t, n, "the stream is gone")
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
