package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/sqlite"
)

// parkingStore is what the parked tests need of a store; both of idem's are one.
type parkingStore interface {
	dlq.Reviewer
	dedup.Store
	dedup.Quarantiner
	Put(ctx context.Context, d *dlq.DeadLetter) (bool, error)
}

// quarantine dead-letters event eventID of consumer, the event seq of entity, in the
// failure group of topic and fingerprint; quarantines the entity; and parks its next
// parked events behind it, as a consumer with ordering's quarantine would. It returns
// the dead letter's ID.
func quarantine(t *testing.T, st parkingStore, consumer, topic, fingerprint, eventID, entity string, seq int64, parked int) int64 {
	t.Helper()
	ctx := t.Context()
	d := &dlq.DeadLetter{Consumer: consumer, EventID: eventID, Topic: topic, Payload: []byte("{}"), Metadata: map[string]string{},
		Reason: dlq.ReasonPermanent, Error: "boom", Fingerprint: fingerprint, Attempts: 1}
	_, err := st.Put(ctx, d)
	require.NoError(t, err)
	require.NoError(t, st.Quarantine(ctx, dedup.Key{Consumer: consumer, EventID: eventID}, dedup.Entity{ID: entity, Seq: seq}))
	for next := seq + 1; next <= seq+int64(parked); next++ {
		key := dedup.Key{Consumer: consumer, EventID: fmt.Sprintf("%s-%d", entity, next)}
		rctx := dedup.WithParking(dedup.WithEntity(ctx, dedup.Entity{ID: entity, Seq: next}, dedup.GapStrict),
			dedup.Parked{Key: key, Topic: topic, Payload: []byte("{}"), Metadata: map[string]string{"event_id": key.EventID}})
		_, err := st.Run(rctx, key, func(context.Context) error { return nil })
		require.ErrorIs(t, err, dedup.ErrQuarantined)
	}
	return d.ID
}

// quarantined dead-letters event 2 of entity order:7 in schema, quarantines the
// entity, and parks its events 3 and 4 behind it. It returns the dead letter's ID.
func quarantined(t *testing.T, schema string) int64 {
	t.Helper()
	store, err := postgres.New(testdb.Pool(t), postgres.Config{Schema: schema})
	require.NoError(t, err)
	return quarantine(t, store, "billing", "orders", "f", "evt-2", "order:7", 2, 2)
}

// parkedIDs are the dead letters parkedGroups writes.
type parkedIDs struct{ gap2, gap12, none, resolved int64 }

// parkedGroups writes, through st, the dead letters of three failure groups:
//
//   - billing · orders · f-gap: evt-2, with events 3 and 4 of order:7 parked behind
//     it, and evt-12, with event 13 of order:8: 3 parked events;
//   - refunds · refunds · f-none: evt-30, nothing parked behind it;
//   - shipping · orders · f-label: evt-20, with event 21 of order:9 parked behind it,
//     then resolved behind the store's back, its quarantine left in place: not
//     pending, so its parked event counts in no group.
func parkedGroups(t *testing.T, st dlq.Reviewer) parkedIDs {
	t.Helper()
	ps, ok := st.(parkingStore)
	require.True(t, ok, "%T quarantines", st)
	ids := parkedIDs{
		gap2:     quarantine(t, ps, "billing", "orders", "f-gap", "evt-2", "order:7", 2, 2),
		gap12:    quarantine(t, ps, "billing", "orders", "f-gap", "evt-12", "order:8", 12, 1),
		none:     quarantine(t, ps, "refunds", "refunds", "f-none", "evt-30", "refund:1", 30, 0),
		resolved: quarantine(t, ps, "shipping", "orders", "f-label", "evt-20", "order:9", 20, 1),
	}
	var err error
	switch s := st.(type) {
	case *postgres.Store:
		_, err = testdb.Pool(t).Exec(t.Context(), "UPDATE "+pgx.Identifier{s.Schema(), "dead_letters"}.Sanitize()+" SET status = 'resolved' WHERE id = $1", ids.resolved)
	case *sqlite.Store:
		_, err = s.DB().ExecContext(t.Context(), "UPDATE dead_letters SET status = 'resolved' WHERE id = ?1", ids.resolved)
	default:
		t.Fatalf("no SQL for %T", st)
	}
	require.NoError(t, err)
	rec, err := st.Get(t.Context(), ids.resolved)
	require.NoError(t, err)
	require.Equal(t, 1, rec.Parked, "its entity is still quarantined")
	return ids
}

