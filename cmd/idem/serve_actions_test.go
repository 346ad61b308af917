package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/internal/testdb"
)

// requireUntouched checks that dead letters ids are pending and that no audit entry
// was written.
func requireUntouched(t *testing.T, st dlq.Reviewer, ids ...int64) {
	t.Helper()
	for _, id := range ids {
		rec, err := st.Get(t.Context(), id)
		require.NoError(t, err)
		require.Equal(t, dlq.StatusPending, rec.Status, id)
	}
	audit, err := st.Audit(t.Context(), dlq.AuditFilter{})
	require.NoError(t, err)
	require.Empty(t, audit)
}

// TestConsoleCSRF posts a discard that the console must refuse, one way of forging it
// at a time, and checks that nothing changed; then the genuine one.
func TestConsoleCSRF(t *testing.T) {
	t.Parallel()
	db, st := consoleBackends[1].open(t, goldenRows)
	b := startConsole(t, nil, db...)
	token := b.csrf(t)
	form := func(csrf string) url.Values {
		return url.Values{"csrf": {csrf}, "id": {"1"}, "reason": {"forged"}}
	}
	for _, tc := range []struct {
		name    string
		form    url.Values
		headers map[string]string
		want    string
	}{
		{"NoToken", url.Values{"id": {"1"}, "reason": {"forged"}}, nil, "anti-forgery token is missing or wrong"},
		{"WrongToken", form("x" + token), nil, "anti-forgery token is missing or wrong"},
		{"TokenOfAnotherCookie", form(token), map[string]string{"Cookie": "idem_csrf=" + strings.Repeat("A", 43)}, "anti-forgery token is missing or wrong"},
		{"NoCookie", form(token), map[string]string{"Cookie": "x=y"}, "no anti-forgery cookie"},
		{"CrossSite", form(token), map[string]string{"Sec-Fetch-Site": "cross-site"}, "a cross-origin request"},
		{"SameSiteOtherOrigin", form(token), map[string]string{"Sec-Fetch-Site": "same-site"}, "a cross-origin request"},
		{"OtherOrigin", form(token), map[string]string{"Sec-Fetch-Site": "", "Origin": "http://evil.example"}, "a cross-origin request"},
		{"OtherOriginSameSiteHeader", form(token), map[string]string{"Origin": "http://evil.example"}, `a request from another origin, "http://evil.example"`},
		{"OtherPort", form(token), map[string]string{"Origin": "http://127.0.0.1:1"}, `a request from another origin`},
		{"OpaqueOrigin", form(token), map[string]string{"Origin": "null", "Sec-Fetch-Site": ""}, "a cross-origin request"},
		{"OpaqueOriginNotSameOrigin", form(token), map[string]string{"Origin": "null", "Sec-Fetch-Site": "none"}, "a request of an opaque origin"},
		{"OtherReferer", form(token), map[string]string{"Referer": "http://evil.example/form.html"}, `a request from another page, "http://evil.example/form.html"`},
		{"OtherRefererPort", form(token), map[string]string{"Referer": "http://127.0.0.1:1/"}, `a request from another page`},
	} {
		p := b.post(t, "/discard", tc.form, tc.headers)
		require.Equal(t, http.StatusForbidden, p.code, "%s: %s", tc.name, p.body)
		require.Contains(t, p.body, tc.want, tc.name)
	}
	requireUntouched(t, st, 1)

	// A browser under Referrer-Policy: no-referrer sends Origin: null, and tells
	// where the request comes from with Sec-Fetch-Site.
	p := b.post(t, "/discard", form(token), map[string]string{"Origin": "null"})
	require.Equal(t, "succeeded", b.waitJob(t, p).State)
	rec, err := st.Get(t.Context(), 1)
	require.NoError(t, err)
	require.Equal(t, dlq.StatusDiscarded, rec.Status)

	// Behind a proxy that terminates TLS, the browser's origin is https: the host is
	// what must match.
	p = b.post(t, "/discard", url.Values{"csrf": {token}, "id": {"2"}, "reason": {"behind a proxy"}},
		map[string]string{"Origin": strings.Replace(b.url, "http://", "https://", 1)})
	require.Equal(t, []int64{2}, b.waitJob(t, p).Changed)

	// The cookies are HttpOnly and SameSite=Strict.
	jar := b.get(t, "/")
	require.Empty(t, jar.header.Values("Set-Cookie"), "the cookie is set once")
	fresh := startConsole(t, nil, db...)
	p = fresh.get(t, "/")
	require.Len(t, p.header.Values("Set-Cookie"), 1)
	require.Regexp(t, `^idem_csrf=[A-Za-z0-9_-]{43}; Path=/; HttpOnly; SameSite=Strict$`, p.header.Get("Set-Cookie"))
}

