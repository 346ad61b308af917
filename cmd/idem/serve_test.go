package main

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dlq"
)

// requireSafePage checks what every page of the console must be: served with the
// security headers, with no inline script or style, no raw control or bidirectional
// character, and valid UTF-8.
func requireSafePage(t *testing.T, p pageResult) {
	t.Helper()
	require.Equal(t, contentSecurityPolicy, p.header.Get("Content-Security-Policy"))
	require.NotContains(t, p.header.Get("Content-Security-Policy"), "unsafe-inline")
	require.Equal(t, "DENY", p.header.Get("X-Frame-Options"))
	require.Equal(t, "nosniff", p.header.Get("X-Content-Type-Options"))
	require.Equal(t, "no-referrer", p.header.Get("Referrer-Policy"))
	require.Equal(t, "no-store", p.header.Get("Cache-Control"))
	require.Equal(t, "text/html; charset=utf-8", p.header.Get("Content-Type"))
	for _, tag := range regexp.MustCompile(`(?i)<script[^>]*>`).FindAllString(p.body, -1) {
		require.Equal(t, `<script src="/static/console.js" defer>`, tag, "only the console's own script, never an inline one")
	}
	require.NotRegexp(t, `(?i)<script[^>]*>[^<]`, p.body, "no inline script")
	require.NotRegexp(t, `(?i)\sstyle=`, p.body, "no inline style")
	require.NotRegexp(t, `(?i)<[a-z][^>]*\son[a-z]+\s*=`, p.body, "no event handler attribute")
	require.True(t, utf8.ValidString(p.body), "the page is valid UTF-8")
	for i, r := range p.body {
		if r == '\n' || r == '\t' {
			continue
		}
		if needsEscape(r) {
			t.Fatalf("the page holds %U at byte %d: %q", r, i, p.body[max(0, i-60):min(len(p.body), i+60)])
		}
	}
}

// requireHas fails unless body holds want, without printing the whole page.
func requireHas(t *testing.T, body, want string, msg ...any) {
	t.Helper()
	if !strings.Contains(body, want) {
		t.Fatalf("the page lacks %q %v (%d bytes; saved as %s)", want, msg, len(body), savePage(t, body))
	}
}

// savePage writes a page that failed a check where it can be read.
func savePage(t *testing.T, body string) string {
	path := filepath.Join(t.TempDir(), "page.html")
	_ = os.WriteFile(path, []byte(body), 0o644)
	if dir := os.Getenv("TEST_SAVE_PAGES"); dir != "" {
		path = filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+".html")
		_ = os.WriteFile(path, []byte(body), 0o644)
	}
	return path
}

