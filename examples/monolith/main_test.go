package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/retry"
)

// counts is one row of the report's table.
type counts struct {
	deliveries, processed, duplicates, deadLettered, rows int
	table                                                 string
}

// expected derives what the report must say from the scenario's constants.
func expected(t *testing.T) (published, orderRows int, perConsumer map[string]counts) {
	t.Helper()
	require.True(t, republished >= firstOrder && republished < firstOrder+ordersPlaced, "the republished order is one of the version 1 orders")
	require.GreaterOrEqual(t, newerBuild, firstOrder+ordersPlaced, "the version 2 order is another order")
	published = ordersPlaced + 1 + 1 // one copy, one version 2
	// payments and notifications each get every OrderPlaced: they apply the version 1
	// orders, skip the copy, and dead-letter version 2. shipping gets one
	// PaymentCaptured per payment.
	onOrderPlaced := counts{deliveries: published, processed: ordersPlaced, duplicates: 1, deadLettered: 1, rows: ordersPlaced}
	perConsumer = map[string]counts{payments: onOrderPlaced, notifications: onOrderPlaced, shipping: {deliveries: ordersPlaced, processed: ordersPlaced, rows: ordersPlaced}}
	for name, table := range map[string]string{payments: "payments", notifications: "notifications", shipping: "shipments"} {
		c := perConsumer[name]
		c.table = table
		perConsumer[name] = c
	}
	return published, ordersPlaced + 1, perConsumer
}

// requireReport checks the counts and the dead letters that run printed.
func requireReport(t *testing.T, out string) {
	t.Helper()
	published, orderRows, perConsumer := expected(t)
	require.Contains(t, out, fmt.Sprintf("orders placed %d orders and published %d OrderPlaced:\n", orderRows, published))
	total := 0
	for name, c := range perConsumer {
		total += c.deliveries
		re := fmt.Sprintf(`(?m)^  %s +%d +%d +%d +%d  %d in %s$`, name, c.deliveries, c.processed, c.duplicates, c.deadLettered, c.rows, c.table)
		require.Regexp(t, re, out, "%s: want %+v", name, c)
	}
	require.Regexp(t, fmt.Sprintf(`(?m)^all %d deliveries handled in `, total), out)
	require.Contains(t, out, "event "+orderPlacedID(orderID(firstOrder))+" was processed by notifications, payments\n",
		"one event, one claim per consumer")
	require.Contains(t, out, "dead letters (2), ")
	for _, name := range []string{notifications, payments} {
		require.Contains(t, out, fmt.Sprintf("  %-13s  %s  %s: OrderPlaced event_version \"2\": this handler knows version 1 only\n",
			name, orderPlacedID(orderID(newerBuild)), dlq.ReasonPermanent))
	}
	require.Contains(t, out, "no outbox yet", "the output names the known gap")
	require.LessOrEqual(t, bytes.Count([]byte(out), []byte("\n")), 30, "the output stays compact")
}

func TestMonolithOnGoChannelAndSQLite(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := filepath.Join(t.TempDir(), "monolith.db")
	args := []string{"-backend", "gochannel", "-db", db}

	// The second run starts from a clean file, and counts the same.
	for range 2 {
		var out bytes.Buffer
		require.NoError(t, run(ctx, args, &out), out.String())
		requireReport(t, out.String())
		require.Contains(t, out.String(), "Watermill gochannel")
		require.Contains(t, out.String(), "SQLite file "+db)
	}
}

func TestMonolithOnWatermillSQLAndPostgres(t *testing.T) {
	t.Parallel()
	testdb.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := testdb.Pool(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "monolith_" + hex.EncodeToString(b[:])
	// The topics' tables live in the schema too (the example's search_path), and their
	// names are unique to this test as well.
	topicPrefix := "t" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
		require.NoError(t, err)
	})
	args := []string{"-backend", "sql", "-database-url", testdb.URL(), "-schema", schema, "-topic-prefix", topicPrefix}

	// The second run empties the tables first, and counts the same.
	for range 2 {
		var out bytes.Buffer
		require.NoError(t, run(ctx, args, &out), out.String())
		requireReport(t, out.String())
		require.Contains(t, out.String(), "watermill-sql on PostgreSQL, topics "+topicPrefix+"_order_placed")
		require.Contains(t, out.String(), "schema "+schema)
	}
	var public int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE tablename LIKE $1 AND schemaname <> $2",
		"%"+topicPrefix+"%", schema).Scan(&public))
	require.Zero(t, public, "every table the example made is in its schema")
}

func TestSchemaCheck(t *testing.T) {
	t.Parallel()
	// What every consumer here puts in front of its handler, in front of one that
	// accepts everything.
	dispatch, err := consumer.VersionedConsumer(readsOnly(orderPlacedV1, consumer.EventHandler{
		Handler: func(*message.Message) error { return nil },
	}))
	require.NoError(t, err)
	for _, tc := range []struct {
		eventType, version string
		ok                 bool
	}{
		{"OrderPlaced", "1", true},
		{"OrderPlaced", "1.3", true}, // a minor version adds fields only
		{"OrderPlaced", "2", false},
		{"OrderPlaced", "2.0", false},
		{"OrderPlaced", "", false},
		{"OrderPlaced", "v1", false},
		{"OrderPlaced", "01", false},
		{"OrderPlaced", "+1", false},
		{"OrderCancelled", "1", false},
		{"", "1", false},
	} {
		t.Run(tc.eventType+"@"+tc.version, func(t *testing.T) {
			t.Parallel()
			md := message.Metadata{middleware.EventTypeKey: tc.eventType, middleware.EventVersionKey: tc.version}
			msg := message.NewMessage("uuid", []byte(`{}`))
			msg.Metadata = md
			err := dispatch(msg)
			if tc.ok {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, retry.ErrPermanent)
		})
	}
}

func TestFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-backend", "kafka"}, "-backend must be gochannel or sql"},
		{[]string{"-backend", "sql", "-database-url", ""}, "-backend sql needs a PostgreSQL URL"},
		{[]string{"-backend", "sql", "-database-url", "postgres://x@localhost/db", "-schema", "Bad-Name"}, "-schema"},
		{[]string{"-topic-prefix", "has space"}, "-topic-prefix must match"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	} {
		_, err := parseFlags(tc.args, io.Discard)
		require.ErrorContains(t, err, tc.want, "%q", tc.args)
	}
	var help bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"-h"}, &help))
	require.Regexp(t, regexp.MustCompile(`(?m)^  -backend BACKEND$`), help.String())
}