// TestConsoleReadOnly checks that --read-only shows no action, and refuses them all,
// with a valid anti-forgery token too.
func TestConsoleReadOnly(t *testing.T) {
	t.Parallel()
	db, st := consoleBackends[1].open(t, goldenRows)
	b := startConsole(t, nil, append(db, "--read-only")...)
	require.Contains(t, b.stdout.String(), "(read-only)")
	for _, path := range []string{"/", "/group?consumer=billing&topic=orders&fingerprint=3f2a9c1d7e6b5a40", "/dead-letters/1", "/dead-letters/4", "/audit"} {
		p := b.get(t, path)
		require.Equal(t, http.StatusOK, p.code, path)
		requireSafePage(t, p)
		require.Contains(t, p.body, `<span class="badge">read-only</span>`, path)
		require.NotRegexp(t, `<form[^>]*method="post"`, p.body, path)
		require.NotRegexp(t, `href="/(replay|discard|resolve)`, p.body, path)
		require.NotContains(t, p.body, "Actions</h2>", path)
	}
	for _, path := range []string{"/replay?id=1", "/discard?consumer=billing&topic=orders&fingerprint=3f2a9c1d7e6b5a40", "/resolve?id=1"} {
		p := b.get(t, path)
		require.Equal(t, http.StatusForbidden, p.code, path)
		require.Contains(t, p.body, "the console is read-only")
	}
	token := b.csrf(t)
	for _, path := range []string{"/discard", "/resolve", "/replay"} {
		p := b.post(t, path, url.Values{"csrf": {token}, "id": {"1"}, "reason": {"read-only"}}, nil)
		require.Equal(t, http.StatusForbidden, p.code, path)
		require.Contains(t, p.body, "refused: the console is read-only")
	}
	requireUntouched(t, st, 1, 2, 3)
}

