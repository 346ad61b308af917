package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/idemkit/idem/dlq"
)

// changeTimeout bounds a discard or a resolve the console runs.
const changeTimeout = time.Minute

// The console's actions run the dlq commands themselves — `idem dlq replay`, `idem
// dlq discard`, `idem dlq resolve` — in process, with the flags an operator would
// type: the same checks, the same selection, the same refusals, the same store
// transactions and audit entries. The console adds only the forms.

// selection is what an action selects: one dead letter by ID, or the pending dead
// letters of a failure group, dead-lettered before Until, at most Limit of them (what
// the dry run showed).
type selection struct {
	ID    int64
	Group groupKey
	Until time.Time
	Limit int
}

// args returns the selection as the dlq commands take it. It comes last: after "--",
// an ID is never read as a flag.
func (s selection) args() []string {
	if s.ID != 0 {
		return []string{"--", strconv.FormatInt(s.ID, 10)}
	}
	a := []string{"--consumer=" + s.Group.Consumer, "--topic=" + s.Group.Topic, "--fingerprint=" + s.Group.Fingerprint, "--status=pending"}
	if !s.Until.IsZero() {
		a = append(a, "--until="+s.Until.UTC().Format(time.RFC3339Nano))
	}
	if s.Limit > 0 {
		a = append(a, "--limit="+strconv.Itoa(s.Limit))
	}
	return a
}

// token encodes the group for a hidden field: its names are production data, and may
// hold bytes an attribute should not (bidirectional controls, say), which base64 keeps
// exactly.
func (k groupKey) token() string {
	b, _ := json.Marshal([]string{k.Consumer, k.Topic, k.Fingerprint}) // strings always encode
	return base64.RawURLEncoding.EncodeToString(b)
}

func groupFromToken(tok string) (groupKey, error) {
	var parts []string
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err == nil {
		err = json.Unmarshal(b, &parts)
	}
	if err != nil || len(parts) != 3 {
		return groupKey{}, fmt.Errorf("the form's group %q does not decode", inert(shorten(tok, 40)))
	}
	return groupKey{parts[0], parts[1], parts[2]}, nil
}

// hidden is a hidden field of a form.
type hidden struct{ Name, Value string }

// fields returns the selection as the hidden fields of a confirmation form.
func (s selection) fields() []hidden {
	if s.ID != 0 {
		return []hidden{{"id", strconv.FormatInt(s.ID, 10)}}
	}
	h := []hidden{{"group", s.Group.token()}}
	if !s.Until.IsZero() {
		h = append(h, hidden{"until", s.Until.UTC().Format(time.RFC3339Nano)})
	}
	if s.Limit > 0 {
		h = append(h, hidden{"limit", strconv.Itoa(s.Limit)})
	}
	return h
}

// what describes the selection to people.
func (s selection) what() string {
	if s.ID != 0 {
		return fmt.Sprintf("dead letter %d", s.ID)
	}
	return fmt.Sprintf("the pending dead letters of consumer %s, topic %s, fingerprint %s", s.Group.Consumer, s.Group.Topic, s.Group.Fingerprint)
}

// back is the page the selection came from.
func (s selection) back() string {
	if s.ID != 0 {
		return "/dead-letters/" + strconv.FormatInt(s.ID, 10)
	}
	return s.Group.link()
}

// backLabel names the page back returns to.
func (s selection) backLabel() string {
	if s.ID != 0 {
		return fmt.Sprintf("dead letter %d", s.ID)
	}
	return "group"
}

// parseSelection reads a selection from a form or a query: id, or a group — consumer,
// topic and fingerprint, or the group token of a form — with until and limit once a
// dry run set them.
func parseSelection(v url.Values) (selection, error) {
	var s selection
	if id := v.Get("id"); id != "" {
		n, err := strconv.ParseInt(id, 10, 64)
		if err != nil || n < 1 {
			return s, fmt.Errorf("%q is not a dead-letter ID", inert(id))
		}
		s.ID = n
		return s, nil
	}
	s.Group = groupKey{v.Get("consumer"), v.Get("topic"), v.Get("fingerprint")}
	if tok := v.Get("group"); tok != "" {
		k, err := groupFromToken(tok)
		if err != nil {
			return s, err
		}
		s.Group = k
	}
	if err := checkGroupKey(s.Group); err != nil {
		return s, err
	}
	if u := v.Get("until"); u != "" {
		t, err := time.Parse(time.RFC3339Nano, u)
		if err != nil {
			return s, fmt.Errorf("until %q is not an RFC 3339 time", inert(u))
		}
		s.Until = t
	}
	if l := v.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 {
			return s, fmt.Errorf("limit %q is not a positive whole number", inert(l))
		}
		s.Limit = n
	}
	return s, nil
}

