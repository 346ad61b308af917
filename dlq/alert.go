package dlq

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Alert tells someone that messages were dead-lettered. Alerts are aggregated per
// fingerprint: the first dead letter of a cause raises an alert at once, and the ones
// that follow within the aggregation window are summed up in one summary alert when
// the window closes. An outage of one cause sends two alerts, not ten thousand.
type Alert struct {
	// Fingerprint is the failure group; Consumer, Topic and Reason are those of the
	// group's first dead letter in the window.
	Fingerprint string
	Consumer    string
	Topic       string
	Reason      Reason
	// Error is a sample error text, already scrubbed of secrets.
	Error string
	// Count is how many dead letters this alert stands for: 1 for the first alert of a
	// window, the number that followed it for a summary.
	Count int
	// Summary is false for the immediate alert, true for the end-of-window summary.
	Summary bool
	// EventIDs samples the event IDs (at most 5); CorrelationID and TraceID are those of
	// the first of them.
	EventIDs      []string
	CorrelationID string
	TraceID       string
	// First and Last are when the first and last dead letter of the alert were seen.
	First time.Time
	Last  time.Time
}

// Text renders the alert as one or two lines of plain text, for chat messages and logs.
func (a Alert) Text() string {
	if a.Summary {
		return fmt.Sprintf("idem: %d more dead letters of consumer %s (topic %s, reason %s, fingerprint %s) between %s and %s; sample error: %s",
			a.Count, a.Consumer, a.Topic, a.Reason, a.Fingerprint,
			a.First.UTC().Format(time.RFC3339), a.Last.UTC().Format(time.RFC3339), a.Error)
	}
	return fmt.Sprintf("idem: message dead-lettered: consumer %s, topic %s, event %s, reason %s (fingerprint %s): %s",
		a.Consumer, a.Topic, first(a.EventIDs), a.Reason, a.Fingerprint, a.Error)
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// Alerter delivers alerts: to a log, a metric, a chat webhook, a pager. An Alerter may
// be slow or fail; the [Dispatcher] calls it from its own goroutine with a timeout, so
// that it never slows consumption. Implementations must be safe for concurrent use.
type Alerter interface {
	Alert(ctx context.Context, a Alert) error
}

// Defaults of [DispatcherConfig].
const (
	DefaultAlertWindow  = time.Minute
	DefaultAlertQueue   = 1024
	DefaultAlertTimeout = 30 * time.Second
	maxSampleEventIDs   = 5
)

// DispatcherConfig configures a [Dispatcher].
type DispatcherConfig struct {
	// Alerters receive every alert, one after the other. Required.
	Alerters []Alerter
	// Window is how long the dead letters of one fingerprint are summed up after its
	// immediate alert. Defaults to DefaultAlertWindow.
	Window time.Duration
	// QueueSize bounds the dead letters waiting to be turned into alerts; when it is
	// full, Notify drops the new one, counts it and logs it. Defaults to
	// DefaultAlertQueue.
	QueueSize int
	// Timeout bounds one Alerter call. Defaults to DefaultAlertTimeout.
	Timeout time.Duration
	// Logger logs alerter failures and dropped alerts. Defaults to slog.Default().
	Logger *slog.Logger
}

// Dispatcher turns dead letters into alerts, asynchronously: [Dispatcher.Notify] never
// blocks, and a slow, failing or hung Alerter delays only other alerts, never the
// consumer. It is safe for concurrent use. Close it to flush pending summaries and
// stop its goroutine.
type Dispatcher struct {
	cfg     DispatcherConfig
	queue   chan *DeadLetter
	done    chan struct{}
	stop    chan struct{}
	once    sync.Once
	dropped atomic.Int64
	sent    atomic.Int64
	failed  atomic.Int64
}

// NewDispatcher checks cfg and starts the dispatcher's goroutine.
func NewDispatcher(cfg DispatcherConfig) (*Dispatcher, error) {
	if len(cfg.Alerters) == 0 {
		return nil, errors.New("dlq: DispatcherConfig.Alerters is required: give at least one Alerter (dlq.LogAlerter logs at error level)")
	}
	for i, a := range cfg.Alerters {
		if a == nil {
			return nil, fmt.Errorf("dlq: DispatcherConfig.Alerters[%d] is nil", i)
		}
	}
	cfg.Window = cmp.Or(cfg.Window, DefaultAlertWindow)
	cfg.QueueSize = cmp.Or(cfg.QueueSize, DefaultAlertQueue)
	cfg.Timeout = cmp.Or(cfg.Timeout, DefaultAlertTimeout)
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	switch {
	case cfg.Window < 0:
		return nil, fmt.Errorf("dlq: DispatcherConfig.Window must not be negative, got %s", cfg.Window)
	case cfg.QueueSize < 1:
		return nil, fmt.Errorf("dlq: DispatcherConfig.QueueSize must be at least 1, got %d", cfg.QueueSize)
	case cfg.Timeout < 0:
		return nil, fmt.Errorf("dlq: DispatcherConfig.Timeout must not be negative, got %s", cfg.Timeout)
	}
	d := &Dispatcher{
		cfg:   cfg,
		queue: make(chan *DeadLetter, cfg.QueueSize),
		done:  make(chan struct{}),
		stop:  make(chan struct{}),
	}
	go d.run()
	return d, nil
}

// Notify queues an alert for a dead letter that committed. It never blocks: when the
// queue is full the alert is dropped, counted in Dropped and logged.
func (d *Dispatcher) Notify(letter *DeadLetter) {
	c := *letter
	c.Payload, c.Metadata = nil, nil // alerts never carry payloads or metadata
	select {
	case <-d.stop:
		d.drop(&c, "the dispatcher is closed")
		return
	default:
	}
	select {
	case d.queue <- &c:
	default:
		d.drop(&c, "the alert queue is full")
	}
}

func (d *Dispatcher) drop(l *DeadLetter, why string) {
	d.dropped.Add(1)
	d.cfg.Logger.Warn("idem: dead-letter alert dropped, "+why,
		slog.String("consumer", l.Consumer), slog.String("event_id", l.EventID),
		slog.String("fingerprint", l.Fingerprint), slog.Int64("dropped_total", d.dropped.Load()))
}

// Dropped returns how many alerts were dropped because the queue was full.
func (d *Dispatcher) Dropped() int64 { return d.dropped.Load() }

// Sent returns how many alerts were delivered to every Alerter; Failed how many
// Alerter calls failed.
func (d *Dispatcher) Sent() int64   { return d.sent.Load() }
func (d *Dispatcher) Failed() int64 { return d.failed.Load() }

// Close stops accepting alerts, sends the alerts still queued and the summaries of
// open windows, and waits until they were delivered or ctx ends.
func (d *Dispatcher) Close(ctx context.Context) error {
	d.once.Do(func() { close(d.stop) })
	select {
	case <-d.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("dlq: close dispatcher: %w", ctx.Err())
	}
}

// window is the aggregation state of one fingerprint.
type window struct {
	ends    time.Time
	summary *Alert // nil while nothing followed the immediate alert
}

func (d *Dispatcher) run() {
	defer close(d.done)
	windows := map[string]*window{}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case l := <-d.queue:
			d.add(windows, l)
		case <-timer.C:
			d.flush(windows, time.Now(), false)
		case <-d.stop:
			for {
				select {
				case l := <-d.queue:
					d.add(windows, l)
					continue
				default:
				}
				break
			}
			d.flush(windows, time.Now(), true)
			return
		}
		if next, ok := nextEnd(windows); ok {
			timer.Reset(time.Until(next))
		}
	}
}