func TestConsolePages(t *testing.T) {
	t.Parallel()
	for _, backend := range consoleBackends {
		t.Run(backend.name, func(t *testing.T) {
			t.Parallel()
			db, _ := backend.open(t, goldenRows)
			b := startConsole(t, nil, append(db,
				"--trace-url", "https://jaeger.example/trace/{trace_id}?span={span_id}",
				"--correlation-url", "https://logs.example/search?q=correlation_id:{correlation_id}",
				"--redact-keys", "tenant")...)
			require.Contains(t, b.stdout.String(), "idem console: serving http://127.0.0.1:")

			// The overview: the pending dead letters by group, the backlog's age, the
			// chart of new dead letters.
			p := b.get(t, "/")
			require.Equal(t, http.StatusOK, p.code, p.body)
			requireSafePage(t, p)
			require.Contains(t, p.body, `<div class="num" id="pending">5</div>`)
			require.Contains(t, p.body, `<div class="num">4</div><div class="label">failure groups</div>`)
			require.Contains(t, p.body, `<div class="num" id="backlog-age">2d2h</div>`)
			require.Contains(t, p.body, "backlog age: oldest since 2026-01-08T09:30:00Z")
			group := `/group?consumer=billing&amp;fingerprint=3f2a9c1d7e6b5a40&amp;topic=orders`
			require.Regexp(t, `(?s)<a href="`+regexp.QuoteMeta(group)+`">3f2a9c1d7e6b5a40</a></td>\s*<td class="n">2</td>\s*`+
				`<td class="time">2026-01-08T09:30:00Z</td>\s*<td class="time">2026-01-09T10:00:00Z</td>\s*<td>2d2h</td>`, p.body)
			require.Contains(t, p.body, `aria-label="3 new dead letters, last 24 hours, per hour"`)
			require.Contains(t, p.body, "<title>billing · orders · 8c1e44b0a9d2f311, 2026-01-10 11:00 – 12:00 UTC: 1 new dead letter</title>")
			require.NotContains(t, p.body, "evt-0999", "the discarded dead letter is not pending")
			p = b.get(t, "/?window=7d")
			require.Equal(t, http.StatusOK, p.code)
			require.Contains(t, p.body, `aria-label="6 new dead letters, last 7 days, per 6 hours"`, "whatever their status now")

			// A group: its pending dead letters, or those of another status.
			p = b.get(t, "/group?consumer=billing&topic=orders&fingerprint=3f2a9c1d7e6b5a40")
			require.Equal(t, http.StatusOK, p.code, p.body)
			requireSafePage(t, p)
			require.Contains(t, p.body, `<div class="num" id="group-count">2</div>`)
			require.Contains(t, p.body, `<a href="/dead-letters/1">1</a>`)
			require.Contains(t, p.body, `<a href="/dead-letters/2">2</a>`)
			require.NotContains(t, p.body, `<a href="/dead-letters/6">`)
			require.Contains(t, p.body, `href="/replay?consumer=billing&amp;fingerprint=3f2a9c1d7e6b5a40&amp;topic=orders"`)
			require.Contains(t, p.body, `href="/discard?consumer=billing&amp;fingerprint=3f2a9c1d7e6b5a40&amp;topic=orders"`)
			p = b.get(t, "/group?consumer=billing&topic=orders&fingerprint=3f2a9c1d7e6b5a40&status=all")
			require.Contains(t, p.body, `<a href="/dead-letters/6">6</a>`)
			require.NotContains(t, p.body, `id="replay-group"`, "the actions apply to pending dead letters")
			p = b.get(t, "/group?consumer=billing&topic=orders")
			require.Equal(t, http.StatusBadRequest, p.code)
			require.Contains(t, p.body, "a group is named by its consumer, topic and fingerprint: fingerprint is missing")

			// A dead letter: fields, error, history, metadata redacted, payload hidden,
			// trace and correlation links, audit.
			p = b.get(t, "/dead-letters/1")
			require.Equal(t, http.StatusOK, p.code, p.body)
			requireSafePage(t, p)
			for _, want := range []string{
				`<pre class="error" id="error">charge order ord-1001: payment gateway unavailable (503)</pre>`,
				"<tr><th>event id</th><td class=\"mono\">evt-1001</td></tr>",
				"<tr><th>event type</th><td>OrderPlaced</td></tr>",
				"<tr><th>host</th><td>worker-7</td></tr>",
				`<td class="err">charge order ord-1001: payment gateway timeout</td>`,
				`<tr><th class="mono">authorization</th><td class="mono">REDACTED</td></tr>`,
				`<tr><th class="mono">x-tenant</th><td class="mono">REDACTED</td></tr>`,
				`<tr><th class="mono">correlation_id</th><td class="mono">corr-1001</td></tr>`,
				"<p>208 bytes, JSON.</p>",
				`href="/dead-letters/1?payload=1#payload"`,
				`<a href="https://jaeger.example/trace/4bf92f3577b34da6a3ce929d0e0e4736?span=00f067aa0ba902b7" rel="noreferrer noopener" target="_blank">4bf92f3577b34da6a3ce929d0e0e4736</a>`,
				`<a href="https://logs.example/search?q=correlation_id:corr-1001" rel="noreferrer noopener" target="_blank">corr-1001</a>`,
				"No action recorded yet.",
			} {
				require.Contains(t, p.body, want)
			}
			require.NotContains(t, p.body, "acme", "--redact-keys tenant")
			require.NotContains(t, p.body, "total_cents", "the payload shows only on request")
			p = b.get(t, "/dead-letters/1?payload=1")
			require.Equal(t, http.StatusOK, p.code)
			requireSafePage(t, p)
			require.Contains(t, p.body, `&#34;total_cents&#34;: 1250,`)
			require.Contains(t, p.body, `&#34;token&#34;: &#34;REDACTED&#34;`)
			require.NotContains(t, p.body, "tok_live_4242")
			require.NotContains(t, p.body, "s3cret")
			p = b.get(t, "/dead-letters/5?payload=1")
			require.Contains(t, p.body, "<p>4 bytes, binary, shown as base64.</p>")
			require.Contains(t, p.body, `<pre class="payload" id="payload-text">AP8QeA==</pre>`)
			for _, path := range []string{"/dead-letters/99", "/dead-letters/0", "/dead-letters/x"} {
				p = b.get(t, path)
				require.Equal(t, http.StatusNotFound, p.code, path)
				requireSafePage(t, p)
			}

			// The audit, and the static files.
			p = b.get(t, "/audit?since=all")
			require.Equal(t, http.StatusOK, p.code)
			requireSafePage(t, p)
			require.Contains(t, p.body, "No action recorded yet.")
			p = b.get(t, "/static/console.css")
			require.Equal(t, http.StatusOK, p.code)
			require.Equal(t, "text/css; charset=utf-8", p.header.Get("Content-Type"))
			require.Equal(t, "nosniff", p.header.Get("X-Content-Type-Options"))
			p = b.get(t, "/static/console.js")
			require.Equal(t, http.StatusOK, p.code)
			require.Equal(t, "text/javascript; charset=utf-8", p.header.Get("Content-Type"))
			require.Equal(t, http.StatusNotFound, b.get(t, "/static/").code, "no directory listing")
			require.Equal(t, http.StatusNotFound, b.get(t, "/nope").code)
		})
	}
}