// bound sets the Until of a group selection, unless a dry run set it: just after the
// newest pending dead letter of the group now, so that what a confirmation changes is
// what its dry run showed, not dead letters that arrived meanwhile. It returns the
// group's pending dead letters before Until, as Report sums them (none for a
// selection by ID).
func (c *console) bound(ctx context.Context, s *selection) (dlq.Group, error) {
	if s.ID != 0 {
		return dlq.Group{}, nil
	}
	groups, err := c.st.Report(ctx, dlq.Filter{Consumer: s.Group.Consumer, Topic: s.Group.Topic, Fingerprint: s.Group.Fingerprint,
		Status: dlq.StatusPending, Until: s.Until})
	if err != nil || len(groups) == 0 {
		return dlq.Group{}, err
	}
	if s.Until.IsZero() {
		s.Until = groups[0].LastSeen.UTC().Truncate(time.Second).Add(time.Second)
	}
	return groups[0], nil
}

// dlqResult is how a dlq command the console ran ended.
type dlqResult struct {
	code int    // its exit code
	msg  string // what it wrote on standard error, redacted and inert, without "idem: "
	err  error  // the error it returned, for errors.Is; nil when it succeeded
}

// httpStatus maps an exit code to the status of the page that reports it.
func (r dlqResult) httpStatus() int {
	switch r.code {
	case exitOK:
		return http.StatusOK
	case exitUsage:
		return http.StatusBadRequest
	case exitUnreachable:
		return http.StatusServiceUnavailable
	}
	return http.StatusConflict
}

// runDLQ runs the dlq command name, as the command line would run it, on the
// console's database (and broker), with flags and then the selection. What it prints
// goes to stdout; its error is reported the way the command reports it.
func (c *console) runDLQ(ctx context.Context, name string, flags []string, sel selection, stdout io.Writer) dlqResult {
	var stderr bytes.Buffer
	run := &cli{stdout: stdout, stderr: &stderr, getenv: c.e.cli.getenv, connectTimeout: c.e.cli.connectTimeout, secrets: slices.Clone(c.e.cli.secrets)}
	args := []string{"--database-url=" + c.e.dbURL}
	if c.e.sqlitePath == "" {
		args = append(args, "--schema="+c.e.schema)
	}
	if name == "dlq replay" && c.f.publishURL != "" {
		args = append(args, "--publish-url="+c.f.publishURL)
	}
	args = append(append(args, flags...), sel.args()...)
	err := run.runCommand(ctx, dlqCommand(name), args)
	code := run.exit(err)
	var msg []string
	sc := bufio.NewScanner(&stderr)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimPrefix(sc.Text(), "idem: ")
		if strings.HasPrefix(line, "run 'idem") { // the usage hint of the command line
			continue
		}
		msg = append(msg, line)
	}
	return dlqResult{code: code, msg: strings.Join(msg, "\n"), err: err}
}

// dlqCommand returns the dlq command of that name. (Looking in commands would make
// serveCommands part of its own initialisation.)
func dlqCommand(name string) *command {
	for _, cmd := range dlqCommands {
		if cmd.name == name {
			return cmd
		}
	}
	panic("idem: no command " + name)
}

type previewRow struct {
	recordRow
	PayloadNote string
}

type replayView struct {
	What        string
	Back        string
	BackLabel   string
	Fields      []hidden
	Error       string
	Todo        int
	Rows        []previewRow
	More        int
	Refused     []refusedJSON
	PublishURL  string
	DefaultRate string
	MaxReason   int
	// Parked is how many events are parked behind the selected dead letters: the
	// replay releases them.
	Parked int64
}