func (d *Dispatcher) add(windows map[string]*window, l *DeadLetter) {
	now := time.Now()
	seen := cmp.Or(l.DeadLetteredAt, now)
	w, open := windows[l.Fingerprint]
	if !open || !now.Before(w.ends) {
		if open {
			d.flushOne(l.Fingerprint, w)
		}
		windows[l.Fingerprint] = &window{ends: now.Add(d.cfg.Window)}
		d.send(alertOf(l, seen, false))
		return
	}
	if w.summary == nil {
		a := alertOf(l, seen, true)
		a.Count, a.EventIDs = 0, nil
		w.summary = &a
	}
	w.summary.Count++
	w.summary.Last = seen
	if len(w.summary.EventIDs) < maxSampleEventIDs {
		w.summary.EventIDs = append(w.summary.EventIDs, l.EventID)
	}
}

func alertOf(l *DeadLetter, seen time.Time, summary bool) Alert {
	return Alert{
		Fingerprint:   l.Fingerprint,
		Consumer:      l.Consumer,
		Topic:         l.Topic,
		Reason:        l.Reason,
		Error:         l.Error,
		Count:         1,
		Summary:       summary,
		EventIDs:      []string{l.EventID},
		CorrelationID: l.CorrelationID,
		TraceID:       l.TraceID,
		First:         seen,
		Last:          seen,
	}
}

// flush sends the summaries of windows that ended by now (all of them when closing)
// and forgets those windows.
func (d *Dispatcher) flush(windows map[string]*window, now time.Time, all bool) {
	for fp, w := range windows {
		if all || !now.Before(w.ends) {
			d.flushOne(fp, w)
			delete(windows, fp)
		}
	}
}

func (d *Dispatcher) flushOne(_ string, w *window) {
	if w.summary != nil {
		d.send(*w.summary)
		w.summary = nil
	}
}

func nextEnd(windows map[string]*window) (time.Time, bool) {
	var next time.Time
	for _, w := range windows {
		if next.IsZero() || w.ends.Before(next) {
			next = w.ends
		}
	}
	return next, !next.IsZero()
}

func (d *Dispatcher) send(a Alert) {
	ok := true
	for _, alerter := range d.cfg.Alerters {
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.Timeout)
		err := alerter.Alert(ctx, a)
		cancel()
		if err != nil {
			ok = false
			d.failed.Add(1)
			d.cfg.Logger.Error("idem: dead-letter alert failed", slog.String("fingerprint", a.Fingerprint),
				slog.String("consumer", a.Consumer), slog.Int("count", a.Count), slog.String("error", err.Error()))
		}
	}
	if ok {
		d.sent.Add(1)
	}
}

// LogAlerter returns an Alerter that logs each alert at error level on logger (nil:
// slog.Default()): "idem: dead-letter alert".
func LogAlerter(logger *slog.Logger) Alerter {
	return logAlerter{cmp.Or(logger, slog.Default())}
}

type logAlerter struct{ logger *slog.Logger }

func (l logAlerter) Alert(ctx context.Context, a Alert) error {
	l.logger.LogAttrs(ctx, slog.LevelError, "idem: dead-letter alert",
		slog.String("consumer", a.Consumer), slog.String("topic", a.Topic), slog.String("reason", string(a.Reason)),
		slog.String("fingerprint", a.Fingerprint), slog.Int("count", a.Count), slog.Bool("summary", a.Summary),
		slog.Any("event_ids", a.EventIDs), slog.String("correlation_id", a.CorrelationID), slog.String("trace_id", a.TraceID),
		slog.String("error", a.Error))
	return nil
}