// hostileRow is a dead letter whose every field is an attack on the page that shows
// it. PostgreSQL text columns take neither NUL nor invalid UTF-8 (idem's own writes
// scrub them): on PostgreSQL, only the payload and the metadata hold them.
func hostileRow(postgres bool) seedRow {
	text := func(s string) string {
		if postgres {
			return strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "")
		}
		return s
	}
	errText := `"><img src=x onerror=alert(6)><script>alert(7)</script>` + "\u202eevil\x00nul\xffbad\x1b[2J " + strings.Repeat("very long error ", 10000)
	return seedRow{
		consumer: `<script>alert("consumer")</script>`, eventID: `evt-"><img src=x onerror=alert(1)>`, topic: "orders\u202e",
		eventType: `<svg onload=alert(2)>`,
		payload:   []byte("{\"html\":\"<script>alert(3)</script>\",\"img\":\"<img src=x onerror=alert(4)>\",\"rtl\":\"\u202eevil\"}"),
		metadata: map[string]string{
			"event_id": `evt-"><img src=x onerror=alert(1)>`, "x-html": `<script>alert(5)</script>`, "x-\u202ebidi": "v\u202e",
			"x-nul": "a\x00b", "x-bad": "\xff\xfe", "\x1b]0;title\x07": "esc",
		},
		reason: dlq.ReasonPermanent, err: text(errText), fingerprint: `"><script>alert(8)</script>`,
		attempts: 1, count: 1, status: dlq.StatusPending,
		history:        []dlq.Failure{{At: ts("2026-01-10T11:58:00Z"), Error: text(errText)}},
		deadLetteredAt: "2026-01-10T11:58:00Z",
	}
}

