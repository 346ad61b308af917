package soak

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// Report is the outcome of a soak run: one LegReport per leg that ran.
type Report struct {
	Command  string      `json:"command"`
	Seed     uint64      `json:"seed"`
	Started  time.Time   `json:"started"`
	Duration Seconds     `json:"duration_s"`
	Machine  Machine     `json:"machine"`
	Servers  []string    `json:"servers"`
	Config   RunSettings `json:"settings"`
	Legs     []LegReport `json:"legs"`
	// Violations sums the violations of every leg's invariants.
	Violations int `json:"violations"`
}

// Machine describes where the run ran.
type Machine struct {
	CPUs   int    `json:"cpus"`
	OS     string `json:"os"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
	CPU    string `json:"cpu"`
}

// RunSettings are the settings the events and faults followed.
type RunSettings struct {
	Events        int     `json:"events_per_leg"`
	Consumers     int     `json:"consumers"`
	MaxAttempts   int     `json:"max_attempts"`
	CrashGuard    int     `json:"crash_guard"`
	Rate          float64 `json:"rate"`
	ChaosInterval Seconds `json:"chaos_interval_s"`
	Chaos         bool    `json:"chaos"`
	Mix           Mix     `json:"mix"`
	PrivateDB     bool    `json:"private_postgres"`
}

// Seconds is a duration written as seconds.
type Seconds float64

func secondsOf(d time.Duration) Seconds { return Seconds(math.Round(d.Seconds()*1000) / 1000) }

// LegReport is what one leg did and found.
type LegReport struct {
	Leg     string `json:"leg"`
	Broker  string `json:"broker"`
	Skipped string `json:"skipped,omitempty"`
	Error   string `json:"error,omitempty"`

	Events    int           `json:"events"`
	Classes   map[Class]int `json:"classes"`
	Messages  int           `json:"messages_published"`
	Copies    CopyCounts    `json:"copies"`
	Published PublishCounts `json:"publish"`

	Faults       map[string]int `json:"faults"`
	FaultLog     []Fault        `json:"fault_log"`
	CrashExits   int            `json:"crash_poison_exits"`
	OtherExits   int            `json:"other_consumer_exits"`
	ProcessStart int            `json:"consumer_processes_started"`

	Deliveries   int64            `json:"deliveries"`
	HandlerCalls int64            `json:"handler_calls"`
	Outcomes     map[string]int64 `json:"outcomes"`
	Retries      int64            `json:"in_process_retries"`
	DeadLetters  int              `json:"dead_letters"`
	DeadLetterBy map[string]int   `json:"dead_letters_by_reason"`
	Alerts       AlertCounts      `json:"alerts"`

	Quiesced   bool               `json:"quiesced"`
	Duration   Seconds            `json:"duration_s"`
	Throughput float64            `json:"throughput_events_per_s"`
	DeliveryPS float64            `json:"deliveries_per_s"`
	Latency    Latency            `json:"latency_ms"`
	Recovery   map[string]Latency `json:"recovery_ms"`

	Invariants []Invariant `json:"invariants"`
	Violations int         `json:"violations"`
	Notes      []string    `json:"notes,omitempty"`
}

// CopyCounts counts the events by how many copies were published, and the copies
// that went out right behind the first or well after it.
type CopyCounts struct {
	One, Two, Three int
	Adjacent, Late  int
}

// PublishCounts counts publish calls.
type PublishCounts struct {
	Attempts int `json:"attempts"`
	Failed   int `json:"failed"`
}

// AlertCounts counts the alerts the webhook received and what the dispatchers said.
type AlertCounts struct {
	Received int   `json:"received"`
	Events   int   `json:"event_ids_named"`
	Sent     int64 `json:"sent"`
	Failed   int64 `json:"failed"`
	Dropped  int64 `json:"dropped"`
}

// Fault is one fault the chaos loop injected.
type Fault struct {
	Kind   string  `json:"kind"`
	Target string  `json:"target"`
	At     Seconds `json:"at_s"`
	// Outage is how long the target was down (0 for a backend termination).
	Outage Seconds `json:"outage_s"`
	// Recovery is how long after the fault the target (or, for server faults, the
	// consumers as a whole) was working again; -1 when it could not be measured (no
	// work left).
	Recovery Seconds `json:"recovery_s"`
}

// Latency summarises a sample of durations in milliseconds.
type Latency struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

// latencyOf summarises ds.
func latencyOf(ds []time.Duration) Latency {
	if len(ds) == 0 {
		return Latency{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	ms := func(d time.Duration) float64 { return math.Round(float64(d)/1e4) / 100 }
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return Latency{
		N:    len(s),
		P50:  ms(percentile(s, 0.50)),
		P99:  ms(percentile(s, 0.99)),
		Max:  ms(s[len(s)-1]),
		Mean: ms(sum / time.Duration(len(s))),
	}
}

// percentile returns the nearest-rank q-quantile of sorted s.
func percentile(s []time.Duration, q float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// WriteMarkdown renders r for people.
func (r *Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# idem soak, seed %d\n\n", r.Seed)
	fmt.Fprintf(&b, "`%s`\n\n", r.Command)
	verdict := "**PASS**: every invariant holds on every leg that ran."
	if r.Violations > 0 {
		verdict = fmt.Sprintf("**FAIL**: %d invariant violations.", r.Violations)
	}
	for _, l := range r.Legs {
		if l.Error != "" && r.Violations == 0 {
			verdict = "**FAIL**: a leg could not run."
		}
	}
	fmt.Fprintf(&b, "%s Started %s, took %.0fs.\n\n", verdict, r.Started.UTC().Format(time.RFC3339), float64(r.Duration))
	fmt.Fprintf(&b, "Machine: %d CPUs (%s), %s %s, %s. Servers: %s.\n\n", r.Machine.CPUs, r.Machine.CPU, r.Machine.OS, r.Machine.Kernel, r.Machine.Go, strings.Join(r.Servers, "; "))
	c := r.Config
	fmt.Fprintf(&b, "Settings: %d events per leg, %d consumer processes, MaxAttempts %d, CrashGuard %d, rate %s, chaos %s, private PostgreSQL %t.\n\n",
		c.Events, c.Consumers, c.MaxAttempts, c.CrashGuard, rateText(c.Rate), chaosText(c.Chaos, c.ChaosInterval), c.PrivateDB)

	b.WriteString("## Summary\n\n| leg | events | messages | deliveries | duplicates | retried | in-process retries | dead letters | alerts | faults | throughput (events/s) | p50 / p99 latency (ms) | violations |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, l := range r.Legs {
		if l.Skipped != "" || l.Error != "" {
			fmt.Fprintf(&b, "| %s | %s |||||||||||| |\n", l.Leg, cmpText(l.Skipped != "", "skipped: "+l.Skipped, "error: "+l.Error))
			continue
		}
		faults := 0
		for _, n := range l.Faults {
			faults += n
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %d | %d | %d | %d | %.0f | %.0f / %.0f | %d |\n",
			l.Leg, l.Events, l.Messages, l.Deliveries, l.Outcomes["duplicate"], l.Outcomes["retried"], l.Retries,
			l.DeadLetters, l.Alerts.Received, faults, l.Throughput, l.Latency.P50, l.Latency.P99, l.Violations)
	}
	for _, l := range r.Legs {
		if l.Skipped != "" || l.Error != "" {
			continue
		}
		fmt.Fprintf(&b, "\n## %s (%s)\n\n", l.Leg, l.Broker)
		fmt.Fprintf(&b, "%d events (", l.Events)
		var parts []string
		for _, cl := range Classes {
			parts = append(parts, fmt.Sprintf("%s %d", cl, l.Classes[cl]))
		}
		fmt.Fprintf(&b, "%s), %d messages: %d events once, %d twice, %d three times; %d copies right behind the first, %d late. %d publish calls, %d failed and retried.\n\n",
			strings.Join(parts, ", "), l.Messages, l.Copies.One, l.Copies.Two, l.Copies.Three, l.Copies.Adjacent, l.Copies.Late, l.Published.Attempts, l.Published.Failed)
		fmt.Fprintf(&b, "Consumed in %.1fs (%s): %.0f events/s, %.0f deliveries/s; end-to-end latency (first publish to commit) p50 %.1f ms, p99 %.1f ms, max %.1f ms.\n\n",
			float64(l.Duration), cmpText(l.Quiesced, "quiesced", "did NOT quiesce"), l.Throughput, l.DeliveryPS, l.Latency.P50, l.Latency.P99, l.Latency.Max)
		fmt.Fprintf(&b, "Deliveries %d (outcomes: %s), handler calls %d, in-process retries %d. Dead letters %d (%s). Alerts: %d received naming %d events; dispatchers sent %d, failed %d, dropped %d.\n\n",
			l.Deliveries, mapText(l.Outcomes), l.HandlerCalls, l.Retries, l.DeadLetters, mapText(l.DeadLetterBy),
			l.Alerts.Received, l.Alerts.Events, l.Alerts.Sent, l.Alerts.Failed, l.Alerts.Dropped)
		fmt.Fprintf(&b, "Faults: %s; %d crash-poison exits; %d other consumer exits; %d consumer processes started.\n\n",
			mapText(l.Faults), l.CrashExits, l.OtherExits, l.ProcessStart)
		if len(l.Recovery) > 0 {
			b.WriteString("| fault | n | recovery p50 (ms) | p99 | max |\n|---|---:|---:|---:|---:|\n")
			for _, k := range sortedKeys(l.Recovery) {
				v := l.Recovery[k]
				fmt.Fprintf(&b, "| %s | %d | %.0f | %.0f | %.0f |\n", k, v.N, v.P50, v.P99, v.Max)
			}
			b.WriteString("\n")
		}
		b.WriteString("| invariant | checked | violations | examples |\n|---|---:|---:|---|\n")
		for _, inv := range l.Invariants {
			fmt.Fprintf(&b, "| %s | %d | %d | %s |\n", inv.Name, inv.Checked, inv.Violations, strings.ReplaceAll(strings.Join(inv.Examples, "; "), "|", "\\|"))
		}
		for _, n := range l.Notes {
			fmt.Fprintf(&b, "\n- %s", n)
		}
		if len(l.Notes) > 0 {
			b.WriteString("\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func rateText(r float64) string {
	if r <= 0 {
		return "unpaced"
	}
	return fmt.Sprintf("%.0f messages/s", r)
}

func chaosText(on bool, every Seconds) string {
	if !on {
		return "off"
	}
	return fmt.Sprintf("a fault every %.1fs on average", float64(every))
}

func cmpText(cond bool, yes, no string) string {
	if cond {
		return yes
	}
	return no
}

func mapText[V int | int64](m map[string]V) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