// replayPreview is the dry run of a replay: `idem dlq replay` without --yes. It
// shows what would be published, and the form that confirms it.
func (c *console) replayPreview(w http.ResponseWriter, r *http.Request) {
	if c.f.readOnly {
		c.showError(w, r, http.StatusForbidden, "the console is read-only", "/")
		return
	}
	ctx := r.Context()
	sel, err := parseSelection(r.URL.Query())
	if err != nil {
		c.showError(w, r, http.StatusBadRequest, err.Error(), "/")
		return
	}
	v := replayView{What: sel.what(), Back: sel.back(), BackLabel: sel.backLabel(), DefaultRate: c.f.defaultRate, MaxReason: maxReason, PublishURL: c.f.publishShown}
	if c.f.replayUnavailable != "" {
		v.Error = "replay is unavailable: " + c.f.replayUnavailable
		c.render(w, r, http.StatusConflict, "replay", "Replay", v)
		return
	}
	g, err := c.bound(ctx, &sel)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	v.Parked = g.Parked
	if sel.ID != 0 {
		rec, err := c.st.Get(ctx, sel.ID)
		if err != nil {
			c.fail(w, r, err)
			return
		}
		v.Parked = int64(rec.Parked)
	}
	var out bytes.Buffer
	res := c.runDLQ(ctx, "dlq replay", []string{"--format=json"}, sel, &out)
	if res.code != exitOK {
		v.Error = res.msg
		c.render(w, r, res.httpStatus(), "replay", "Replay", v)
		return
	}
	var dry changeJSON
	if err := json.Unmarshal(out.Bytes(), &dry); err != nil {
		c.fail(w, r, fmt.Errorf("read the dry run: %w", err))
		return
	}
	if dry.PublishURL != nil {
		v.PublishURL = *dry.PublishURL
	}
	v.Refused = dry.Refused
	var todo []int64
	for _, id := range dry.Selected {
		if !slices.ContainsFunc(dry.Refused, func(f refusedJSON) bool { return f.ID == id }) {
			todo = append(todo, id)
		}
	}
	v.Todo = len(todo)
	if sel.ID == 0 {
		sel.Limit = len(dry.Selected)
	}
	v.Fields = append(sel.fields(), hidden{"expected", strconv.Itoa(len(todo))})
	if shown := todo[:min(len(todo), maxPreviewRows)]; len(shown) > 0 {
		recs, err := c.st.List(ctx, dlq.Filter{IDs: shown})
		if err != nil {
			c.fail(w, r, err)
			return
		}
		v.Rows = previewRows(recs, c.now())
	}
	v.More = len(todo) - len(v.Rows)
	c.render(w, r, http.StatusOK, "replay", "Replay", v)
}

func previewRows(recs []*dlq.Record, now time.Time) []previewRow {
	out := make([]previewRow, len(recs))
	for i, row := range recordRows(recs, now) {
		out[i] = previewRow{recordRow: row, PayloadNote: payloadSummary(row.Record, payloadFormat(row.Payload))}
	}
	return out
}

// replay starts the replay its dry run showed: `idem dlq replay --yes`, in the
// background, and sends the browser to the page of its progress. One replay runs at a
// time.
func (c *console) replay(w http.ResponseWriter, r *http.Request) {
	sel, err := parseSelection(r.PostForm)
	if err != nil {
		c.showError(w, r, http.StatusBadRequest, err.Error(), "/")
		return
	}
	if c.f.replayUnavailable != "" {
		c.showError(w, r, http.StatusConflict, "replay is unavailable: "+c.f.replayUnavailable, sel.back())
		return
	}
	rate := strings.TrimSpace(r.PostForm.Get("rate"))
	if rate == "" {
		rate = c.f.defaultRate
	}
	expected, _ := strconv.Atoi(r.PostForm.Get("expected"))
	j, running := c.jobs.start(dlq.ActionReplay, sel, max(expected, 0))
	if j == nil {
		c.showError(w, r, http.StatusConflict, "another replay is running: wait for it to finish, or follow it at /jobs/"+running.ID, "/jobs/"+running.ID)
		return
	}
	flags := []string{"--yes", "--reason=" + r.PostForm.Get("reason"), "--rate=" + rate}
	go func() {
		defer c.jobs.wg.Done()
		lw := &lineWriter{j: j}
		res := c.runDLQ(c.jobs.ctx, "dlq replay", flags, sel, lw)
		lw.flush()
		j.finish(res)
		if res.msg != "" {
			c.logf(slog.LevelWarn, "replay of %s: %s: %s", sel.what(), j.state(), res.msg)
		} else {
			c.logf(slog.LevelInfo, "replay of %s: %s", sel.what(), j.state())
		}
	}()
	http.Redirect(w, r, "/jobs/"+j.ID, http.StatusSeeOther)
}

type changeView struct {
	Action         string
	Verb           string // Discard, Resolve
	What           string
	Back           string
	BackLabel      string
	Fields         []hidden
	Count          int64
	Rows           []previewRow
	More           int64
	ReasonRequired bool
	MaxReason      int
	// Parked is how many events are parked behind the selected dead letters; a
	// discard asks what to do with them when AskParked.
	Parked    int64
	AskParked bool
	Error     string // why the form came back, or ""
}

