package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/idemkit/idem/dlq"
)

// Jobs are the console's actions, as their pages show them: a replay while it runs
// and once it ended, a discard or a resolve once it committed. They live in memory,
// the last maxJobs of them; the audit is the lasting record.
const (
	maxJobs      = 100
	maxJobLines  = 200
	maxJobIDs    = 100
	jobsStopWait = publishTimeout + 5*time.Second
)

type jobs struct {
	ctx    context.Context // ends at shutdown: a running replay stops before its next dead letter
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	byID   map[string]*job
	order  []*job
}

func newJobs() *jobs {
	ctx, cancel := context.WithCancel(context.Background())
	return &jobs{ctx: ctx, cancel: cancel, byID: map[string]*job{}}
}

// job is one action of the console.
type job struct {
	ID        string
	Action    dlq.Action
	What      string // what it selected
	Back      string // the page it was started from
	BackLabel string
	Started   time.Time

	mu       sync.Mutex
	running  bool
	finished time.Time
	total    int // how many dead letters the dry run would replay
	done     int
	changed  []int64
	auditIDs []int64
	lines    []string // the last output lines of the command
	dropped  int      // output lines no longer kept
	summary  string
	errMsg   string
	failed   bool
}

func newJobID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand never fails
	return hex.EncodeToString(b[:])
}

// start registers a running replay. When a replay is running already, it returns nil
// and that one. The caller runs the job and calls wg.Done when it ends.
func (js *jobs) start(a dlq.Action, sel selection, total int) (j, running *job) {
	js.mu.Lock()
	defer js.mu.Unlock()
	for _, o := range js.order {
		if o.Action == dlq.ActionReplay && o.isRunning() {
			return nil, o
		}
	}
	j = &job{ID: newJobID(), Action: a, What: sel.what(), Back: sel.back(), BackLabel: sel.backLabel(), Started: time.Now(), running: true, total: total}
	js.add(j)
	js.wg.Add(1)
	return j, nil
}

// record registers a discard or resolve that ended, with what the command returned.
func (js *jobs) record(a dlq.Action, sel selection, res changeJSON) *job {
	now := time.Now()
	j := &job{ID: newJobID(), Action: a, What: sel.what(), Back: sel.back(), BackLabel: sel.backLabel(), Started: now, finished: now,
		total: len(res.Selected), done: len(res.Changed), changed: res.Changed, auditIDs: res.AuditIDs}
	switch {
	case len(res.Selected) == 0:
		j.summary = fmt.Sprintf("no dead letters selected: nothing to %s", a)
	case len(res.Changed) == 0:
		j.summary = fmt.Sprintf("nothing to %s: the %s selected %s %s already", a, countText(len(res.Selected)), plural(len(res.Selected), "is", "are"), pastTense[a])
	default:
		j.summary = fmt.Sprintf("%s %s (audit entry %s)", pastTense[a], countText(len(res.Changed)), joinIDs(res.AuditIDs, ", "))
		if n := len(res.Selected) - len(res.Changed); n > 0 {
			j.summary += fmt.Sprintf("; %s %s %s already", countText(n), plural(n, "was", "were"), pastTense[a])
		}
	}
	js.mu.Lock()
	defer js.mu.Unlock()
	js.add(j)
	return j
}

// add keeps j, forgetting the oldest job that ended when there are too many.
func (js *jobs) add(j *job) {
	js.byID[j.ID] = j
	js.order = append(js.order, j)
	if len(js.order) > maxJobs {
		for i, o := range js.order {
			if !o.isRunning() {
				delete(js.byID, o.ID)
				js.order = append(js.order[:i], js.order[i+1:]...)
				break
			}
		}
	}
}

func (js *jobs) get(id string) *job {
	js.mu.Lock()
	defer js.mu.Unlock()
	return js.byID[id]
}

// stop ends the running replays after their current dead letter, and waits for them,
// at most jobsStopWait.
func (js *jobs) stop() {
	js.cancel()
	done := make(chan struct{})
	go func() { js.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(jobsStopWait):
	}
}

func (j *job) isRunning() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.running
}

// replayedLine is the line `idem dlq replay` prints for each dead letter it replayed.
var replayedLine = regexp.MustCompile(`^replayed (\d+) \(.*, audit entry (\d+)$`)