// TestConsoleDiscardResolve discards and resolves dead letters from their pages and
// from a group's, on both stores: a discard needs a reason, each change writes its
// audit entry, as `idem dlq discard` and `idem dlq resolve` do.
func TestConsoleDiscardResolve(t *testing.T) {
	t.Parallel()
	for _, backend := range consoleBackends {
		t.Run(backend.name, func(t *testing.T) {
			t.Parallel()
			db, st := backend.open(t, goldenRows)
			b := startConsole(t, nil, db...)
			token := b.csrf(t)

			// Without a reason, nothing changes.
			for _, reason := range []string{"", "   "} {
				p := b.post(t, "/discard", url.Values{"csrf": {token}, "id": {"3"}, "reason": {reason}}, nil)
				require.Equal(t, http.StatusBadRequest, p.code, p.body)
				requireSafePage(t, p)
				require.Contains(t, p.body, "--reason is required: say why, for the audit")
			}
			p := b.post(t, "/discard", url.Values{"csrf": {token}, "id": {"3"}, "reason": {strings.Repeat("x", maxReason+1)}}, nil)
			require.Equal(t, http.StatusBadRequest, p.code)
			require.Contains(t, p.body, "--reason must be at most 4096 bytes, got 4097")
			requireUntouched(t, st, 3)

			// With a reason: discarded, with its audit entry.
			p = b.get(t, "/dead-letters/3")
			form := formOf(t, p.body, "discard-form")
			require.Equal(t, url.Values{"csrf": {token}, "id": {"3"}}, form)
			form.Set("reason", "negative totals come from the load test")
			st3 := b.waitJob(t, b.post(t, "/discard", form, nil))
			require.Equal(t, "succeeded", st3.State)
			require.Equal(t, []int64{3}, st3.Changed)
			require.Len(t, st3.AuditIDs, 1)
			require.Equal(t, fmt.Sprintf("discarded 1 dead letter (audit entry %d)", st3.AuditIDs[0]), st3.Summary)
			rec, err := st.Get(t.Context(), 3)
			require.NoError(t, err)
			require.Equal(t, dlq.StatusDiscarded, rec.Status)
			audit, err := st.Audit(t.Context(), dlq.AuditFilter{})
			require.NoError(t, err)
			require.Len(t, audit, 1)
			require.Equal(t, st3.AuditIDs[0], audit[0].ID)
			require.Equal(t, dlq.ActionDiscard, audit[0].Action)
			require.Equal(t, "negative totals come from the load test", audit[0].Reason)
			require.Equal(t, "ids=3", audit[0].Selector)
			require.Equal(t, []int64{3}, audit[0].DeadLetterIDs)
			require.NotEmpty(t, audit[0].OSUser)
			require.NotEmpty(t, audit[0].DBRole)

			// The page shows the audit entry, and no discard any more.
			p = b.get(t, "/dead-letters/3")
			require.Contains(t, p.body, `<span class="status discarded" id="status">discarded</span>`)
			require.Contains(t, p.body, "negative totals come from the load test")
			require.NotContains(t, p.body, `id="discard-form"`)
			p = b.get(t, "/audit")
			require.Contains(t, p.body, "negative totals come from the load test")

			// Twice: nothing to change, no audit entry.
			again := b.waitJob(t, b.post(t, "/discard", form, nil))
			require.Equal(t, "nothing to discard: the 1 dead letter selected is discarded already", again.Summary)
			require.Empty(t, again.AuditIDs)

			// Resolve takes no reason.
			res := b.waitJob(t, b.post(t, "/resolve", url.Values{"csrf": {token}, "id": {"5"}}, nil))
			require.Equal(t, []int64{5}, res.Changed)

			// A group: what the preview shows is what the confirmation changes.
			p = b.get(t, "/discard?consumer=billing&topic=orders&fingerprint=3f2a9c1d7e6b5a40")
			require.Equal(t, http.StatusOK, p.code, p.body)
			requireSafePage(t, p)
			require.Contains(t, p.body, `<span id="count">2</span> dead letters`)
			form = formOf(t, p.body, "change-form")
			require.Equal(t, "2026-01-09T10:00:01Z", form.Get("until"))
			require.Equal(t, "2", form.Get("limit"))
			form.Set("reason", "load test traffic")
			grp := b.waitJob(t, b.post(t, "/discard", form, nil))
			require.Equal(t, []int64{1, 2}, grp.Changed)
			audit, err = st.Audit(t.Context(), dlq.AuditFilter{})
			require.NoError(t, err)
			require.Len(t, audit, 3)
			require.Equal(t, dlq.ActionResolve, audit[1].Action)
			require.Equal(t, "", audit[1].Reason)
			require.Equal(t, "consumer=billing topic=orders fingerprint=3f2a9c1d7e6b5a40 status=pending until=2026-01-09T10:00:01Z limit=2", audit[2].Selector)
			require.Equal(t, []int64{1, 2}, audit[2].DeadLetterIDs)
			rec, err = st.Get(t.Context(), 6)
			require.NoError(t, err)
			require.Equal(t, dlq.StatusDiscarded, rec.Status, "the group's other dead letters are left alone")

			// An unknown dead letter, a bad selection.
			p = b.post(t, "/resolve", url.Values{"csrf": {token}, "id": {"99"}}, nil)
			require.Equal(t, http.StatusConflict, p.code)
			require.Contains(t, p.body, "dead letter 99 not found in ")
			p = b.post(t, "/resolve", url.Values{"csrf": {token}, "id": {"-1"}}, nil)
			require.Equal(t, http.StatusBadRequest, p.code)
			p = b.post(t, "/resolve", url.Values{"csrf": {token}, "group": {"garbage"}}, nil)
			require.Equal(t, http.StatusBadRequest, p.code)
			require.Contains(t, p.body, "does not decode")
		})
	}
}