// changePreview shows what a discard or resolve of a group would change, with the
// form that confirms it.
func (c *console) changePreview(a dlq.Action) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if c.f.readOnly {
			c.showError(w, r, http.StatusForbidden, "the console is read-only", "/")
			return
		}
		sel, err := parseSelection(r.URL.Query())
		if err != nil {
			c.showError(w, r, http.StatusBadRequest, err.Error(), "/")
			return
		}
		v, err := c.changeForm(r.Context(), a, sel)
		if err != nil {
			c.fail(w, r, err)
			return
		}
		c.render(w, r, http.StatusOK, "change", verb(a), v)
	}
}

// changeForm returns what a discard or resolve of sel would change, and the fields of
// the form that confirms it. A group selection is bounded as its preview showed it
// (see bound); a dry run's bounds are kept.
func (c *console) changeForm(ctx context.Context, a dlq.Action, sel selection) (changeView, error) {
	v := changeView{Action: string(a), Verb: verb(a), What: sel.what(), Back: sel.back(), BackLabel: sel.backLabel(), ReasonRequired: a == dlq.ActionDiscard, MaxReason: maxReason}
	var recs []*dlq.Record
	if sel.ID != 0 {
		rec, err := c.st.Get(ctx, sel.ID)
		if err != nil {
			return v, err
		}
		recs, v.Count, v.Parked = []*dlq.Record{rec}, 1, int64(rec.Parked)
	} else {
		g, err := c.bound(ctx, &sel)
		if err != nil {
			return v, err
		}
		v.Count, v.Parked = g.Count, g.Parked
		if sel.Limit > 0 {
			v.Count = min(v.Count, int64(sel.Limit))
		}
		sel.Limit = int(v.Count)
		if v.Count > 0 {
			recs, err = c.st.List(ctx, dlq.Filter{Consumer: sel.Group.Consumer, Topic: sel.Group.Topic, Fingerprint: sel.Group.Fingerprint,
				Status: dlq.StatusPending, Until: sel.Until, Limit: min(sel.Limit, maxPreviewRows)})
			if err != nil {
				return v, err
			}
		}
	}
	v.AskParked = a == dlq.ActionDiscard && v.Parked > 0
	v.Fields = sel.fields()
	v.Rows = previewRows(recs, c.now())
	v.More = v.Count - int64(len(v.Rows))
	return v, nil
}

func verb(a dlq.Action) string {
	return strings.ToUpper(string(a[:1])) + string(a[1:])
}

// change discards or resolves the selected dead letters: `idem dlq discard --yes` or
// `idem dlq resolve --yes`, with the form's reason, and for a discard its choice for
// the parked events (--parked). The result is a finished job. A discard that needs
// that choice and has none shows its form again, asking for it.
func (c *console) change(a dlq.Action) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sel, err := parseSelection(r.PostForm)
		if err != nil {
			c.showError(w, r, http.StatusBadRequest, err.Error(), "/")
			return
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), changeTimeout)
		defer cancel()
		flags := []string{"--reason=" + r.PostForm.Get("reason"), "--yes", "--format=json"}
		if parked := r.PostForm.Get("parked"); parked != "" && a == dlq.ActionDiscard {
			flags = append(flags, "--parked="+parked)
		}
		var out bytes.Buffer
		res := c.runDLQ(ctx, "dlq "+string(a), flags, sel, &out)
		if errors.Is(res.err, dlq.ErrParkedChoiceRequired) {
			v, err := c.changeForm(ctx, a, sel)
			if err != nil {
				c.fail(w, r, err)
				return
			}
			v.AskParked = true
			v.Error = "Events of their entities are parked behind the selected dead letters (ordering's quarantine): " +
				"choose whether to release them or discard them, then confirm again. Nothing changed."
			c.render(w, r, res.httpStatus(), "change", verb(a), v)
			return
		}
		if res.code != exitOK {
			c.showError(w, r, res.httpStatus(), res.msg, sel.back())
			return
		}
		var done changeJSON
		if err := json.Unmarshal(out.Bytes(), &done); err != nil {
			c.fail(w, r, fmt.Errorf("read the result of %s: %w", a, err))
			return
		}
		j := c.jobs.record(a, sel, done)
		c.logf(slog.LevelInfo, "%s of %s: %s", a, sel.what(), j.state())
		http.Redirect(w, r, "/jobs/"+j.ID, http.StatusSeeOther)
	}
}