// TestParked: show counts the events parked behind a dead letter; discard refuses
// to go on without --parked, and records the choice in its audit entry.
func TestParked(t *testing.T) {
	t.Parallel()
	db := pgArgs(t, nil)
	schema := db[3]
	dlID := quarantined(t, schema)
	id := fmt.Sprint(dlID)

	res := idemAt(t, append([]string{"dlq", "show", id}, db...)...)
	require.Equal(t, 0, res.code, res.stderr)
	require.Regexp(t, `parked events\s+2\n`, res.stdout)
	res = idemAt(t, append([]string{"dlq", "show", id, "--format", "json"}, db...)...)
	require.Equal(t, 0, res.code, res.stderr)
	var shown struct {
		DeadLetter struct {
			Parked int `json:"parked"`
		} `json:"dead_letter"`
	}
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &shown))
	require.Equal(t, 2, shown.DeadLetter.Parked)

	res = idemAt(t, append([]string{"dlq", "discard", id, "--reason", "obsolete", "--yes"}, db...)...)
	require.Equal(t, 2, res.code, res.stdout)
	require.Contains(t, res.stderr, "give --parked release to publish them again, in order, or --parked discard to drop them; nothing changed")
	require.Equal(t, "pending", statuses(t, schema)[dlID])

	res = idemAt(t, append([]string{"dlq", "discard", id, "--reason", "obsolete", "--parked", "later", "--yes"}, db...)...)
	require.Equal(t, 2, res.code)
	require.Contains(t, res.stderr, `--parked must be release or discard, got "later"`)

	res = idemAt(t, append([]string{"dlq", "discard", id, "--reason", "obsolete", "--parked", "discard", "--yes"}, db...)...)
	require.Equal(t, 0, res.code, res.stderr)
	entries := auditRows(t, schema)
	require.Len(t, entries, 1)
	require.Contains(t, entries[0].Selector, "parked=discard:2")
	require.Equal(t, "obsolete", entries[0].Reason)
	res = idemAt(t, append([]string{"dlq", "show", id}, db...)...)
	require.Equal(t, 0, res.code, res.stderr)
	require.NotContains(t, res.stdout, "parked events")
}

// TestReportParked: report shows how many events are parked behind each group's
// pending dead letters, in every format, on both stores; and only when some are.
func TestReportParked(t *testing.T) {
	t.Parallel()
	for _, backend := range consoleBackends {
		t.Run(backend.name, func(t *testing.T) {
			t.Parallel()
			db, st := backend.open(t, nil)
			parkedGroups(t, st)
			report := func(args ...string) string {
				t.Helper()
				res := exe(t, "", nil, append(append([]string{"dlq", "report"}, args...), db...)...)
				require.Equal(t, 0, res.code, res.stderr)
				requireInert(t, res.stdout)
				return res.stdout
			}

			out := report()
			require.Regexp(t, `(?m)^CONSUMER\s+TOPIC\s+FINGERPRINT\s+COUNT\s+PARKED\s+FIRST SEEN\s+LAST SEEN\s+OLDEST$`, out)
			require.Regexp(t, `(?m)^billing\s+orders\s+f-gap\s+2\s+3\s+\d{4}-`, out)
			require.Regexp(t, `(?m)^refunds\s+refunds\s+f-none\s+1\s+0\s+\d{4}-`, out)
			require.NotContains(t, out, "shipping", "resolved")
			require.Regexp(t, `(?m)^total: 3 pending dead letters in 2 groups, oldest .*; 3 events parked behind them$`, out)
			require.Regexp(t, `(?m)^billing\s+orders\s+f-gap\s+2\s+3\s+\S+\s+\S+\s+\S+\s+boom\s+`, report("--wide"), "the samples follow")

			var res struct {
				Total  map[string]any   `json:"total"`
				Groups []map[string]any `json:"groups"`
			}
			require.NoError(t, json.Unmarshal([]byte(report("--format", "json")), &res))
			require.Equal(t, float64(3), res.Total["parked"])
			require.Len(t, res.Groups, 2)
			require.Equal(t, "f-gap", res.Groups[0]["fingerprint"])
			require.Equal(t, float64(3), res.Groups[0]["parked"])
			require.NotContains(t, res.Groups[1], "parked", "omitted when none")

			out = report("--format", "csv")
			require.Regexp(t, `^consumer,topic,fingerprint,count,parked,first_seen,last_seen,oldest_age,sample_error,sample_ids,sample_event_ids\n`, out)
			require.Regexp(t, `(?m)^billing,orders,f-gap,2,3,`, out)
			require.Regexp(t, `(?m)^refunds,refunds,f-none,1,0,`, out)
			out = report("--format", "markdown")
			require.Regexp(t, `(?m)^\| consumer \| topic \| fingerprint \| count \| parked \| first_seen \|`, out)
			require.Regexp(t, `(?m)^\| billing \| orders \| f-gap \| 2 \| 3 \|`, out)
			require.Contains(t, out, "; 3 events parked behind them")

			// Only pending dead letters hold events back.
			out = report("--status", "all")
			require.Regexp(t, `(?m)^shipping\s+orders\s+f-label\s+1\s+0\s+`, out)
			require.Regexp(t, `(?m)^total: 4 dead letters in 3 groups, .*; 3 events parked behind them$`, out)

			// Nothing parked: report prints what it always printed.
			out = report("--consumer", "refunds")
			require.Regexp(t, `(?m)^CONSUMER\s+TOPIC\s+FINGERPRINT\s+COUNT\s+FIRST SEEN\s+LAST SEEN\s+OLDEST$`, out)
			require.NotContains(t, out, "parked")
			for _, format := range []string{"json", "csv", "markdown"} {
				require.NotContains(t, report("--consumer", "refunds", "--format", format), "parked", format)
			}
		})
	}
}

