package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
)

var consoleScreenshot = flag.String("console-screenshot", "", "write a screenshot of the console's overview to this PNG `file` (docs/console-overview.png)")

// chromiumPath returns the headless browser of the end-to-end tests: Debian's
// chromium. Without it the tests skip, except with CI set, where they fail.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("no chromium on PATH and CI is set: install it (scripts/test does, as root)")
	}
	t.Skip("no chromium on PATH: install Debian's chromium to run the browser tests")
	return ""
}

// browser starts a headless Chromium of its own, with a fresh profile, and returns a
// tab's context; both end with the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
	})
	require.NoError(t, chromedp.Do(ctx), "start chromium")
	return ctx
}

// screenshotRows are dead letters of a day of production, as the overview's
// screenshot shows them: an outage of the payment gateway, bad addresses, a refund
// bug and a deadlock, spread over the 24 hours before the golden clock.
func screenshotRows() []seedRow {
	now := ts(testNow)
	var rows []seedRow
	add := func(consumer, topic, fingerprint, errFmt string, reason dlq.Reason, n int, first, every time.Duration) {
		for i := range n {
			at := now.Add(-first + time.Duration(i)*every)
			id := fmt.Sprintf("evt-%s-%03d", consumer, i+1)
			msg := fmt.Sprintf(errFmt, 1000+i)
			rows = append(rows, seedRow{
				consumer: consumer, eventID: id, topic: topic, eventType: "OrderPlaced",
				payload:  []byte(fmt.Sprintf(`{"id":"ord-%d","total_cents":%d}`, 1000+i, 1250+i)),
				metadata: map[string]string{"event_id": id, "correlation_id": "corr-" + id, "authorization": "REDACTED"},
				reason:   reason, err: msg, fingerprint: fingerprint, attempts: 3, count: 1, status: dlq.StatusPending,
				history:        []dlq.Failure{{At: at.Add(-time.Second), Error: msg}},
				deadLetteredAt: at.UTC().Format(time.RFC3339),
			})
		}
	}
	add("billing", "orders", "3f2a9c1d7e6b5a40", "charge order ord-%d: payment gateway unavailable (503)", dlq.ReasonExhausted, 18, 9*time.Hour, 17*time.Minute)
	add("shipping", "orders", "8c1e44b0a9d2f311", "label for order ord-%d: postcode \"99999\" is not valid", dlq.ReasonPermanent, 6, 22*time.Hour, 3*time.Hour+10*time.Minute)
	add("refunds", "refunds", "c0ffee00b4d2e1a7", "refund ref-%d: amount exceeds the captured total", dlq.ReasonPermanent, 3, 5*time.Hour, 70*time.Minute)
	add("inventory", "stock", "5e11ab0c9f3d2210", "reserve sku-%d: deadlock detected (SQLSTATE 40P01)", dlq.ReasonExhausted, 2, 14*time.Hour, 6*time.Hour)
	return rows
}

