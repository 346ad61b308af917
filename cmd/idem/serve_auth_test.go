package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const testToken = "c2f1b7a94e0d4a6f8b3e5d7c9a1f2e4b"

// TestConsoleStartupChecks runs `idem serve` with flags it must refuse before it
// listens: a non-loopback address without credentials, weak credentials, templates
// that are not http(s) URLs with their placeholder. No refusal prints a credential.
func TestConsoleStartupChecks(t *testing.T) {
	t.Parallel()
	path := sqliteDB(t, nil)
	for _, tc := range []struct {
		args []string
		env  map[string]string
		code int
		want string
	}{
		{[]string{"--listen", "0.0.0.0:0"}, nil, 2, "idem: --listen 0.0.0.0:0 is not a loopback address: set --token (or $IDEM_CONSOLE_TOKEN) or --basic-auth (or $IDEM_CONSOLE_BASIC_AUTH)"},
		{[]string{"--listen", ":8080"}, nil, 2, "is not a loopback address"},
		{[]string{"--listen", "[::]:8080"}, nil, 2, "is not a loopback address"},
		{[]string{"--listen", "192.0.2.7:8080"}, nil, 2, "is not a loopback address"},
		{[]string{"--listen", "8080"}, nil, 2, `idem: --listen must be host:port, such as 127.0.0.1:8080, got "8080"`},
		{[]string{"--token", "shortsecret"}, nil, 2, "idem: --token must be at least 16 bytes long, got 11"},
		{nil, map[string]string{envConsoleToken: "shortsecret"}, 2, "idem: --token must be at least 16 bytes long"},
		{[]string{"--token", "a token with spaces in it"}, nil, 2, "idem: --token must be printable ASCII without spaces"},
		{[]string{"--basic-auth", "ops"}, nil, 2, "idem: --basic-auth must be USER:PASSWORD"},
		{[]string{"--basic-auth", "ops:shortsecret"}, nil, 2, "idem: --basic-auth: the password must be at least 12 bytes long, got 11"},
		{[]string{"--trace-url", "https://jaeger.example/trace/"}, nil, 2, `idem: --trace-url: "https://jaeger.example/trace/" holds no {trace_id}`},
		{[]string{"--trace-url", "javascript:alert({trace_id})"}, nil, 2, "is not an absolute http:// or https:// URL"},
		{[]string{"--trace-url", "https://jaeger.example/{trace_id}/{tenant}"}, nil, 2, "holds a placeholder other than {trace_id}, {span_id}"},
		{[]string{"--correlation-url", "https://logs.example/?q={trace_id}"}, nil, 2, "idem: --correlation-url: \"https://logs.example/?q={trace_id}\" holds no {correlation_id}"},
		{[]string{"--rate", "-1"}, nil, 2, "idem: --rate must be 0 (no limit) or from 0.001 to 10000 messages per second, got -1"},
		{[]string{"--tls-cert", "cert.pem"}, nil, 2, "idem: --tls-cert and --tls-key go together"},
		{[]string{"--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"}, nil, 2, "idem: --tls-cert, --tls-key: open /nonexistent/cert.pem"},
		{[]string{"--publish-url", "kafka://broker:9092"}, nil, 2, "unsupported publish URL kafka://broker:9092"},
		{[]string{"--redact-keys", "a\x00b"}, nil, 2, "--redact-keys must be UTF-8 text without NUL bytes"},
		{[]string{"--database-url", filepath.Join(t.TempDir(), "missing.db")}, nil, 3, "missing.db does not exist"},
	} {
		args := append([]string{"serve", "--database-url", path}, tc.args...)
		res := idemWith(t, tc.env, 5*time.Second, args...)
		require.Equal(t, tc.code, res.code, "%v: %s", tc.args, res.stderr)
		require.Contains(t, res.stderr, tc.want, tc.args)
		require.Empty(t, res.stdout, "%v: nothing listened", tc.args)
		require.NotContains(t, res.stderr, "shortsecret", tc.args)
	}

	// With credentials, any address is accepted: the check passes (without
	// listening on it).
	for _, f := range []*serveFlags{
		{listen: "0.0.0.0:8080", token: testToken},
		{listen: "[::]:8080", basicAuth: "ops:correct-horse-battery"},
		{listen: "192.0.2.7:8080", token: testToken, basicAuth: "ops:correct-horse-battery"},
		{listen: "localhost:8080"},
		{listen: "[::1]:8080"},
		{listen: "127.0.0.2:8080"},
	} {
		e := &env{cli: &cli{getenv: func(string) string { return "" }}, cmd: "serve", sqlitePath: path, dbURL: path, shownURL: path}
		require.NoError(t, f.check(e), f.listen)
	}
}