// watermillTopic creates the table of a watermill-sql topic, as its subscribers do,
// and returns a function counting its messages' event IDs and replay counts.
func watermillTopic(t *testing.T, topic string) func() []string {
	t.Helper()
	pool := testdb.Pool(t)
	sub, err := wsql.NewSubscriber(wsql.BeginnerFromPgx(pool), wsql.SubscriberConfig{
		SchemaAdapter: wsql.DefaultPostgreSQLSchema{}, OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{}, InitializeSchema: true,
	}, watermill.NopLogger{})
	require.NoError(t, err)
	require.NoError(t, sub.SubscribeInitialize(topic))
	t.Cleanup(func() {
		_ = sub.Close()
		ctx := context.Background()
		_, _ = pool.Exec(ctx, "DROP TABLE IF EXISTS "+pgx.Identifier{"watermill_" + topic}.Sanitize())
		_, _ = pool.Exec(ctx, "DROP TABLE IF EXISTS "+pgx.Identifier{"watermill_offsets_" + topic}.Sanitize())
	})
	return func() []string {
		rows, err := pool.Query(t.Context(), `SELECT metadata FROM `+pgx.Identifier{"watermill_" + topic}.Sanitize()+` ORDER BY "offset"`)
		require.NoError(t, err)
		defer rows.Close()
		var out []string
		for rows.Next() {
			var md map[string]string
			var raw []byte
			require.NoError(t, rows.Scan(&raw))
			require.NoError(t, json.Unmarshal(raw, &md))
			out = append(out, md["event_id"]+" replay "+md[dlq.ReplayCountKey])
		}
		require.NoError(t, rows.Err())
		return out
	}
}

