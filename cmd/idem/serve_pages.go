package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
	"github.com/idemkit/idem/sqlite"
)

// How much of a long value the console shows. Lists cut values to a line; the page of
// a dead letter shows them whole up to these sizes.
const (
	maxValueBytes    = 8 << 10   // a metadata value, a field
	maxErrorBytes    = 64 << 10  // the error and each error of the history
	maxPayloadBytes  = 256 << 10 // the payload, as shown
	pageSize         = 50
	auditPageSize    = 100
	maxOverviewRows  = 500
	maxPreviewRows   = 100
	maxAuditIDsShown = 20
)

// pageNames are the console's pages; each is console/templates/<name>.html, rendered
// in layout.html.
var pageNames = []string{"overview", "group", "deadletter", "audit", "replay", "change", "job", "error", "login"}

var templateFuncs = template.FuncMap{
	// t makes text from production inert (control and bidirectional characters,
	// invalid UTF-8 written as visible escapes); the template then escapes it.
	"t":       inert,
	"lines":   inertLines,
	"short":   func(n int, s string) string { return inert(shorten(s, n)) },
	"eventID": func(s string) string { return inert(shortEventID(s)) },
	"time":    timeText,
	"age":     ageText,
	"add1":    func(n int) int { return n + 1 },
	"clip":    func(n int, s string) string { return clip(s, n) },
}

func parsePages() (map[string]*template.Template, error) {
	pages := map[string]*template.Template{}
	for _, name := range pageNames {
		t, err := template.New(name).Funcs(templateFuncs).ParseFS(consoleFS, "console/templates/layout.html", "console/templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console template %s: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}

// handler is the console's HTTP handler: its pages and actions behind the security
// headers and the guard.
func (c *console) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", c.overview)
	mux.HandleFunc("GET /group", c.group)
	mux.HandleFunc("GET /dead-letters/{id}", c.deadLetter)
	mux.HandleFunc("GET /audit", c.audit)
	mux.HandleFunc("GET /replay", c.replayPreview)
	mux.HandleFunc("POST /replay", c.replay)
	mux.HandleFunc("GET /discard", c.changePreview(dlq.ActionDiscard))
	mux.HandleFunc("GET /resolve", c.changePreview(dlq.ActionResolve))
	mux.HandleFunc("POST /discard", c.change(dlq.ActionDiscard))
	mux.HandleFunc("POST /resolve", c.change(dlq.ActionResolve))
	mux.HandleFunc("GET /jobs/{id}", c.job)
	mux.HandleFunc("GET /jobs/{id}/status", c.jobStatus)
	mux.HandleFunc("GET /login", c.login)
	mux.HandleFunc("POST /login", c.login)
	mux.HandleFunc("POST /logout", c.logout)
	static, _ := fs.Sub(consoleFS, "console/static")
	files := http.StripPrefix("/static/", http.FileServerFS(static))
	mux.Handle("GET /static/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r) // no directory listings
			return
		}
		files.ServeHTTP(w, r)
	}))
	return c.securityHeaders(c.guard(mux))
}

// page is what layout.html renders around a page.
type page struct {
	Title    string
	Store    string // the database, as redactURL shows it
	ReadOnly bool
	CSRF     string
	LoggedIn bool // with a login cookie: show the logout button
	Refresh  bool // without script, reload every second (a running replay)
	Public   bool // the login page: nothing about the store
	Data     any
}