// TestConsoleBrowser drives the console in a real headless Chromium: it opens the
// overview, replays a failure group through its dry run into a watermill-sql topic,
// opens a dead letter of another group, shows its payload and discards it with a
// reason; then it checks the dead letters, the published messages and the audit in the
// database. With -console-screenshot FILE it writes the overview's screenshot.
func TestConsoleBrowser(t *testing.T) {
	t.Parallel()
	ctx := browser(t)
	pool := testdb.Pool(t)
	schema := testdb.Schema(t, pool)
	seedPostgres(t, schema, screenshotRows())
	store, err := postgres.New(pool, postgres.Config{Schema: schema})
	require.NoError(t, err)

	// The consumers of "orders" read a watermill-sql topic in the test's schema.
	publishURL := testdb.URL() + "&search_path=" + schema
	if !strings.Contains(testdb.URL(), "?") {
		publishURL = testdb.URL() + "?search_path=" + schema
	}
	cfg, err := pgxpool.ParseConfig(publishURL)
	require.NoError(t, err)
	topicPool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(topicPool.Close)
	sub, err := wsql.NewSubscriber(wsql.BeginnerFromPgx(topicPool), wsql.SubscriberConfig{
		SchemaAdapter: wsql.DefaultPostgreSQLSchema{}, OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{}, InitializeSchema: true,
	}, watermill.NopLogger{})
	require.NoError(t, err)
	require.NoError(t, sub.SubscribeInitialize("orders"))
	t.Cleanup(func() { _ = sub.Close() })

	b := startConsole(t, nil, "--database-url", testdb.URL(), "--schema", schema, "--publish-url", publishURL,
		"--trace-url", "https://jaeger.example/trace/{trace_id}")

	// do runs steps in the tab, each call within 30 seconds; text reads an element's text.
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		require.NoError(t, chromedp.Do(actx, steps...), what)
	}
	text := func(id string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID(id)))
		require.NoError(t, err, "text of #%s", id)
		return s
	}

	// The overview: 29 pending dead letters in 4 groups, the oldest 22 hours old.
	do("open the overview", chromedp.Navigate(b.url+"/"), chromedp.WaitVisible(chromedp.ID("pending")))
	require.Equal(t, "29", text("pending"))
	require.Equal(t, "22h0m", text("backlog-age"))
	if *consoleScreenshot != "" {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(*consoleScreenshot, png, 0o644))
	}

	// Replay the payment gateway's group: the dry run first, then confirm.
	do("open the group and its replay's dry run",
		chromedp.Click(chromedp.Search(`//a[contains(., "3f2a9c1d7e6b5a40")]`)),
		chromedp.WaitVisible(chromedp.ID("replay-group")),
		chromedp.Click(chromedp.ID("replay-group")),
		chromedp.WaitVisible(chromedp.ID("dry-run")),
	)
	require.Equal(t, "18", text("todo"))
	require.Zero(t, topicRows(t, topicPool, "orders"), "a dry run publishes nothing")
	do("confirm the replay",
		chromedp.SendKeys(chromedp.CSS(`#replay-form input[name="reason"]`), "gateway back, INC-204"),
		chromedp.Click(chromedp.ID("confirm-replay")),
		chromedp.WaitVisible(chromedp.CSS("#state.succeeded")),
	)
	require.Contains(t, text("summary"), "replayed 18 dead letters to postgres://")
	require.Equal(t, 18, topicRows(t, topicPool, "orders"))

	// Discard one bad address, after a look at its payload.
	recs, err := store.List(t.Context(), dlq.Filter{Consumer: "shipping", Status: dlq.StatusPending, Limit: 1})
	require.NoError(t, err)
	require.Len(t, recs, 1)
	victim := recs[0].ID
	do("show a payload",
		chromedp.Navigate(fmt.Sprintf("%s/dead-letters/%d", b.url, victim)),
		chromedp.WaitVisible(chromedp.ID("show-payload")),
		chromedp.Click(chromedp.ID("show-payload")),
		chromedp.WaitVisible(chromedp.ID("payload-text")),
	)
	require.Contains(t, text("payload-text"), `"total_cents": 1250`)
	do("discard the dead letter",
		chromedp.SendKeys(chromedp.CSS(`#discard-form textarea[name="reason"]`), "test order from staging"),
		chromedp.Click(chromedp.ID("discard")),
		chromedp.WaitVisible(chromedp.CSS("#state.succeeded")),
	)
	require.Regexp(t, `^discarded 1 dead letter \(audit entry \d+\)$`, text("summary"))

	// The database holds the changes and their audit entries.
	replayed, err := store.List(t.Context(), dlq.Filter{Consumer: "billing"})
	require.NoError(t, err)
	for _, rec := range replayed {
		require.Equal(t, dlq.StatusReplayed, rec.Status, rec.ID)
		require.Equal(t, 1, rec.ReplayCount, rec.ID)
	}
	rec, err := store.Get(t.Context(), victim)
	require.NoError(t, err)
	require.Equal(t, dlq.StatusDiscarded, rec.Status)
	audit, err := store.Audit(t.Context(), dlq.AuditFilter{})
	require.NoError(t, err)
	require.Len(t, audit, 19, "one audit entry per replayed dead letter, one for the discard")
	for _, a := range audit[:18] {
		require.Equal(t, dlq.ActionReplay, a.Action)
		require.Equal(t, "gateway back, INC-204", a.Reason)
		require.Equal(t, "consumer=billing topic=orders fingerprint=3f2a9c1d7e6b5a40 status=pending until=2026-01-10T07:49:01Z limit=18", a.Selector)
	}
	last := audit[18]
	require.Equal(t, dlq.ActionDiscard, last.Action)
	require.Equal(t, "test order from staging", last.Reason)
	require.Equal(t, fmt.Sprintf("ids=%d", victim), last.Selector)
	require.Equal(t, []int64{victim}, last.DeadLetterIDs)
}

// topicRows counts the messages of a watermill-sql topic.
func topicRows(t *testing.T, pool *pgxpool.Pool, topic string) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(t.Context(), "SELECT count(*) FROM "+pgx.Identifier{"watermill_" + topic}.Sanitize()).Scan(&n))
	return n
}