// line takes a line the replay printed: one per dead letter replayed, then a summary.
func (j *job) line(s string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if m := replayedLine.FindStringSubmatch(s); m != nil {
		j.done++
		if id, err := strconv.ParseInt(m[1], 10, 64); err == nil {
			j.changed = append(j.changed, id)
		}
		if id, err := strconv.ParseInt(m[2], 10, 64); err == nil && id != 0 {
			j.auditIDs = append(j.auditIDs, id)
		}
	} else {
		j.summary = s
	}
	j.lines = append(j.lines, s)
	if len(j.lines) > maxJobLines {
		j.dropped += len(j.lines) - maxJobLines
		j.lines = append([]string(nil), j.lines[len(j.lines)-maxJobLines:]...)
	}
}

// finish records how the command ended.
func (j *job) finish(res dlqResult) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.running = false
	j.finished = time.Now()
	if res.code != exitOK {
		j.failed = true
		j.errMsg = res.msg
	}
}

func (j *job) state() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	switch {
	case j.running:
		return "running"
	case j.failed:
		return "failed"
	}
	return "succeeded"
}

// lineWriter hands a job the lines the command prints.
type lineWriter struct {
	j   *job
	buf []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.j.line(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

func (w *lineWriter) flush() {
	if len(w.buf) > 0 {
		w.j.line(string(w.buf))
		w.buf = nil
	}
}

// jobView is the data of a job's page.
type jobView struct {
	ID, Action, What  string
	Back, BackLabel   string
	State             string
	Running, Failed   bool
	Total, Done       int
	Changed           []int64
	MoreChanged       int
	AuditIDs          []int64
	Lines             []string
	Dropped           int
	Summary, Error    string
	Started, Finished time.Time
	StatusURL         string
}

func (j *job) view() jobView {
	j.mu.Lock()
	defer j.mu.Unlock()
	v := jobView{
		ID: j.ID, Action: string(j.Action), What: j.What, Back: j.Back, BackLabel: j.BackLabel,
		Running: j.running, Failed: j.failed, Total: max(j.total, j.done), Done: j.done,
		Changed: j.changed[:min(len(j.changed), maxJobIDs)], MoreChanged: max(0, len(j.changed)-maxJobIDs),
		AuditIDs: j.auditIDs[:min(len(j.auditIDs), maxJobIDs)],
		Lines:    append([]string(nil), j.lines...), Dropped: j.dropped,
		Summary: j.summary, Error: j.errMsg, Started: j.Started, Finished: j.finished,
		StatusURL: "/jobs/" + j.ID + "/status",
	}
	switch {
	case j.running:
		v.State = "running"
	case j.failed:
		v.State = "failed"
	default:
		v.State = "succeeded"
	}
	return v
}

// job is the page of a job: the progress of a replay, the result of an action.
func (c *console) job(w http.ResponseWriter, r *http.Request) {
	j := c.jobs.get(r.PathValue("id"))
	if j == nil {
		c.showError(w, r, http.StatusNotFound, "no such action: the console keeps the last "+strconv.Itoa(maxJobs)+" actions, until it restarts; the audit keeps them all", "/audit")
		return
	}
	v := j.view()
	c.render(w, r, http.StatusOK, "job", verb(j.Action)+" "+v.State, v)
}

// jobStatusJSON is what the status endpoint of a job returns, for the page's script
// and for scripts.
type jobStatusJSON struct {
	ID       string  `json:"id"`
	Action   string  `json:"action"`
	State    string  `json:"state"` // running, succeeded or failed
	Total    int     `json:"total"`
	Done     int     `json:"done"`
	Changed  []int64 `json:"changed"`
	AuditIDs []int64 `json:"audit_ids"`
	Summary  string  `json:"summary"`
	Error    *string `json:"error"`
}

// jobStatus is a job's status, as JSON.
func (c *console) jobStatus(w http.ResponseWriter, r *http.Request) {
	j := c.jobs.get(r.PathValue("id"))
	if j == nil {
		c.plainError(w, http.StatusNotFound, "no such action")
		return
	}
	v := j.view()
	j.mu.Lock()
	res := jobStatusJSON{ID: v.ID, Action: v.Action, State: v.State, Total: v.Total, Done: v.Done,
		Changed: append([]int64{}, j.changed...), AuditIDs: append([]int64{}, j.auditIDs...), Summary: inert(v.Summary)}
	j.mu.Unlock()
	if v.Error != "" {
		res.Error = &v.Error
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	var buf bytes.Buffer
	if err := writeJSON(&buf, res); err != nil {
		c.plainError(w, http.StatusInternalServerError, "status unavailable")
		return
	}
	_, _ = w.Write(buf.Bytes())
}
