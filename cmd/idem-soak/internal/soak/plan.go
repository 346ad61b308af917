package soak

import (
	"fmt"
	"math/rand/v2"
	"slices"
)

// Class is what an event's handler does with it, and so the fate the event must have.
type Class string

// The classes of events. Good events (ok, transient) must be applied exactly once;
// poison events (the others) must be dead-lettered exactly once and never applied.
const (
	// ClassOK succeeds at once.
	ClassOK Class = "ok"
	// ClassTransient fails its first FailFirst attempts with a retryable error (fewer
	// than the retry budget), then succeeds.
	ClassTransient Class = "transient"
	// ClassPermanent fails with retry.Permanent: dead-lettered on its first failure.
	ClassPermanent Class = "permanent"
	// ClassTransientPoison fails with a retryable error every time: dead-lettered once
	// its retry budget is spent.
	ClassTransientPoison Class = "transient-poison"
	// ClassCrash calls os.Exit inside the handler, after its writes: dead-lettered by
	// the crash guard as crash-looped.
	ClassCrash Class = "crash"
	// ClassMalformed is published without an event ID: dead-lettered as malformed
	// without reaching the handler.
	ClassMalformed Class = "malformed"
)

// Classes lists every class, good ones first.
var Classes = []Class{ClassOK, ClassTransient, ClassPermanent, ClassTransientPoison, ClassCrash, ClassMalformed}

// Good reports whether events of class c must be applied (rather than dead-lettered).
func (c Class) Good() bool { return c == ClassOK || c == ClassTransient }

// Reason is the dead-letter reason a poison event of class c must end with.
func (c Class) Reason() string {
	switch c {
	case ClassPermanent:
		return "permanent"
	case ClassTransientPoison:
		return "exhausted"
	case ClassCrash:
		return "crash-looped"
	case ClassMalformed:
		return "malformed"
	}
	return ""
}

// Event is one event of the ground truth.
type Event struct {
	ID    string `json:"id"`
	Class Class  `json:"class"`
	// FailFirst is how many attempts of a transient event fail.
	FailFirst int `json:"fail_first,omitempty"`
	// From, To and Amount are the event's transfer between accounts.
	From   int   `json:"from"`
	To     int   `json:"to"`
	Amount int64 `json:"amount"`
	// Copies is how many times the event is published.
	Copies int `json:"copies"`
}

// Send is one publish: copy Copy (0-based) of event Event (an index into Plan.Events).
type Send struct {
	Event int
	Copy  int
	// Late is true for a copy published well after the first one, rather than right
	// behind it.
	Late bool
}

// Mix is the share of each class of poison and transient events; the rest are ok.
type Mix struct {
	Transient       float64 `json:"transient"`
	Permanent       float64 `json:"permanent"`
	TransientPoison float64 `json:"transient_poison"`
	Crash           float64 `json:"crash"`
	Malformed       float64 `json:"malformed"`
}

// DefaultMix is the mix the command uses unless told otherwise.
var DefaultMix = Mix{Transient: 0.05, Permanent: 0.01, TransientPoison: 0.005, Crash: 0.0005, Malformed: 0.005}

// PlanConfig configures [NewPlan].
type PlanConfig struct {
	Seed   uint64
	Events int
	Mix    Mix
	// Accounts is how many accounts the transfers move money between (at least 2).
	Accounts int
	// MaxAttempts is the consumers' retry budget: transient events fail at most
	// MaxAttempts-2 times, so that one more failure still leaves them an attempt.
	MaxAttempts int
	// LateMin and LateMax bound how many sends later a late copy goes out.
	LateMin, LateMax int
}

// Plan is a leg's ground truth and the order of its publishes, derived from a seed
// alone: the same PlanConfig gives the same Plan.
type Plan struct {
	Events   []Event
	Schedule []Send
}

// minPerPoisonClass is how many events of each poison class a plan of at least 100
// events has, whatever the mix says, so that a short run still exercises each.
const minPerPoisonClass = 3