// TestConsoleReplay replays a failure group through its dry run into a watermill-sql
// topic, on both stores: the dry run publishes nothing and leaves out the dead letters
// without an event ID or kept in reduced form, which are refused by ID; the replay publishes the others at the form's rate, marks them
// replayed with their audit entries, and its progress can be followed. A replay that
// meets a publish error stops there.
func TestConsoleReplay(t *testing.T) {
	t.Parallel()
	for _, backend := range consoleBackends {
		t.Run(backend.name, func(t *testing.T) {
			t.Parallel()
			topic := randomTopic("idem_console_")
			published := watermillTopic(t, topic)
			derived := letterFor(topic, "derived:5d41402abc4b2a76b9719d911017c592")
			derived.Reason = dlq.ReasonMalformed
			binary := letterFor(topic, "evt-6")
			binary.Fingerprint, binary.Payload = "f2", []byte{0x00, 0xff} // the topic's JSON column refuses it
			letters := []*dlq.DeadLetter{letterFor(topic, "evt-1"), letterFor(topic, "evt-2"), letterFor(topic, "evt-3"), derived}
			for _, id := range []string{"evt-5", "", "evt-7"} {
				if id == "" {
					letters = append(letters, binary)
					continue
				}
				d := letterFor(topic, id)
				d.Fingerprint = "f2"
				letters = append(letters, d)
			}
			reduced := dlq.Reduce(letterFor(topic, "evt-8"), errors.New("ERROR: invalid byte sequence (SQLSTATE 22021)"))
			letters = append(letters, reduced) // 8, in the first group
			db, st := backend.open(t, nil, letters...)
			args := db
			if backend.name == "SQLite" {
				args = append(args, "--publish-url", testdb.URL())
			}
			b := startConsole(t, nil, args...)
			group := url.Values{"consumer": {"billing"}, "topic": {topic}, "fingerprint": {"f1"}}.Encode()

			// The dead letter without an event ID, and the one kept in reduced form, by
			// ID: refused as the command refuses them, nothing to confirm.
			p := b.get(t, "/replay?id=4")
			require.Equal(t, http.StatusConflict, p.code, p.body)
			requireSafePage(t, p)
			require.Contains(t, p.body, "cannot replay 1 dead letter, nothing was published:\n  dead letter 4: no event ID: the message had none (reason malformed)")
			require.NotContains(t, p.body, `id="replay-form"`)
			p = b.get(t, "/replay?id=8")
			require.Equal(t, http.StatusConflict, p.code, p.body)
			require.Contains(t, p.body, "dead letter 8: kept in reduced form: the store refused its data")
			require.NotContains(t, p.body, `id="replay-form"`)
			p = b.get(t, "/dead-letters/4")
			require.Contains(t, p.body, "Cannot be replayed: no event ID")
			require.NotContains(t, p.body, `href="/replay?id=4"`)

			// The group's dry run: three to publish, one refused, nothing published.
			p = b.get(t, "/group?"+group)
			require.Contains(t, p.body, `href="/replay?`+strings.ReplaceAll(group, "&", "&amp;")+`"`)
			p = b.get(t, "/replay?"+group)
			require.Equal(t, http.StatusOK, p.code, p.body)
			requireSafePage(t, p)
			require.Contains(t, p.body, `<span id="todo">3</span> messages`)
			require.Contains(t, p.body, `, to <span class="mono">postgres://REDACTED@`)
			require.Regexp(t, `<li><a href="/dead-letters/4">dead letter 4</a>: no event ID: the message had none \(reason malformed\)`, p.body)
			require.Regexp(t, `<li><a href="/dead-letters/8">dead letter 8</a>: kept in reduced form`, p.body)
			for _, id := range []string{"1", "2", "3"} {
				require.Contains(t, p.body, `<a href="/dead-letters/`+id+`">`+id+`</a>`)
			}
			require.Empty(t, published(), "a dry run publishes nothing")
			requireUntouched(t, st, 1, 2, 3, 4, 8)

			// Confirmed, at 50 messages a second.
			form := formOf(t, p.body, "replay-form")
			require.Equal(t, "5", form.Get("limit"), "what the dry run selected, the refused ones included")
			require.Equal(t, "3", form.Get("expected"))
			form.Set("reason", "fixed in v1.4.2")
			form.Set("rate", "50")
			start := time.Now()
			res := b.post(t, "/replay", form, nil)
			job := b.waitJob(t, res)
			require.GreaterOrEqual(t, time.Since(start), 40*time.Millisecond, "--rate 50 spaces three publishes by 20ms")
			require.Equal(t, "succeeded", job.State, job.Error)
			require.Equal(t, 3, job.Total)
			require.Equal(t, 3, job.Done)
			require.Equal(t, []int64{1, 2, 3}, job.Changed)
			require.Len(t, job.AuditIDs, 3)
			require.Regexp(t, `^replayed 3 dead letters to postgres://REDACTED@`, job.Summary)
			require.Equal(t, []string{"evt-1 replay 1", "evt-2 replay 1", "evt-3 replay 1"}, published())
			p = b.get(t, res.header.Get("Location"))
			require.Equal(t, http.StatusOK, p.code)
			requireSafePage(t, p)
			require.Contains(t, p.body, `<progress id="progress" max="3" value="3"></progress>`)
			require.Contains(t, p.body, `data-state="succeeded"`)
			require.NotContains(t, p.body, `http-equiv="refresh"`, "an ended replay's page stays")
			require.Regexp(t, `replayed 1 \(billing, event evt-1\) to `+topic+`: replay 1, audit entry \d+`, p.body)

			for id, want := range map[int64]dlq.Status{1: dlq.StatusReplayed, 2: dlq.StatusReplayed, 3: dlq.StatusReplayed, 4: dlq.StatusPending, 8: dlq.StatusPending} {
				rec, err := st.Get(t.Context(), id)
				require.NoError(t, err)
				require.Equal(t, want, rec.Status, id)
			}
			audit, err := st.Audit(t.Context(), dlq.AuditFilter{})
			require.NoError(t, err)
			require.Len(t, audit, 3, "one audit entry per replayed dead letter")
			selector := regexp.MustCompile(`^consumer=billing topic=` + topic + ` fingerprint=f1 status=pending until=\S+Z limit=5$`)
			for i, a := range audit {
				require.Equal(t, dlq.ActionReplay, a.Action)
				require.Equal(t, []int64{int64(i + 1)}, a.DeadLetterIDs)
				require.Equal(t, "fixed in v1.4.2", a.Reason)
				require.Regexp(t, selector, a.Selector)
				require.Equal(t, job.AuditIDs[i], a.ID)
			}

			// A publish error stops the replay: the dead letters after it are left.
			g2 := url.Values{"consumer": {"billing"}, "topic": {topic}, "fingerprint": {"f2"}}.Encode()
			p = b.get(t, "/replay?"+g2)
			require.Contains(t, p.body, `<span id="todo">3</span> messages`)
			job = b.waitJob(t, b.post(t, "/replay", formOf(t, p.body, "replay-form"), nil))
			require.Equal(t, "failed", job.State)
			require.Equal(t, []int64{5}, job.Changed)
			require.NotNil(t, job.Error)
			require.Contains(t, *job.Error, "publishing dead letter 6 to topic")
			require.Equal(t, "stopped: replayed 1 of 3 dead letters", job.Summary)
			for id, want := range map[int64]dlq.Status{5: dlq.StatusReplayed, 6: dlq.StatusPending, 7: dlq.StatusPending} {
				rec, err := st.Get(t.Context(), id)
				require.NoError(t, err)
				require.Equal(t, want, rec.Status, id)
			}
			require.Len(t, published(), 4)
		})
	}
}