// consoleFor returns the handler of a console on a SQLite database, with flags f, for
// requests made up by the test (their remote address and Host header included).
func consoleFor(t *testing.T, f *serveFlags) http.Handler {
	t.Helper()
	path := sqliteDB(t, goldenRows)
	c := &cli{stdout: io.Discard, stderr: io.Discard, getenv: func(k string) string { return map[string]string{envNow: testNow}[k] }, connectTimeout: 5 * time.Second}
	e := &env{cli: c, cmd: "serve", stdout: io.Discard}
	require.NoError(t, e.setDatabase(path, "idem"))
	con, err := openConsole(t.Context(), e, f)
	require.NoError(t, err)
	t.Cleanup(con.close)
	return con.handler()
}

func serveReq(h http.Handler, remote, host string, header map[string]string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, "http://"+host+"/", nil)
	r.RemoteAddr = remote
	for k, v := range header {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// TestConsoleLoopbackOnly checks, request by request, that a console without
// credentials answers only loopback clients that name a loopback host (a DNS
// rebinding page names its own), and that one with credentials answers anyone who
// has them.
func TestConsoleLoopbackOnly(t *testing.T) {
	t.Parallel()
	h := consoleFor(t, &serveFlags{listen: "127.0.0.1:0"})
	for _, tc := range []struct {
		remote, host string
		code         int
		want         string
	}{
		{"127.0.0.1:40000", "127.0.0.1:8080", http.StatusOK, "Pending dead letters"},
		{"127.0.0.1:40000", "localhost:8080", http.StatusOK, "Pending dead letters"},
		{"[::1]:40000", "[::1]:8080", http.StatusOK, "Pending dead letters"},
		{"192.0.2.1:40000", "127.0.0.1:8080", http.StatusForbidden, "serves loopback clients only"},
		{"10.1.2.3:40000", "localhost:8080", http.StatusForbidden, "serves loopback clients only"},
		{"127.0.0.1:40000", "attacker.example:8080", http.StatusForbidden, `the Host "attacker.example:8080" is not a loopback name`},
		{"127.0.0.1:40000", "127.0.0.1.nip.io", http.StatusForbidden, "is not a loopback name"},
	} {
		w := serveReq(h, tc.remote, tc.host, nil)
		require.Equal(t, tc.code, w.Code, "%s %s: %s", tc.remote, tc.host, w.Body.String())
		require.Contains(t, w.Body.String(), tc.want)
		require.Equal(t, "DENY", w.Header().Get("X-Frame-Options"), "every response carries the headers")
	}

	h = consoleFor(t, &serveFlags{listen: "0.0.0.0:0", token: testToken})
	w := serveReq(h, "192.0.2.1:40000", "idem.internal:8080", map[string]string{"Authorization": "Bearer " + testToken})
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	w = serveReq(h, "192.0.2.1:40000", "idem.internal:8080", map[string]string{"Authorization": "Bearer " + testToken[1:]})
	require.Equal(t, http.StatusUnauthorized, w.Code)
	w = serveReq(h, "192.0.2.1:40000", "idem.internal:8080", map[string]string{"Accept": "text/html"})
	require.Equal(t, http.StatusSeeOther, w.Code)
	require.Equal(t, "/login?next=%2F", w.Header().Get("Location"))
}

// TestConsoleToken logs in to a console that takes a token, from the login page and
// with a bearer header, and out again.
func TestConsoleToken(t *testing.T) {
	t.Parallel()
	db, _ := consoleBackends[1].open(t, goldenRows)
	b := startConsole(t, map[string]string{envConsoleToken: testToken}, db...)

	page := func(path string, header map[string]string) pageResult {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, b.url+path, nil)
		require.NoError(t, err)
		for k, v := range header {
			req.Header.Set(k, v)
		}
		return b.do(t, req)
	}
	p := page("/dead-letters/1", map[string]string{"Accept": "text/html"})
	require.Equal(t, http.StatusSeeOther, p.code)
	require.Equal(t, "/login?next=%2Fdead-letters%2F1", p.header.Get("Location"))
	require.Equal(t, http.StatusUnauthorized, page("/", nil).code)
	require.Equal(t, http.StatusUnauthorized, page("/", map[string]string{"Authorization": "Bearer wrong-token-0123456789"}).code)
	require.Equal(t, http.StatusUnauthorized, page("/jobs/x/status", nil).code)
	require.Equal(t, http.StatusOK, page("/", map[string]string{"Authorization": "Bearer " + testToken}).code)
	require.Equal(t, http.StatusOK, page("/static/console.css", nil).code, "the stylesheet of the login page")

	// The login page: a wrong token, then the right one.
	p = b.get(t, "/login?next=/dead-letters/1")
	require.Equal(t, http.StatusOK, p.code)
	requireSafePage(t, p)
	require.NotContains(t, p.body, "sqlite:", "the login page says nothing of the store")
	form := formOf(t, p.body, "login-form")
	require.Equal(t, "/dead-letters/1", form.Get("next"))
	form.Set("token", "wrong-token-0123456789")
	p = b.post(t, "/login", form, nil)
	require.Equal(t, http.StatusUnauthorized, p.code)
	require.Contains(t, p.body, "Wrong token.")
	form.Set("token", testToken)
	p = b.post(t, "/login", form, nil)
	require.Equal(t, http.StatusSeeOther, p.code)
	require.Equal(t, "/dead-letters/1", p.header.Get("Location"))
	require.Regexp(t, `^idem_session=[A-Za-z0-9_-]{43}; Path=/; HttpOnly; SameSite=Strict$`, p.header.Get("Set-Cookie"))
	require.NotContains(t, p.header.Get("Set-Cookie"), testToken)
	p = b.get(t, "/dead-letters/1")
	require.Equal(t, http.StatusOK, p.code)
	require.Contains(t, p.body, `action="/logout"`)

	// A login's next page stays on the console.
	form.Set("next", "//attacker.example/")
	p = b.post(t, "/login", form, nil)
	require.Equal(t, "/", p.header.Get("Location"))

	// Logged out.
	p = b.post(t, "/logout", url.Values{"csrf": {b.csrf(t)}}, nil)
	require.Equal(t, http.StatusSeeOther, p.code)
	require.Equal(t, "/login", p.header.Get("Location"))
	require.Equal(t, http.StatusUnauthorized, b.get(t, "/").code)
	require.NotContains(t, b.stdout.String()+b.stderr.String(), testToken)
}

