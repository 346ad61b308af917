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
	amqp091 "github.com/rabbitmq/amqp091-go"
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

func TestRabbitMQExample(t *testing.T) {
	t.Parallel()
	url := testbroker.AMQPURL(t)
	runExample := func(t *testing.T, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		queue := randomName("idem_example_")
		var out bytes.Buffer
		start := time.Now()
		require.NoError(t, run(ctx, append([]string{"-amqp-url", url, "-queue", queue}, args...), &out), out.String())
		t.Logf("%s in %s", args, time.Since(start).Round(time.Millisecond))
		requireReport(t, out.String())
		require.Contains(t, out.String(), "queue "+queue+" deleted (0 messages left in it)\n")

		conn, err := amqp091.Dial(url)
		require.NoError(t, err)
		defer conn.Close()
		ch, err := conn.Channel()
		require.NoError(t, err)
		_, err = ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		var amqpErr *amqp091.Error
		require.ErrorAs(t, err, &amqpErr, "the queue is gone")
		require.Equal(t, amqp091.NotFound, amqpErr.Code)
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