// TestConsoleHostileInput renders a dead letter whose payload, error, metadata, IDs
// and names are hostile, on every page that shows it: nothing it holds becomes markup,
// a script, an attribute, a link of its own, or a control character; long values are
// cut in lists.
func TestConsoleHostileInput(t *testing.T) {
	t.Parallel()
	for _, backend := range consoleBackends {
		t.Run(backend.name, func(t *testing.T) {
			t.Parallel()
			row := hostileRow(backend.name == "PostgreSQL")
			db, st := backend.open(t, []seedRow{row, goldenRows[3]})
			b := startConsole(t, nil, append(db, "--trace-url", "https://jaeger.example/trace/{trace_id}",
				"--correlation-url", "https://logs.example/search?q={correlation_id}", "--publish-url", "redis://127.0.0.1:1")...)
			recs, err := st.List(t.Context(), dlq.Filter{})
			require.NoError(t, err)
			require.Len(t, recs, 2)
			hostile := recs[0]
			groupQuery := url.Values{"consumer": {hostile.Consumer}, "topic": {hostile.Topic}, "fingerprint": {hostile.Fingerprint}}.Encode()

			pages := map[string]string{
				"overview":    "/",
				"group":       "/group?" + groupQuery,
				"dead letter": fmt.Sprintf("/dead-letters/%d?payload=1", hostile.ID),
				"escapes":     fmt.Sprintf("/dead-letters/%d?payload=1", recs[1].ID),
				"replay":      "/replay?" + groupQuery,
				"discard":     "/discard?" + groupQuery,
			}
			for name, path := range pages {
				p := b.get(t, path)
				require.Equal(t, http.StatusOK, p.code, "%s: %s", name, p.body)
				requireSafePage(t, p)
				for _, raw := range []string{"<script>alert", "<img", "<svg onload", "\x00", "\x1b"} {
					if i := strings.Index(p.body, raw); i >= 0 {
						t.Fatalf("%s shows %q raw: %q", name, raw, p.body[max(0, i-60):min(len(p.body), i+60)])
					}
				}
				if name != "escapes" {
					requireHas(t, p.body, "&lt;script&gt;alert(", "%s shows the text, escaped", name)
				}
				if name != "dead letter" {
					require.Less(t, len(p.body), 64<<10, "%s cuts long values", name)
				}
			}

			p := b.get(t, pages["dead letter"])
			requireHas(t, p.body, `\u202eevil`, "a bidirectional override is shown, not obeyed")
			requireHas(t, p.body, `&lt;svg onload=alert(2)&gt;`)
			requireHas(t, p.body, `&#34;html&#34;: &#34;&lt;script&gt;alert(3)&lt;/script&gt;&#34;`)
			requireHas(t, p.body, `<th class="mono">base64:eC3igK5iaWRp</th><td class="mono">v\u202e</td>`)
			requireHas(t, p.body, `<th class="mono">base64:G10wO3RpdGxlBw==</th>`, "a key a terminal would act on is shown as base64, as the CLI shows it")
			if backend.name == "SQLite" {
				requireHas(t, p.body, `\x00nul\xffbad\x1b[2J`, "NUL, invalid UTF-8 and escapes are shown as escapes")
			}
			// The links of the IDs escape them: no attribute, no second URL.
			requireHas(t, p.body, `<a href="https://logs.example/search?q=`+strings.ReplaceAll(url.QueryEscape(hostile.CorrelationID), "+", "&#43;")+`" rel="noreferrer noopener" target="_blank">`)
			requireHas(t, p.body, "…", "a 160 kB error is cut")
			require.Less(t, len(p.body), 160<<10)

			p = b.get(t, pages["escapes"])
			requireHas(t, p.body, `\x1b]0;pwned\x07\x1b[2J&lt;order id=&#34;ord-1004&#34;/&gt;\u009b31m\u202eevil`)
			requireHas(t, p.body, `empty\r`)
		})
	}
}

func TestLinkTemplate(t *testing.T) {
	t.Parallel()
	lt, err := parseLinkTemplate("https://jaeger.example/trace/{trace_id}?uiFind={span_id}#x", "trace_id", "span_id")
	require.NoError(t, err)
	require.Equal(t, "https://jaeger.example/trace/a%2Fb%3F%22%3E%3Cx?uiFind=c%26d%3De+f#x",
		lt.expand(map[string]string{"trace_id": `a/b?"><x`, "span_id": "c&d=e f"}))
	require.Equal(t, "https://jaeger.example/trace/abc?uiFind=#x", lt.expand(map[string]string{"trace_id": "abc"}))
	var none *linkTemplate
	require.Empty(t, none.expand(map[string]string{"trace_id": "abc"}))

	for _, bad := range []string{
		"https://jaeger.example/trace/",          // no placeholder
		"https://jaeger.example/{trace_id}/{x}",  // an unknown one
		"javascript:alert({trace_id})",           // not http
		"/trace/{trace_id}",                      // not absolute
		"https://jaeger.example/%zz/{trace_id}",  // not a URL
		"ftp://jaeger.example/trace/{trace_id}",  // not http
		"https:///trace/{trace_id}",              // no host
		"https://jaeger.example/{trace_id}{span", // unclosed
	} {
		_, err := parseLinkTemplate(bad, "trace_id", "span_id")
		require.Error(t, err, bad)
	}
}