// TestConsoleBasicAuth checks a console behind basic authentication.
func TestConsoleBasicAuth(t *testing.T) {
	t.Parallel()
	db, _ := consoleBackends[1].open(t, goldenRows)
	b := startConsole(t, nil, append(db, "--basic-auth", "ops:correct-horse-battery")...)
	for _, tc := range []struct {
		user, password string
		code           int
	}{
		{"", "", http.StatusUnauthorized},
		{"ops", "wrong-horse-battery", http.StatusUnauthorized},
		{"admin", "correct-horse-battery", http.StatusUnauthorized},
		{"ops", "correct-horse-battery", http.StatusOK},
	} {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, b.url+"/", nil)
		require.NoError(t, err)
		if tc.user != "" {
			req.SetBasicAuth(tc.user, tc.password)
		}
		p := b.do(t, req)
		require.Equal(t, tc.code, p.code, tc)
		if tc.code == http.StatusUnauthorized {
			require.Equal(t, `Basic realm="idem console", charset="UTF-8"`, p.header.Get("WWW-Authenticate"))
		}
	}
	require.NotContains(t, b.stdout.String()+b.stderr.String(), "correct-horse-battery")
}

// TestConsoleTLS serves the console over HTTPS with --tls-cert and --tls-key: its
// cookies are Secure, and it sends HSTS.
func TestConsoleTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))

	db, _ := consoleBackends[1].open(t, goldenRows)
	b := startConsole(t, nil, append(db, "--tls-cert", certFile, "--tls-key", keyFile)...)
	require.True(t, strings.HasPrefix(b.url, "https://127.0.0.1:"), b.url)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	b.client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	p := b.get(t, "/")
	require.Equal(t, http.StatusOK, p.code)
	require.Equal(t, "max-age=31536000", p.header.Get("Strict-Transport-Security"))
	require.Regexp(t, `^idem_csrf=[A-Za-z0-9_-]{43}; Path=/; HttpOnly; Secure; SameSite=Strict$`, p.header.Get("Set-Cookie"))
}

// TestConsoleSignals runs the idem binary's console and stops it with SIGTERM, then
// SIGINT: it exits 0 each time, having answered until then.
func TestConsoleSignals(t *testing.T) {
	t.Parallel()
	path := sqliteDB(t, goldenRows)
	for _, sig := range []os.Signal{syscall.SIGTERM, os.Interrupt} {
		cmd := exec.CommandContext(t.Context(), binary(t), "serve", "--listen", "127.0.0.1:0", "--database-url", path)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		require.NoError(t, cmd.Start())
		lines := bufio.NewScanner(stdout)
		require.True(t, lines.Scan(), stderr.String())
		m := servingRE.FindStringSubmatch(lines.Text())
		require.NotNil(t, m, lines.Text())
		res, err := http.Get(m[1] + "/")
		require.NoError(t, err)
		_ = res.Body.Close()
		require.Equal(t, http.StatusOK, res.StatusCode)

		require.NoError(t, cmd.Process.Signal(sig))
		var rest strings.Builder
		for lines.Scan() {
			rest.WriteString(lines.Text() + "\n")
		}
		require.NoError(t, cmd.Wait(), "%v: %s", sig, stderr.String())
		require.Equal(t, "idem console: stopped\n", rest.String())
	}
}