// NewPlan derives the events and the publish schedule from cfg.
func NewPlan(cfg PlanConfig) (Plan, error) {
	switch {
	case cfg.Events < 1:
		return Plan{}, fmt.Errorf("soak: PlanConfig.Events must be at least 1, got %d", cfg.Events)
	case cfg.Accounts < 2:
		return Plan{}, fmt.Errorf("soak: PlanConfig.Accounts must be at least 2, got %d", cfg.Accounts)
	case cfg.MaxAttempts < 3:
		return Plan{}, fmt.Errorf("soak: PlanConfig.MaxAttempts must be at least 3, got %d", cfg.MaxAttempts)
	}
	if cfg.LateMax <= cfg.LateMin {
		cfg.LateMin, cfg.LateMax = 20, 2000
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x1de5))
	n := cfg.Events
	count := func(share float64) int {
		k := int(share*float64(n) + 0.5)
		if n >= 100 && share > 0 {
			k = max(k, minPerPoisonClass)
		}
		return k
	}
	classes := make([]Class, 0, n)
	for _, c := range []struct {
		class Class
		n     int
	}{
		{ClassTransient, count(cfg.Mix.Transient)},
		{ClassPermanent, count(cfg.Mix.Permanent)},
		{ClassTransientPoison, count(cfg.Mix.TransientPoison)},
		{ClassCrash, count(cfg.Mix.Crash)},
		{ClassMalformed, count(cfg.Mix.Malformed)},
	} {
		for range c.n {
			classes = append(classes, c.class)
		}
	}
	if len(classes) > n {
		return Plan{}, fmt.Errorf("soak: the mix leaves no room for ok events in %d events", n)
	}
	for len(classes) < n {
		classes = append(classes, ClassOK)
	}
	rng.Shuffle(len(classes), func(i, j int) { classes[i], classes[j] = classes[j], classes[i] })

	p := Plan{Events: make([]Event, n)}
	for i := range p.Events {
		e := Event{ID: fmt.Sprintf("evt-%07d", i), Class: classes[i]}
		e.From = rng.IntN(cfg.Accounts)
		e.To = rng.IntN(cfg.Accounts - 1)
		if e.To >= e.From {
			e.To++ // never to itself
		}
		e.Amount = 1 + rng.Int64N(500)
		if e.Class == ClassTransient {
			e.FailFirst = 1 + rng.IntN(cfg.MaxAttempts-2)
		}
		switch r := rng.Float64(); {
		case r < 0.5:
			e.Copies = 1
		case r < 0.85:
			e.Copies = 2
		default:
			e.Copies = 3
		}
		p.Events[i] = e
	}

	// The schedule: each event's first copy in order; each further copy either right
	// behind it or a random number of sends later.
	type pending struct {
		at   int
		send Send
	}
	var late []pending
	for i, e := range p.Events {
		p.Schedule = append(p.Schedule, Send{Event: i})
		for c := 1; c < e.Copies; c++ {
			if rng.IntN(2) == 0 {
				p.Schedule = append(p.Schedule, Send{Event: i, Copy: c})
				continue
			}
			at := len(p.Schedule) + cfg.LateMin + rng.IntN(cfg.LateMax-cfg.LateMin)
			late = append(late, pending{at: at, send: Send{Event: i, Copy: c, Late: true}})
		}
		if len(late) > 0 {
			slices.SortStableFunc(late, func(a, b pending) int { return a.at - b.at })
			k := 0
			for k < len(late) && late[k].at <= len(p.Schedule) {
				p.Schedule = append(p.Schedule, late[k].send)
				k++
			}
			late = late[k:]
		}
	}
	for _, l := range late {
		p.Schedule = append(p.Schedule, l.send)
	}
	return p, nil
}

// Counts returns how many events of each class the plan has.
func (p Plan) Counts() map[Class]int {
	m := map[Class]int{}
	for _, e := range p.Events {
		m[e.Class]++
	}
	return m
}
