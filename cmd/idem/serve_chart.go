package main

import (
	"context"
	"fmt"
	"time"

	"github.com/idemkit/idem/dlq"
)

// window is the span of time a chart covers, in buckets of one step.
type window struct {
	Name    string // as the window query parameter names it
	Label   string
	Step    time.Duration
	Buckets int
}

var windows = []window{
	{Name: "24h", Label: "last 24 hours, per hour", Step: time.Hour, Buckets: 24},
	{Name: "7d", Label: "last 7 days, per 6 hours", Step: 6 * time.Hour, Buckets: 28},
	{Name: "30d", Label: "last 30 days, per day", Step: 24 * time.Hour, Buckets: 30},
}

// windowNamed returns the window of that name, the first by default.
func windowNamed(name string) window {
	for _, w := range windows {
		if w.Name == name {
			return w
		}
	}
	return windows[0]
}

// series counts new dead letters, whatever their status now, per failure group and
// bucket of a window.
type series struct {
	win     window
	start   time.Time // of the first bucket
	byGroup map[groupKey][]int64
}

// series reads the counts of the dead letters base selects, dead-lettered in each
// bucket of w, ending with the bucket that holds now. Buckets are aligned on UTC: whole
// hours, 6-hour periods from midnight, or days.
func (c *console) series(ctx context.Context, base dlq.Filter, w window, now time.Time) (*series, error) {
	end := now.UTC().Truncate(w.Step).Add(w.Step)
	s := &series{win: w, start: end.Add(-time.Duration(w.Buckets) * w.Step), byGroup: map[groupKey][]int64{}}
	f := base
	f.Since, f.Until = s.start, end
	inWindow, err := c.st.Report(ctx, f)
	if err != nil || len(inWindow) == 0 {
		return s, err
	}
	for i := range w.Buckets {
		f.Since = s.start.Add(time.Duration(i) * w.Step)
		f.Until = f.Since.Add(w.Step)
		groups, err := c.st.Report(ctx, f)
		if err != nil {
			return nil, err
		}
		for _, g := range groups {
			k := keyOf(g)
			if s.byGroup[k] == nil {
				s.byGroup[k] = make([]int64, w.Buckets)
			}
			s.byGroup[k][i] += g.Count
		}
	}
	return s, nil
}

// of returns the counts of group k, zeros when it had no new dead letter.
func (s *series) of(k groupKey) []int64 {
	if v := s.byGroup[k]; v != nil {
		return v
	}
	return make([]int64, s.win.Buckets)
}

// layer is one series of a stacked chart: a failure group, or the others.
type layer struct {
	Name   string  // what it counts, for the bars' tooltips
	Class  string  // its colour: s0 … s5, or other
	Counts []int64 // per bucket
}

// palette is how many groups get a colour of their own in a chart; the rest are one
// grey layer.
const palette = 6

// svgChart is a stacked bar chart, rendered as inline SVG by the templates.
type svgChart struct {
	Width, Height int
	Label         string // what it shows, for screen readers and the tooltip
	Rects         []svgRect
	Total, Max    int64
	Axis          bool // a full chart: axis and labels; a sparkline otherwise
	BaseY         int  // the y of the axis
	PlotLeft      int
	PlotRight     int
	Start, End    string
	MaxY          int // the y of the maximum's grid line
}

type svgRect struct {
	X, Y, W, H int
	Class      string
	Title      string
}

// chart draws the layers stacked, bottom up, in one bar per bucket; a sparkline when
// small.
func (s *series) chart(layers []layer, small bool) *svgChart {
	c := &svgChart{Width: 1160, Height: 180, Axis: true, PlotLeft: 40, PlotRight: 1152}
	top, bottom := 12, 24
	if small {
		c = &svgChart{Width: 144, Height: 28, PlotLeft: 0, PlotRight: 144}
		top, bottom = 2, 2
	}
	n := s.win.Buckets
	sums := make([]int64, n)
	for _, l := range layers {
		for i, v := range l.Counts {
			sums[i] += v
			c.Total += v
		}
	}
	for _, v := range sums {
		c.Max = max(c.Max, v)
	}
	c.BaseY, c.MaxY = c.Height-bottom, top
	plotH := int64(c.BaseY - top)
	slot := (c.PlotRight - c.PlotLeft) / n
	gap := max(1, slot/6)
	y := func(v int64) int { // the y of a cumulative count
		if c.Max == 0 {
			return c.BaseY
		}
		return c.BaseY - int(plotH*v/c.Max)
	}
	for i := range n {
		from := s.start.Add(time.Duration(i) * s.win.Step)
		when := fmt.Sprintf("%s – %s", from.Format("2006-01-02 15:04"), from.Add(s.win.Step).Format("15:04 MST"))
		var below int64
		for _, l := range layers {
			v := l.Counts[i]
			if v == 0 {
				continue
			}
			y0, y1 := y(below), y(below+v)
			if y0 == y1 {
				y1-- // a count too small for a pixel still shows
			}
			below += v
			title := fmt.Sprintf("%s: %d new dead %s", when, v, plural(int(min(v, 2)), "letter", "letters"))
			if l.Name != "" {
				title = l.Name + ", " + title
			}
			c.Rects = append(c.Rects, svgRect{X: c.PlotLeft + i*slot + gap/2, Y: y1, W: slot - gap, H: y0 - y1, Class: l.Class, Title: title})
		}
	}
	c.Start = s.start.Format("2006-01-02 15:04")
	c.End = s.start.Add(time.Duration(n) * s.win.Step).Format("2006-01-02 15:04 MST")
	c.Label = fmt.Sprintf("%d new dead %s, %s", c.Total, plural(int(min(c.Total, 2)), "letter", "letters"), s.win.Label)
	return c
}

// colour returns the colour class of the i-th group of a page.
func colour(i int) string {
	if i < palette {
		return fmt.Sprintf("s%d", i)
	}
	return "other"
}

// layers returns the chart's layers for groups, in their order: each of the first
// groups in its colour, the others and every group not listed in one grey layer.
func (s *series) layers(groups []groupKey) []layer {
	var out []layer
	rest := make([]int64, s.win.Buckets)
	shown := map[groupKey]bool{}
	for i, k := range groups {
		if i >= palette {
			break
		}
		shown[k] = true
		out = append(out, layer{Name: k.String(), Class: colour(i), Counts: s.of(k)})
	}
	others := false
	for k, counts := range s.byGroup {
		if shown[k] {
			continue
		}
		for i, v := range counts {
			rest[i] += v
			others = others || v > 0
		}
	}
	if others {
		out = append(out, layer{Name: "other groups", Class: "other", Counts: rest})
	}
	return out
}
