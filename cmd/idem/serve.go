package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"embed"
	"errors"
	"flag"
	"fmt"
	"html/template"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// The environment variables the console's credentials default to. Prefer them to the
// flags: the flags of a process are visible to every user of the machine.
const (
	envConsoleToken     = "IDEM_CONSOLE_TOKEN"
	envConsoleBasicAuth = "IDEM_CONSOLE_BASIC_AUTH"
)

// defaultListen is where the console listens unless --listen says otherwise: loopback
// only, so that nothing off the machine reaches it without credentials.
const defaultListen = "127.0.0.1:8080"

// The shortest credentials the console accepts: a token or password short enough to
// guess is no protection for a page that replays and discards production messages.
const (
	minTokenLen    = 16
	minPasswordLen = 12
)

// The timeouts of the console's HTTP server, and how long a shutdown waits for the
// requests and replays in flight.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 2 * time.Minute
	idleTimeout       = 2 * time.Minute
	shutdownTimeout   = 10 * time.Second
	maxHeaderBytes    = 64 << 10
	maxFormBytes      = 64 << 10
)

//go:embed console/templates/*.html console/static/*
var consoleFS embed.FS

var serveCommands = []*command{{
	name:    "serve",
	summary: "serve the web console: the dead-letter review in a browser",
	help: `
Serve starts the web console on --listen: the dead-letter review of 'idem dlq' in a
browser. It shows the pending dead letters grouped by failure, with a chart of new
dead letters over time and the age of the backlog; a page per group and per dead
letter (error, attempts, metadata with secrets redacted, the payload on request,
trace and correlation IDs, the audit trail); and the audit. Its actions, replay
(a dry run first), discard (with a reason) and resolve, run the same code as
'idem dlq replay', 'idem dlq discard' and 'idem dlq resolve', audit entry included.

It listens on loopback unless --listen says otherwise. Any other address requires
credentials: --token (or $IDEM_CONSOLE_TOKEN), or --basic-auth (or
$IDEM_CONSOLE_BASIC_AUTH). Without credentials, it answers only requests from
loopback that name a loopback host. Every change is a POST that carries the form's
anti-forgery token and comes from the console's own pages. --read-only hides and
refuses every action. It stops on SIGINT or SIGTERM, letting the requests in flight
finish and a running replay stop after its current dead letter.`,
	setup: func(fs *flag.FlagSet) action {
		f := &serveFlags{}
		fs.StringVar(&f.listen, "listen", defaultListen, "`ADDRESS` to listen on, host:port; a non-loopback host requires --token or --basic-auth")
		fs.StringVar(&f.token, "token", "", "require this bearer `TOKEN`, at least 16 bytes, in an Authorization header or through the login page (default $"+envConsoleToken+")")
		fs.StringVar(&f.basicAuth, "basic-auth", "", "require HTTP basic authentication with these `USER:PASSWORD` credentials, a password of at least 12 bytes (default $"+envConsoleBasicAuth+")")
		fs.StringVar(&f.tlsCert, "tls-cert", "", "serve HTTPS with the certificate in `FILE` (PEM); needs --tls-key")
		fs.StringVar(&f.tlsKey, "tls-key", "", "the private key of --tls-cert, in `FILE` (PEM)")
		fs.BoolVar(&f.readOnly, "read-only", false, "show the dead letters only: hide and refuse replay, discard and resolve")
		fs.StringVar(&f.publishURL, "publish-url", "", "`URL` of the broker replays publish to, as for idem dlq replay (default $"+envPublishURL+", else the database URL when it is postgres://)")
		fs.Float64Var(&f.rate, "rate", 0, "the default rate of replays, at most `N` messages per second, from 0.001 to 10000 (0: no limit)")
		fs.StringVar(&f.traceURL, "trace-url", "", "link trace IDs to a tracing UI: a `TEMPLATE` URL holding {trace_id} (and optionally {span_id}), such as https://jaeger.example/trace/{trace_id}")
		fs.StringVar(&f.correlationURL, "correlation-url", "", "link correlation IDs to a log search: a `TEMPLATE` URL holding {correlation_id}")
		fs.StringVar(&f.redactKeys, "redact-keys", "", "also redact the values of keys containing one of these comma-separated `WORDS`, in metadata and JSON payloads")
		return func(ctx context.Context, e *env) error { return runServe(ctx, e, f) }
	},
}}

type serveFlags struct {
	listen, token, basicAuth string
	tlsCert, tlsKey          string
	readOnly                 bool
	publishURL               string
	rate                     float64
	traceURL, correlationURL string
	redactKeys               string

	// Set by check.
	basicUser, basicPassword string      // parsed from basicAuth
	loopback                 bool        // listen is a loopback address
	tlsConfig                *tls.Config // set with --tls-cert
	trace, correlation       *linkTemplate
	replayUnavailable        string // why replay cannot run, or ""
	publishShown             string // the broker replays publish to, redacted
	redactor                 redactor
	defaultRate              string // --rate as the replay form shows it
}