// TestConsoleParked: the overview, the group and dead-letter pages show the events
// parked behind pending dead letters; a discard of dead letters with parked events
// asks whether to release or discard them, and passes the choice on as `idem dlq
// discard --parked` does; without it, the form comes back with a message.
func TestConsoleParked(t *testing.T) {
	t.Parallel()
	for _, backend := range consoleBackends {
		t.Run(backend.name, func(t *testing.T) {
			t.Parallel()
			db, st := backend.open(t, nil)
			ids := parkedGroups(t, st)
			b := startConsole(t, nil, db...)
			token := b.csrf(t)
			choice := regexp.MustCompile(`<input type="radio" name="parked" value="(release|discard)" required>`)

			p := b.get(t, "/")
			require.Equal(t, http.StatusOK, p.code, p.body)
			requireSafePage(t, p)
			require.Contains(t, p.body, `<div class="num" id="parked">3</div><div class="label">events parked behind them`)
			require.Contains(t, p.body, `<th class="n">Count</th><th class="n">Parked</th>`)
			require.Regexp(t, `(?s)>f-gap</a></td>\s*<td class="n">2</td>\s*<td class="n">3</td>\s*<td class="time">`, p.body)
			require.Regexp(t, `(?s)>f-none</a></td>\s*<td class="n">1</td>\s*<td class="n">0</td>\s*<td class="time">`, p.body)

			gap := "consumer=billing&topic=orders&fingerprint=f-gap"
			p = b.get(t, "/group?"+gap)
			require.Equal(t, http.StatusOK, p.code, p.body)
			requireSafePage(t, p)
			require.Contains(t, p.body, `<div class="num" id="group-parked">3</div>`)
			p = b.get(t, "/group?consumer=refunds&topic=refunds&fingerprint=f-none")
			require.NotContains(t, p.body, `id="group-parked"`)

			// A dead letter's page: its count, and its discard form asks.
			p = b.get(t, fmt.Sprintf("/dead-letters/%d", ids.gap2))
			require.Equal(t, http.StatusOK, p.code, p.body)
			requireSafePage(t, p)
			require.Contains(t, p.body, "<tr><th>parked events</th><td>2</td></tr>")
			require.Len(t, choice.FindAllString(p.body[strings.Index(p.body, `id="discard-form"`):], -1), 2)
			p = b.get(t, fmt.Sprintf("/dead-letters/%d", ids.none))
			require.NotContains(t, p.body, "parked")

			// A group's previews: a discard asks, a resolve releases them.
			p = b.get(t, "/discard?"+gap)
			require.Equal(t, http.StatusOK, p.code, p.body)
			requireSafePage(t, p)
			require.Contains(t, p.body, `<span id="parked">3</span> events of their entities are parked behind them`)
			require.Len(t, choice.FindAllString(p.body, -1), 2)
			require.NotContains(t, p.body, "checked", "no choice is made for the operator")
			form := formOf(t, p.body, "change-form")
			// The replay's dry run says it releases them (on SQLite there is no broker
			// to replay to without --publish-url).
			if p = b.get(t, "/replay?"+gap); !strings.Contains(p.body, "replay is unavailable") {
				require.Contains(t, p.body, `<span id="parked">3</span> events of their entities are parked behind them (ordering's quarantine): the replay releases them`)
				p = b.get(t, fmt.Sprintf("/replay?id=%d", ids.gap2))
				require.Contains(t, p.body, `<span id="parked">2</span> events of their entities are parked`)
				p = b.get(t, "/replay?consumer=refunds&topic=refunds&fingerprint=f-none")
				require.NotContains(t, p.body, `id="parked"`)
			}
			p = b.get(t, "/resolve?"+gap)
			require.Contains(t, p.body, "Resolve releases them: they are published again, in order.")
			require.NotRegexp(t, choice, p.body)
			p = b.get(t, "/discard?consumer=refunds&topic=refunds&fingerprint=f-none")
			require.NotContains(t, p.body, "parked")

			// Without a choice, or with a wrong one, nothing changes: the form comes back.
			form.Set("reason", "the orders were cancelled")
			p = b.post(t, "/discard", form, nil)
			require.Equal(t, http.StatusBadRequest, p.code, p.body)
			requireSafePage(t, p)
			require.Contains(t, p.body, "choose whether to release them or discard them, then confirm again. Nothing changed.")
			require.Len(t, choice.FindAllString(p.body, -1), 2)
			require.Equal(t, form.Get("until"), formOf(t, p.body, "change-form").Get("until"), "the preview's bounds are kept")
			require.Equal(t, "2", formOf(t, p.body, "change-form").Get("limit"))
			p = b.post(t, "/discard", url.Values{"csrf": {token}, "id": {fmt.Sprint(ids.gap12)}, "reason": {"cancelled"}}, nil)
			require.Equal(t, http.StatusBadRequest, p.code, p.body)
			require.Contains(t, p.body, "Nothing changed.")
			require.Contains(t, p.body, `<span id="parked">1</span> event of their entities is parked behind them`)
			withChoice := url.Values{"csrf": {token}, "id": {fmt.Sprint(ids.gap12)}, "reason": {"cancelled"}, "parked": {"later"}}
			p = b.post(t, "/discard", withChoice, nil)
			require.Equal(t, http.StatusBadRequest, p.code, p.body)
			require.Contains(t, p.body, `--parked must be release or discard, got &#34;later&#34;`)
			requireUntouched(t, st, ids.gap2, ids.gap12)

			// With a choice: changed, the choice in the audit entry, as on the command line.
			withChoice.Set("parked", "discard")
			done := b.waitJob(t, b.post(t, "/discard", withChoice, nil))
			require.Equal(t, "succeeded", done.State, done.Summary)
			require.Equal(t, []int64{ids.gap12}, done.Changed)
			form.Set("parked", "release")
			done = b.waitJob(t, b.post(t, "/discard", form, nil))
			require.Equal(t, "succeeded", done.State, done.Summary)
			require.Equal(t, []int64{ids.gap2}, done.Changed, "the other was discarded already")
			audit, err := st.Audit(t.Context(), dlq.AuditFilter{})
			require.NoError(t, err)
			require.Len(t, audit, 2)
			require.Equal(t, fmt.Sprintf("ids=%d parked=discard:1", ids.gap12), audit[0].Selector)
			require.Contains(t, audit[1].Selector, "parked=release:2")
			rec, err := st.Get(t.Context(), ids.gap2)
			require.NoError(t, err)
			require.Zero(t, rec.Parked)

			p = b.get(t, "/")
			require.NotContains(t, p.body, `id="parked"`)
			require.NotContains(t, p.body, `<th class="n">Parked</th>`)
		})
	}
}