// TestConsoleReplayInterrupted follows a slow replay: its progress shows on the way,
// a second replay is refused while it runs, and a shutdown stops it after the dead
// letter in flight, leaving the rest pending.
func TestConsoleReplayInterrupted(t *testing.T) {
	t.Parallel()
	topic := randomTopic("idem_console_")
	published := watermillTopic(t, topic)
	db, st := consoleBackends[0].open(t, nil, letterFor(topic, "evt-1"), letterFor(topic, "evt-2"))
	b := startConsole(t, nil, append(db, "--rate", "0.001")...)
	p := b.get(t, "/replay?id=1")
	require.Contains(t, p.body, `<input type="text" name="rate" value="0.001"`, "the form's rate defaults to --rate")
	group := url.Values{"consumer": {"billing"}, "topic": {topic}, "fingerprint": {"f1"}}.Encode()
	p = b.get(t, "/replay?"+group)
	res := b.post(t, "/replay", formOf(t, p.body, "replay-form"), nil)
	require.Equal(t, http.StatusSeeOther, res.code, res.body)
	loc := res.header.Get("Location")

	// One published; the second waits for its turn, 1000 seconds later.
	var st1 jobStatusJSON
	require.Eventually(t, func() bool {
		require.NoError(t, json.Unmarshal([]byte(b.get(t, loc+"/status").body), &st1))
		return st1.Done == 1
	}, 30*time.Second, 10*time.Millisecond)
	require.Equal(t, "running", st1.State)
	require.Equal(t, 2, st1.Total)
	p = b.get(t, loc)
	require.Contains(t, p.body, `<noscript><meta http-equiv="refresh" content="1"></noscript>`)
	require.Contains(t, p.body, `<progress id="progress" max="2" value="1"></progress>`)
	require.Contains(t, p.body, `data-status="`+loc+`/status"`)

	again := b.post(t, "/replay", url.Values{"csrf": {b.csrf(t)}, "id": {"2"}}, nil)
	require.Equal(t, http.StatusConflict, again.code)
	require.Contains(t, again.body, "another replay is running")

	b.stop(t)
	require.Equal(t, []string{"evt-1 replay 1"}, published())
	rec, err := st.Get(t.Context(), 2)
	require.NoError(t, err)
	require.Equal(t, dlq.StatusPending, rec.Status)
	require.Contains(t, b.stderr.String(), "interrupted before dead letter 2")
}
