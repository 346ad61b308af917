package soak

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNewPlan(t *testing.T) {
	t.Parallel()
	cfg := PlanConfig{Seed: 42, Events: 5000, Mix: DefaultMix, Accounts: 100, MaxAttempts: 5}

	t.Run("SameSeedSamePlan", func(t *testing.T) {
		t.Parallel()
		a, err := NewPlan(cfg)
		require.NoError(t, err)
		b, err := NewPlan(cfg)
		require.NoError(t, err)
		require.Equal(t, a, b)
		other := cfg
		other.Seed = 43
		c, err := NewPlan(other)
		require.NoError(t, err)
		require.NotEqual(t, a.Events, c.Events)
	})

	t.Run("ClassesFollowTheMix", func(t *testing.T) {
		t.Parallel()
		p, err := NewPlan(cfg)
		require.NoError(t, err)
		require.Equal(t, map[Class]int{
			ClassTransient: 250, ClassPermanent: 50, ClassTransientPoison: 25, ClassCrash: 3, ClassMalformed: 25,
			ClassOK: 5000 - 250 - 50 - 25 - 3 - 25,
		}, p.Counts())
	})

	t.Run("EveryEventPublishedAsOftenAsItsCopies", func(t *testing.T) {
		t.Parallel()
		p, err := NewPlan(cfg)
		require.NoError(t, err)
		sent := make([]int, len(p.Events))
		seen := make([]map[int]bool, len(p.Events))
		late, adjacent := 0, 0
		for i, s := range p.Schedule {
			if seen[s.Event] == nil {
				seen[s.Event] = map[int]bool{}
				require.Zero(t, s.Copy, "send %d: the first send of an event is its copy 0", i)
			}
			require.False(t, seen[s.Event][s.Copy], "send %d repeats a copy", i)
			seen[s.Event][s.Copy] = true
			sent[s.Event]++
			if s.Copy > 0 && s.Late {
				late++
			} else if s.Copy > 0 {
				adjacent++
			}
		}
		for i, e := range p.Events {
			require.Equal(t, e.Copies, sent[i], e.ID)
			require.True(t, e.Copies >= 1 && e.Copies <= 3, e.ID)
		}
		require.Positive(t, late)
		require.Positive(t, adjacent)
	})

	t.Run("TransfersAndFailuresAreInRange", func(t *testing.T) {
		t.Parallel()
		p, err := NewPlan(cfg)
		require.NoError(t, err)
		for _, e := range p.Events {
			require.NotEqual(t, e.From, e.To, e.ID)
			require.True(t, e.From >= 0 && e.From < cfg.Accounts && e.To >= 0 && e.To < cfg.Accounts, e.ID)
			require.Positive(t, e.Amount, e.ID)
			if e.Class == ClassTransient {
				require.True(t, e.FailFirst >= 1 && e.FailFirst <= cfg.MaxAttempts-2, "%s fails %d times", e.ID, e.FailFirst)
			} else {
				require.Zero(t, e.FailFirst, e.ID)
			}
		}
	})

	t.Run("SmallPlansKeepEveryPoisonClass", func(t *testing.T) {
		t.Parallel()
		small := cfg
		small.Events = 100
		p, err := NewPlan(small)
		require.NoError(t, err)
		for _, c := range []Class{ClassPermanent, ClassTransientPoison, ClassCrash, ClassMalformed} {
			require.GreaterOrEqual(t, p.Counts()[c], minPerPoisonClass, c)
		}
	})

	t.Run("RefusesBadConfig", func(t *testing.T) {
		t.Parallel()
		for name, mutate := range map[string]func(*PlanConfig){
			"Events":      func(c *PlanConfig) { c.Events = 0 },
			"Accounts":    func(c *PlanConfig) { c.Accounts = 1 },
			"MaxAttempts": func(c *PlanConfig) { c.MaxAttempts = 2 },
			"Mix":         func(c *PlanConfig) { c.Mix.Transient = 2 },
		} {
			bad := cfg
			mutate(&bad)
			_, err := NewPlan(bad)
			require.Error(t, err, name)
		}
	})
}

func TestClassFates(t *testing.T) {
	t.Parallel()
	for _, c := range Classes {
		if c.Good() {
			require.Empty(t, c.Reason(), c)
		} else {
			require.NotEmpty(t, c.Reason(), c)
		}
	}
	require.True(t, ClassOK.Good())
	require.True(t, ClassTransient.Good())
	require.False(t, ClassCrash.Good())
}
