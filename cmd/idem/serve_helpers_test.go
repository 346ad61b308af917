package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/sqlite"
)

// consoleBackend is a store the console tests run on.
type consoleBackend struct {
	name string
	// open creates a fresh store holding rows (written directly, with fixed times) and
	// letters (written by Put, as a consumer does), and returns the database flags of
	// the command and a reviewer on the same store.
	open func(t *testing.T, rows []seedRow, letters ...*dlq.DeadLetter) ([]string, dlq.Reviewer)
}

var consoleBackends = []consoleBackend{
	{"PostgreSQL", func(t *testing.T, rows []seedRow, letters ...*dlq.DeadLetter) ([]string, dlq.Reviewer) {
		pool := testdb.Pool(t)
		schema := testdb.Schema(t, pool)
		seedPostgres(t, schema, rows)
		store, err := postgres.New(pool, postgres.Config{Schema: schema})
		require.NoError(t, err)
		for _, d := range letters {
			_, err := store.Put(t.Context(), d)
			require.NoError(t, err)
		}
		return []string{"--database-url", testdb.URL(), "--schema", schema}, store
	}},
	{"SQLite", func(t *testing.T, rows []seedRow, letters ...*dlq.DeadLetter) ([]string, dlq.Reviewer) {
		path := sqliteDB(t, rows)
		store, err := sqlite.Open(t.Context(), path, sqlite.Config{})
		require.NoError(t, err)
		t.Cleanup(func() { _ = store.Close() })
		for _, d := range letters {
			_, err := store.Put(t.Context(), d)
			require.NoError(t, err)
		}
		return []string{"--database-url", "sqlite:" + filepath.ToSlash(path)}, store
	}},
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// consoleBundle is a console served by `idem serve`, run in process as main runs it,
// and a client with a cookie jar that does not follow redirects.
type consoleBundle struct {
	url            string
	client         *http.Client
	stdout, stderr *lockedBuffer
	stopOnce       sync.Once
	stopConsole    func(t *testing.T)
}

// stop stops the console, as SIGTERM does, and requires it to exit 0.
func (b *consoleBundle) stop(t *testing.T) {
	t.Helper()
	b.stopOnce.Do(func() { b.stopConsole(t) })
}

var servingRE = regexp.MustCompile(`^idem console: serving (https?://[^/ ]+)/ on `)

// startConsole runs `idem serve --listen 127.0.0.1:0 args...` with the environment env
// (and the golden clock), waits until it serves, and stops it when the test ends,
// requiring it to exit 0.
func startConsole(t *testing.T, env map[string]string, args ...string) *consoleBundle {
	t.Helper()
	b := &consoleBundle{stdout: &lockedBuffer{}, stderr: &lockedBuffer{}}
	full := map[string]string{envNow: testNow}
	for k, v := range env {
		full[k] = v
	}
	if full[envNow] == "" {
		delete(full, envNow) // the real clock
	}
	pr, pw := io.Pipe()
	c := &cli{stdout: pw, stderr: b.stderr, getenv: func(k string) string { return full[k] }, connectTimeout: 5 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan int, 1)
	go func() {
		code := c.run(ctx, append([]string{"serve", "--listen", "127.0.0.1:0"}, args...))
		pw.Close()
		exited <- code
	}()
	first := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for n := 0; sc.Scan(); n++ {
			_, _ = b.stdout.Write([]byte(sc.Text() + "\n"))
			if n == 0 {
				first <- sc.Text()
			}
		}
		close(first)
	}()
	select {
	case line, ok := <-first:
		m := servingRE.FindStringSubmatch(line)
		if !ok || m == nil {
			cancel()
			t.Fatalf("idem serve did not start: %q\n%s", line, b.stderr.String())
		}
		b.url = m[1]
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("idem serve did not start in time: %s", b.stderr.String())
	}
	b.stopConsole = func(t *testing.T) {
		cancel()
		select {
		case code := <-exited:
			require.Equal(t, 0, code, "idem serve: %s", b.stderr.String())
		case <-time.After(60 * time.Second):
			t.Error("idem serve did not stop")
		}
	}
	t.Cleanup(func() { b.stop(t) })
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	b.client = &http.Client{
		Jar:           jar,
		Timeout:       30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return b
}

// page is a response of the console, its body read.
type pageResult struct {
	code   int
	body   string
	header http.Header
}

func (b *consoleBundle) do(t *testing.T, req *http.Request) pageResult {
	t.Helper()
	res, err := b.client.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return pageResult{code: res.StatusCode, body: string(body), header: res.Header}
}

func (b *consoleBundle) get(t *testing.T, path string) pageResult {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, b.url+path, nil)
	require.NoError(t, err)
	return b.do(t, req)
}

// post posts form to path as the console's own page does: a same-origin browser
// request. headers replace or remove (with "") the headers it sets; a Cookie header
// replaces the client's cookies.
func (b *consoleBundle) post(t *testing.T, path string, form url.Values, headers map[string]string) pageResult {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, b.url+path, strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", b.url)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	for k, v := range headers {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	if _, ok := headers["Cookie"]; ok {
		jarless := *b.client
		jarless.Jar = nil
		res, err := jarless.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		body, err := io.ReadAll(res.Body)
		require.NoError(t, err)
		return pageResult{code: res.StatusCode, body: string(body), header: res.Header}
	}
	return b.do(t, req)
}

var (
	csrfMetaRE = regexp.MustCompile(`<meta name="csrf-token" content="([^"]+)">`)
	hiddenRE   = regexp.MustCompile(`<input type="hidden" name="([^"]+)" value="([^"]*)">`)
)

// csrf returns the anti-forgery token of the console's pages, getting a page first
// so that the cookie is set.
func (b *consoleBundle) csrf(t *testing.T) string {
	t.Helper()
	p := b.get(t, "/audit")
	require.Equal(t, http.StatusOK, p.code, p.body)
	m := csrfMetaRE.FindStringSubmatch(p.body)
	require.NotNil(t, m, "no csrf token in the page")
	return html.UnescapeString(m[1])
}

// formOf returns the hidden fields of the form whose id is id in body.
func formOf(t *testing.T, body, id string) url.Values {
	t.Helper()
	start := strings.Index(body, `id="`+id+`"`)
	require.GreaterOrEqual(t, start, 0, "no form %s in the page", id)
	end := strings.Index(body[start:], "</form>")
	require.Greater(t, end, 0)
	form := url.Values{}
	for _, m := range hiddenRE.FindAllStringSubmatch(body[start:start+end], -1) {
		form.Set(html.UnescapeString(m[1]), html.UnescapeString(m[2]))
	}
	return form
}

// waitJob follows the job the response redirected to until it ends, and returns its
// status.
func (b *consoleBundle) waitJob(t *testing.T, redirect pageResult) jobStatusJSON {
	t.Helper()
	require.Equal(t, http.StatusSeeOther, redirect.code, redirect.body)
	loc := redirect.header.Get("Location")
	require.Regexp(t, `^/jobs/[0-9a-f]{32}$`, loc)
	var st jobStatusJSON
	require.Eventually(t, func() bool {
		p := b.get(t, loc+"/status")
		require.Equal(t, http.StatusOK, p.code, p.body)
		require.NoError(t, json.Unmarshal([]byte(p.body), &st))
		return st.State != "running"
	}, 60*time.Second, 20*time.Millisecond)
	return st
}