// render renders page name with data, whole, then writes it with code.
func (c *console) render(w http.ResponseWriter, r *http.Request, code int, name, title string, data any) {
	p := page{Title: title, Store: c.e.shownURL, ReadOnly: c.f.readOnly, CSRF: csrfToken(r.Context()), Data: data}
	if ck, err := r.Cookie(sessionCookie); err == nil && c.f.token != "" && equalSecret(ck.Value, c.sign("session", c.f.token)) {
		p.LoggedIn = true
	}
	if j, ok := data.(jobView); ok {
		p.Refresh = j.Running
	}
	if name == "login" {
		p.Public, p.Store = true, ""
	}
	var buf bytes.Buffer
	if err := c.pages[name].ExecuteTemplate(&buf, "layout", p); err != nil {
		c.logf(slog.LevelError, "render %s: %v", name, err)
		c.plainError(w, http.StatusInternalServerError, "the page could not be rendered")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

// errorView is the data of the error page.
type errorView struct {
	Message string
	Back    string
}

// showError renders the error page.
func (c *console) showError(w http.ResponseWriter, r *http.Request, code int, msg, back string) {
	c.render(w, r, code, "error", http.StatusText(code), errorView{Message: msg, Back: back})
}

// fail reports an error of the store: not found, unreachable, or anything else.
func (c *console) fail(w http.ResponseWriter, r *http.Request, err error) {
	msg := c.e.cli.redact(err.Error())
	switch {
	case errors.Is(err, dlq.ErrNotFound):
		c.showError(w, r, http.StatusNotFound, msg, "/")
	case postgres.Classify(err) == retry.ClassInfrastructure, sqlite.Classify(err) == retry.ClassInfrastructure:
		c.logf(slog.LevelError, "store: %s", msg)
		c.showError(w, r, http.StatusServiceUnavailable, "the store cannot be reached: "+msg, "")
	default:
		c.logf(slog.LevelError, "store: %s", msg)
		c.showError(w, r, http.StatusInternalServerError, msg, "")
	}
}

// logf logs what the console did, or failed to do, on standard error.
func (c *console) logf(level slog.Level, format string, args ...any) {
	c.log.Log(context.Background(), level, c.e.cli.redact(fmt.Sprintf(format, args...)))
}

// now is the console's clock: the command's ($IDEM_NOW in tests).
func (c *console) now() time.Time {
	now, err := c.e.cli.now()
	if err != nil {
		return time.Now()
	}
	return now
}

// groupKey names a failure group.
type groupKey struct{ Consumer, Topic, Fingerprint string }

func keyOf(g dlq.Group) groupKey { return groupKey{g.Consumer, g.Topic, g.Fingerprint} }

// String names the group for people, inert: consumer · topic · fingerprint.
func (k groupKey) String() string {
	return inert(shorten(k.Consumer, 40) + " · " + shorten(k.Topic, 40) + " · " + shorten(k.Fingerprint, 24))
}

// link returns the group page's URL; "" for a group the filters cannot select
// exactly (an empty consumer, topic or fingerprint selects them all).
func (k groupKey) link() string {
	if k.Consumer == "" || k.Topic == "" || k.Fingerprint == "" {
		return ""
	}
	return "/group?" + k.values().Encode()
}

func (k groupKey) values() url.Values {
	return url.Values{"consumer": {k.Consumer}, "topic": {k.Topic}, "fingerprint": {k.Fingerprint}}
}

type groupRow struct {
	dlq.Group
	Link   string
	Oldest string // the age of its oldest dead letter
	Spark  *svgChart
	Colour string // its colour in the chart
}

type overviewView struct {
	Pending    int64
	Parked     int64 // events parked behind the pending dead letters: a column and a card when any
	Groups     int
	Oldest     time.Time
	BacklogAge string
	Chart      *svgChart
	Window     window
	WindowTabs []tab
	Rows       []groupRow
	More       int // groups left out of the table
}

// tab is a link of a row of tabs, such as the chart's windows.
type tab struct {
	Name, Link string
	Active     bool
}

// windowTabs links the windows of a chart: the page's URL with each window.
func windowTabs(path string, q url.Values, active window) []tab {
	var out []tab
	for _, w := range windows {
		v := url.Values{}
		for k, vs := range q {
			v[k] = vs
		}
		v.Set("window", w.Name)
		v.Del("after")
		out = append(out, tab{Name: w.Name, Link: path + "?" + v.Encode(), Active: w.Name == active.Name})
	}
	return out
}

// overview is the page of the pending dead letters, by failure group.
func (c *console) overview(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	now := c.now()
	win := windowNamed(r.URL.Query().Get("window"))
	groups, err := c.st.Report(ctx, dlq.Filter{Status: dlq.StatusPending})
	if err != nil {
		c.fail(w, r, err)
		return
	}
	s, err := c.series(ctx, dlq.Filter{}, win, now)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	v := overviewView{Groups: len(groups), Window: win, WindowTabs: windowTabs("/", nil, win)}
	for _, g := range groups {
		v.Pending += g.Count
		v.Parked += g.Parked
		if v.Oldest.IsZero() || g.FirstSeen.Before(v.Oldest) {
			v.Oldest = g.FirstSeen
		}
	}
	if !v.Oldest.IsZero() {
		v.BacklogAge = ageText(now.Sub(v.Oldest))
	}
	keys := make([]groupKey, len(groups))
	for i, g := range groups {
		keys[i] = keyOf(g)
	}
	v.Chart = s.chart(s.layers(keys), false)
	for i, g := range groups {
		if i == maxOverviewRows {
			v.More = len(groups) - i
			break
		}
		k := keyOf(g)
		v.Rows = append(v.Rows, groupRow{Group: g, Link: k.link(), Oldest: ageText(now.Sub(g.FirstSeen)), Colour: colour(i),
			Spark: s.chart([]layer{{Class: colour(i), Counts: s.of(k)}}, true)})
	}
	c.render(w, r, http.StatusOK, "overview", "Overview", v)
}

type recordRow struct {
	*dlq.Record
	Link string
	Age  string
}

func recordRows(recs []*dlq.Record, now time.Time) []recordRow {
	out := make([]recordRow, len(recs))
	for i, rec := range recs {
		out[i] = recordRow{Record: rec, Link: "/dead-letters/" + strconv.FormatInt(rec.ID, 10), Age: ageText(now.Sub(rec.DeadLetteredAt))}
	}
	return out
}

type groupView struct {
	Key                                  groupKey
	Status                               string
	StatusTabs                           []tab
	Summary                              *dlq.Group
	Oldest                               string
	Chart                                *svgChart
	WindowTabs                           []tab
	Rows                                 []recordRow
	Next                                 string // the next page's URL, or ""
	CanChange                            bool   // show the actions: pending dead letters, not read-only
	ReplayLink, DiscardLink, ResolveLink string
}

// group is the page of one failure group.
func (c *console) group(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	q := r.URL.Query()
	key := groupKey{q.Get("consumer"), q.Get("topic"), q.Get("fingerprint")}
	if err := checkGroupKey(key); err != nil {
		c.showError(w, r, http.StatusBadRequest, err.Error(), "/")
		return
	}
	status := q.Get("status")
	if status == "" {
		status = string(dlq.StatusPending)
	}
	f := dlq.Filter{Consumer: key.Consumer, Topic: key.Topic, Fingerprint: key.Fingerprint}
	if status != "all" {
		f.Status = dlq.Status(status)
		if !f.Status.Valid() {
			c.showError(w, r, http.StatusBadRequest, fmt.Sprintf("status must be pending, replayed, discarded, resolved or all, got %q", inert(status)), "/")
			return
		}
	}
	after, err := strconv.ParseInt(cmp.Or(q.Get("after"), "0"), 10, 64)
	if err != nil || after < 0 {
		c.showError(w, r, http.StatusBadRequest, "after must be a dead-letter ID", "/")
		return
	}
	now := c.now()
	win := windowNamed(q.Get("window"))
	query := key.values().Encode()
	v := groupView{Key: key, Status: status,
		ReplayLink: "/replay?" + query, DiscardLink: "/discard?" + query, ResolveLink: "/resolve?" + query}
	pageQuery := key.values()
	pageQuery.Set("status", status)
	v.WindowTabs = windowTabs("/group", pageQuery, win)
	for _, st := range []string{"pending", "replayed", "discarded", "resolved", "all"} {
		sq := key.values()
		sq.Set("status", st)
		sq.Set("window", win.Name)
		v.StatusTabs = append(v.StatusTabs, tab{Name: st, Link: "/group?" + sq.Encode(), Active: st == status})
	}
	groups, err := c.st.Report(ctx, f)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	if len(groups) > 0 {
		v.Summary = &groups[0]
		v.Oldest = ageText(now.Sub(groups[0].FirstSeen))
	}
	s, err := c.series(ctx, dlq.Filter{Consumer: key.Consumer, Topic: key.Topic, Fingerprint: key.Fingerprint}, win, now)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	v.Chart = s.chart([]layer{{Class: colour(0), Counts: s.of(key)}}, false)
	lf := f
	lf.AfterID, lf.Limit = after, pageSize+1
	recs, err := c.st.List(ctx, lf)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	if len(recs) > pageSize {
		recs = recs[:pageSize]
		nq := key.values()
		nq.Set("status", status)
		nq.Set("window", win.Name)
		nq.Set("after", strconv.FormatInt(recs[len(recs)-1].ID, 10))
		v.Next = "/group?" + nq.Encode()
	}
	v.Rows = recordRows(recs, now)
	v.CanChange = !c.f.readOnly && status == string(dlq.StatusPending) && v.Summary != nil
	c.render(w, r, http.StatusOK, "group", "Group "+shorten(key.Fingerprint, 24), v)
}

// checkGroupKey refuses a group the filters cannot select exactly, or whose names
// the stores cannot hold.
func checkGroupKey(k groupKey) error {
	for _, p := range [][2]string{{"consumer", k.Consumer}, {"topic", k.Topic}, {"fingerprint", k.Fingerprint}} {
		if p[1] == "" {
			return fmt.Errorf("a group is named by its consumer, topic and fingerprint: %s is missing", p[0])
		}
		if !utf8.ValidString(p[1]) || strings.ContainsRune(p[1], 0) {
			return fmt.Errorf("the %s must be UTF-8 text without NUL bytes", p[0])
		}
	}
	return nil
}

type field struct {
	Name, Value string
	Link        string // for the trace and correlation IDs, with a template
}

type metadataRow struct{ Key, Value string }

type auditRowView struct {
	dlq.AuditEntry
	IDs  []int64 // the first dead letters it changed
	More int     // how many more
}

type deadLetterView struct {
	Rec         *dlq.Record
	Fields      []field
	GroupLink   string
	Error       string
	History     []dlq.Failure
	Metadata    []metadataRow
	PayloadNote string // size and format
	ShowPayload bool
	Payload     string // shown only on request
	PayloadCut  bool
	PayloadLink string
	Audit       []auditRowView
	Refusal     string // why replay cannot replay it, or ""
	CanReplay   bool
	ReplayNote  string // why replay is unavailable, or ""
	CanDiscard  bool
	CanResolve  bool
	Actions     bool
	MaxReason   int
}

// deadLetter is the page of one dead letter.
func (c *console) deadLetter(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		c.showError(w, r, http.StatusNotFound, "no such dead letter: IDs are positive whole numbers", "/")
		return
	}
	rec, err := c.st.Get(ctx, id)
	if errors.Is(err, dlq.ErrNotFound) {
		c.showError(w, r, http.StatusNotFound, fmt.Sprintf("dead letter %d not found", id), "/")
		return
	}
	if err != nil {
		c.fail(w, r, err)
		return
	}
	audit, err := c.st.Audit(ctx, dlq.AuditFilter{DeadLetterID: id})
	if err != nil {
		c.fail(w, r, err)
		return
	}
	now := c.now()
	v := deadLetterView{Rec: rec, GroupLink: groupKey{rec.Consumer, rec.Topic, rec.Fingerprint}.link(), MaxReason: maxReason}
	for _, f := range fields(rec, now) {
		fl := field{Name: f[0], Value: clip(f[1], maxValueBytes)}
		switch f[0] {
		case "trace id":
			if rec.TraceID != "" {
				fl.Link = c.f.trace.expand(map[string]string{"trace_id": rec.TraceID, "span_id": rec.SpanID})
			}
		case "correlation id":
			if rec.CorrelationID != "" {
				fl.Link = c.f.correlation.expand(map[string]string{"correlation_id": rec.CorrelationID})
			}
		}
		v.Fields = append(v.Fields, fl)
	}
	v.Error = clip(rec.Error, maxErrorBytes)
	for _, h := range rec.History {
		v.History = append(v.History, dlq.Failure{At: h.At, Error: clip(h.Error, maxErrorBytes)})
	}
	for _, kv := range c.f.redactor.shownMetadata(rec.Metadata) {
		v.Metadata = append(v.Metadata, metadataRow{Key: clip(kv[0], maxValueBytes), Value: clip(kv[1], maxValueBytes)})
	}
	format := payloadFormat(rec.Payload)
	v.PayloadNote = payloadSummary(rec, format)
	v.PayloadLink = "/dead-letters/" + strconv.FormatInt(id, 10) + "?payload=1#payload"
	if r.URL.Query().Get("payload") == "1" {
		_, shown := c.f.redactor.payload(rec.Payload, true)
		v.ShowPayload = true
		v.PayloadCut = len(shown) > maxPayloadBytes
		shown = clip(shown, maxPayloadBytes)
		if format == payloadBinary {
			shown = wrap(shown, 76)
		}
		v.Payload = shown
	}
	for _, a := range audit {
		v.Audit = append(v.Audit, auditView(a))
	}
	v.Refusal = refusal(rec)
	v.Actions = !c.f.readOnly
	v.ReplayNote = c.f.replayUnavailable
	v.CanReplay = v.Actions && v.Refusal == "" && v.ReplayNote == ""
	v.CanDiscard = v.Actions && rec.Status != dlq.StatusDiscarded
	v.CanResolve = v.Actions && rec.Status != dlq.StatusResolved
	c.render(w, r, http.StatusOK, "deadletter", fmt.Sprintf("Dead letter %d", id), v)
}

func auditView(a dlq.AuditEntry) auditRowView {
	v := auditRowView{AuditEntry: a}
	v.Selector = shorten(a.Selector, 300)
	v.IDs = a.DeadLetterIDs[:min(len(a.DeadLetterIDs), maxAuditIDsShown)]
	v.More = len(a.DeadLetterIDs) - len(v.IDs)
	return v
}

// clip cuts s to at most n bytes, at a rune boundary, ending it with … when it was cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// wrap breaks s into lines of n bytes: base64 has no other break.
func wrap(s string, n int) string {
	var b strings.Builder
	for s != "" {
		k := min(len(s), n)
		b.WriteString(s[:k])
		s = s[k:]
		if s != "" {
			b.WriteByte('\n')
		}
	}
	return b.String()
}

type auditPage struct {
	Rows    []auditRowView
	Since   string
	Action  string
	Next    string
	Choices []string
}

// audit is the page of the audit: the operators' actions, oldest first.
func (c *console) audit(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	since := cmp.Or(q.Get("since"), "7d")
	f := dlq.AuditFilter{Action: dlq.Action(q.Get("action")), Limit: auditPageSize + 1}
	switch since {
	case "24h", "7d", "30d":
		d, _ := parseDays(since) // cannot fail
		f.Since = c.now().Add(-d)
	case "all":
	default:
		c.showError(w, r, http.StatusBadRequest, "since must be 24h, 7d, 30d or all", "/audit")
		return
	}
	after, err := strconv.ParseInt(cmp.Or(q.Get("after"), "0"), 10, 64)
	if err != nil || after < 0 {
		c.showError(w, r, http.StatusBadRequest, "after must be an audit entry ID", "/audit")
		return
	}
	f.AfterID = after
	if err := f.Validate(); err != nil {
		c.showError(w, r, http.StatusBadRequest, inert(strings.TrimPrefix(err.Error(), "dlq: ")), "/audit")
		return
	}
	entries, err := c.st.Audit(r.Context(), f)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	v := auditPage{Since: since, Action: string(f.Action), Choices: []string{"24h", "7d", "30d", "all"}}
	if len(entries) > auditPageSize {
		entries = entries[:auditPageSize]
		nq := url.Values{"since": {since}, "after": {strconv.FormatInt(entries[len(entries)-1].ID, 10)}}
		if f.Action != "" {
			nq.Set("action", string(f.Action))
		}
		v.Next = "/audit?" + nq.Encode()
	}
	for _, a := range entries {
		v.Rows = append(v.Rows, auditView(a))
	}
	c.render(w, r, http.StatusOK, "audit", "Audit", v)
}