// check validates the flags, before anything connects or listens.
func (f *serveFlags) check(e *env) error {
	f.token = cmp.Or(f.token, e.cli.getenv(envConsoleToken))
	f.basicAuth = cmp.Or(f.basicAuth, e.cli.getenv(envConsoleBasicAuth))
	for _, s := range []string{f.token, f.basicAuth} {
		if s != "" {
			e.cli.secrets = append(e.cli.secrets, s)
		}
	}
	host, _, err := net.SplitHostPort(f.listen)
	if err != nil {
		return usageErrorf(e.cmd, "--listen must be host:port, such as %s, got %q", defaultListen, f.listen)
	}
	f.loopback = loopbackHost(host)
	if f.token != "" {
		if err := checkSecret(e.cmd, "token", f.token); err != nil {
			return err
		}
		if len(f.token) < minTokenLen {
			return usageErrorf(e.cmd, "--token must be at least %d bytes long, got %d: generate one with `openssl rand -hex 32`", minTokenLen, len(f.token))
		}
	}
	if f.basicAuth != "" {
		if err := checkSecret(e.cmd, "basic-auth", f.basicAuth); err != nil {
			return err
		}
		user, password, ok := strings.Cut(f.basicAuth, ":")
		switch {
		case !ok || user == "":
			return usageErrorf(e.cmd, "--basic-auth must be USER:PASSWORD")
		case len(password) < minPasswordLen:
			return usageErrorf(e.cmd, "--basic-auth: the password must be at least %d bytes long, got %d", minPasswordLen, len(password))
		}
		f.basicUser, f.basicPassword = user, password
	}
	if !f.loopback && f.token == "" && f.basicAuth == "" {
		return usageErrorf(e.cmd, "--listen %s is not a loopback address: set --token (or $%s) or --basic-auth (or $%s), so that only operators reach the console",
			f.listen, envConsoleToken, envConsoleBasicAuth)
	}
	switch {
	case (f.tlsCert == "") != (f.tlsKey == ""):
		return usageErrorf(e.cmd, "--tls-cert and --tls-key go together")
	case f.tlsCert != "":
		cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
		if err != nil {
			return usageErrorf(e.cmd, "--tls-cert, --tls-key: %v", err)
		}
		f.tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if f.trace, err = parseLinkTemplate(f.traceURL, "trace_id", "span_id"); err != nil {
		return usageErrorf(e.cmd, "--trace-url: %v", err)
	}
	if f.correlation, err = parseLinkTemplate(f.correlationURL, "correlation_id"); err != nil {
		return usageErrorf(e.cmd, "--correlation-url: %v", err)
	}
	if _, err := rateInterval(e.cmd, f.rate); err != nil {
		return err
	}
	f.defaultRate = fmt.Sprint(f.rate)
	out := &outputFlags{format: formatTable, formats: []string{formatTable}, redactKeys: f.redactKeys}
	if err := out.check(e.cmd); err != nil {
		return err
	}
	f.redactor = out.redactor()
	if f.readOnly {
		f.replayUnavailable = "the console is read-only"
		return nil
	}
	if f.publishURL == "" && e.cli.getenv(envPublishURL) == "" && e.sqlitePath != "" {
		f.replayUnavailable = "no broker to publish to: on a SQLite database, start the console with --publish-url or $" + envPublishURL
		return nil
	}
	target, err := e.publishTarget(f.publishURL)
	if err != nil {
		return err
	}
	f.publishShown = target.shown
	return nil
}

// checkSecret returns a usage error unless v, the value of flag --name, is text a
// header can carry. The error never holds v.
func checkSecret(cmd, name, v string) error {
	for _, r := range v {
		if r < 0x21 || r > 0x7e {
			return usageErrorf(cmd, "--%s must be printable ASCII without spaces", name)
		}
	}
	return nil
}

// loopbackHost reports whether host, as --listen or a Host header names it, is this
// machine's loopback: localhost, 127.0.0.0/8 or ::1.
func loopbackHost(host string) bool {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// linkTemplate is a URL with placeholders such as {trace_id}, as --trace-url gives it.
type linkTemplate struct {
	raw  string
	keys []string // the placeholders it may hold
}

// parseLinkTemplate checks the template of --trace-url or --correlation-url: an
// absolute http or https URL holding {first} (and maybe {optional...}) and no other
// placeholder. "" is no template.
func parseLinkTemplate(raw, first string, optional ...string) (*linkTemplate, error) {
	if raw == "" {
		return nil, nil
	}
	if !strings.Contains(raw, "{"+first+"}") {
		return nil, fmt.Errorf("%q holds no {%s}", raw, first)
	}
	t := &linkTemplate{raw: raw, keys: append([]string{first}, optional...)}
	probe := map[string]string{}
	for _, k := range t.keys {
		probe[k] = "0"
	}
	expanded := t.expand(probe)
	if strings.ContainsAny(expanded, "{}") {
		return nil, fmt.Errorf("%q holds a placeholder other than %s", raw, "{"+strings.Join(t.keys, "}, {")+"}")
	}
	u, err := url.Parse(expanded)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("%q is not a URL: %v", raw, err)
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("%q is not an absolute http:// or https:// URL", raw)
	}
	return t, nil
}

// expand returns the URL with each placeholder replaced by its value, escaped for
// where it stands: a path segment before the query, a query value after it. A
// placeholder whose value is missing is replaced by nothing.
func (t *linkTemplate) expand(values map[string]string) string {
	if t == nil {
		return ""
	}
	query := strings.IndexAny(t.raw, "?#")
	var b strings.Builder
	rest := t.raw
	for rest != "" {
		open := strings.IndexByte(rest, '{')
		if open < 0 {
			b.WriteString(rest)
			break
		}
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			b.WriteString(rest)
			break
		}
		name := rest[open+1 : open+end]
		if !slices.Contains(t.keys, name) {
			b.WriteString(rest[:open+end+1])
			rest = rest[open+end+1:]
			continue
		}
		b.WriteString(rest[:open])
		v := values[name]
		if pos := len(t.raw) - len(rest) + open; query >= 0 && pos > query {
			b.WriteString(url.QueryEscape(v))
		} else {
			b.WriteString(url.PathEscape(v))
		}
		rest = rest[open+end+1:]
	}
	return b.String()
}

// runServe is `idem serve`.
func runServe(ctx context.Context, e *env, f *serveFlags) error {
	c, err := openConsole(ctx, e, f)
	if err != nil {
		return err
	}
	defer c.close()
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return &exitError{code: exitFailure, err: fmt.Errorf("cannot listen on %s: %w", f.listen, err)}
	}
	scheme := "http"
	if f.tlsConfig != nil {
		scheme = "https"
	}
	mode := "actions enabled"
	switch {
	case f.readOnly:
		mode = "read-only"
	case f.replayUnavailable != "":
		mode = "discard and resolve enabled; replay unavailable: " + f.replayUnavailable
	default:
		mode += ", replays publish to " + f.publishShown
	}
	fmt.Fprintf(e.stdout, "idem console: serving %s://%s/ on %s (%s)\n", scheme, ln.Addr(), inert(e.shownURL), inert(mode))
	if !f.loopback && f.tlsConfig == nil {
		fmt.Fprintf(e.cli.stderr, "idem: warning: serving plain HTTP on %s: credentials travel in clear unless a TLS proxy is in front (or use --tls-cert and --tls-key)\n", inert(f.listen))
	}
	srv := &http.Server{
		Handler:           c.handler(),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		TLSConfig:         f.tlsConfig,
		ErrorLog:          log.New(redactingWriter{e.cli}, "idem: http: ", 0),
	}
	served := make(chan error, 1)
	go func() {
		if f.tlsConfig != nil {
			served <- srv.ServeTLS(ln, "", "")
		} else {
			served <- srv.Serve(ln)
		}
	}()
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served:
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	shutdownErr := srv.Shutdown(sctx)
	c.jobs.stop()
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return &exitError{code: exitFailure, err: fmt.Errorf("serving %s: %w", f.listen, serveErr)}
	}
	if shutdownErr != nil {
		return &exitError{code: exitFailure, err: fmt.Errorf("shutting down: %w", shutdownErr)}
	}
	fmt.Fprintln(e.stdout, "idem console: stopped")
	return nil
}

// redactingWriter writes the HTTP server's own log lines to standard error, redacted
// and inert, as the command's errors are.
type redactingWriter struct{ c *cli }

func (w redactingWriter) Write(p []byte) (int, error) {
	fmt.Fprintln(w.c.stderr, inertMessage(w.c.redact(strings.TrimSuffix(string(p), "\n"))))
	return len(p), nil
}

// console is the web console: its pages read the store, its actions run the dlq
// commands.
type console struct {
	e      *env
	st     *store
	f      *serveFlags
	secret []byte // per-process: signs the anti-forgery tokens and the login cookie
	pages  map[string]*template.Template
	jobs   *jobs
	log    *slog.Logger // on standard error, redacted and inert
	cop    *http.CrossOriginProtection
}

// openConsole checks the flags, opens the store and prepares the console. Close it
// with close.
func openConsole(ctx context.Context, e *env, f *serveFlags) (*console, error) {
	if err := f.check(e); err != nil {
		return nil, err
	}
	secret := make([]byte, 32)
	if _, err := io.ReadFull(rand.Reader, secret); err != nil {
		return nil, fmt.Errorf("console secret: %w", err)
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	st, err := e.store(ctx)
	if err != nil {
		return nil, err
	}
	return &console{
		e: e, st: st, f: f, secret: secret, pages: pages, jobs: newJobs(),
		log: slog.New(slog.NewTextHandler(redactingWriter{e.cli}, nil)),
		cop: http.NewCrossOriginProtection(),
	}, nil
}

// close stops the replays in flight and closes the store.
func (c *console) close() {
	c.jobs.stop()
	c.st.close()
}
