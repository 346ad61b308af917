package retry_test

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/retry"
)

func TestPolicyWithDefaults(t *testing.T) {
	t.Parallel()

	t.Run("ZeroTakesDefaults", func(t *testing.T) {
		t.Parallel()
		p := retry.Policy{}.WithDefaults()
		require.Equal(t, retry.DefaultMaxAttempts, p.MaxAttempts)
		require.Equal(t, 5, p.MaxAttempts)
		require.Equal(t, 100*time.Millisecond, p.InitialInterval)
		require.Equal(t, 10*time.Second, p.MaxInterval)
		require.InDelta(t, 2.0, p.Multiplier, 0)
		require.Equal(t, 30*time.Second, p.MaxElapsedTime)
		require.Nil(t, p.Classify)
	})

	t.Run("KeepsSetFields", func(t *testing.T) {
		t.Parallel()
		in := retry.Policy{
			MaxAttempts:     3,
			InitialInterval: time.Second,
			MaxInterval:     time.Minute,
			Multiplier:      1.5,
			MaxElapsedTime:  -1,
		}
		require.Equal(t, in, in.WithDefaults())
	})

	t.Run("DoesNotMutateCaller", func(t *testing.T) {
		t.Parallel()
		p := retry.Policy{MaxAttempts: 7}
		got := p.WithDefaults()
		require.Equal(t, retry.Policy{MaxAttempts: 7}, p)
		require.Equal(t, 7, got.MaxAttempts)
		require.Equal(t, retry.DefaultMaxInterval, got.MaxInterval)
	})
}

func TestPolicyValidate(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		policy  retry.Policy
		wantErr string
	}{
		{"Zero", retry.Policy{}, ""},
		{"Custom", retry.Policy{MaxAttempts: 1, InitialInterval: time.Second, MaxInterval: time.Second, Multiplier: 1}, ""},
		{"UnboundedElapsed", retry.Policy{MaxElapsedTime: -1}, ""},
		{"MaxAttemptsNegative", retry.Policy{MaxAttempts: -1}, "retry: MaxAttempts must be at least 1, got -1"},
		{"InitialIntervalNegative", retry.Policy{InitialInterval: -time.Second}, "retry: InitialInterval must not be negative, got -1s"},
		{"MaxIntervalNegative", retry.Policy{MaxInterval: -time.Second}, "retry: MaxInterval must not be negative, got -1s"},
		{
			"MaxIntervalBelowInitialInterval", retry.Policy{InitialInterval: 20 * time.Second},
			"retry: MaxInterval must be at least InitialInterval (20s), got 10s",
		},
		{"MultiplierBelowOne", retry.Policy{Multiplier: 0.5}, "retry: Multiplier must be at least 1, got 0.5"},
		{"MultiplierNegative", retry.Policy{Multiplier: -2}, "retry: Multiplier must be at least 1, got -2"},
		{"MultiplierNaN", retry.Policy{Multiplier: math.NaN()}, "retry: Multiplier must be at least 1, got NaN"},
		{"MultiplierInf", retry.Policy{Multiplier: math.Inf(1)}, "retry: Multiplier must be finite, got +Inf"},
		{"MaxElapsedTimeNegative", retry.Policy{MaxElapsedTime: -time.Second}, "retry: MaxElapsedTime must be positive or -1, got -1s"},
		{
			"SeveralJoined", retry.Policy{MaxAttempts: -3, Multiplier: 0.1},
			"retry: MaxAttempts must be at least 1, got -3\nretry: Multiplier must be at least 1, got 0.1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.policy.Validate()
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.EqualError(t, err, tt.wantErr)
		})
	}
}

func TestPolicyBackoff(t *testing.T) {
	t.Parallel()

	t.Run("GrowsThenCaps", func(t *testing.T) {
		t.Parallel()
		var p retry.Policy // 100ms, ×2, capped at 10s
		want := []time.Duration{
			100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond,
			1600 * time.Millisecond, 3200 * time.Millisecond, 6400 * time.Millisecond,
			10 * time.Second, 10 * time.Second, 10 * time.Second,
		}
		for i, w := range want {
			require.Equal(t, w, p.Backoff(i+1), "failures=%d", i+1)
		}
	})

	t.Run("Custom", func(t *testing.T) {
		t.Parallel()
		p := retry.Policy{InitialInterval: time.Second, MaxInterval: 5 * time.Second, Multiplier: 1.5}
		require.Equal(t, time.Second, p.Backoff(1))
		require.Equal(t, 1500*time.Millisecond, p.Backoff(2))
		require.Equal(t, 2250*time.Millisecond, p.Backoff(3))
		require.Equal(t, 3375*time.Millisecond, p.Backoff(4))
		require.Equal(t, 5*time.Second, p.Backoff(5))
	})

	t.Run("MultiplierOneIsConstant", func(t *testing.T) {
		t.Parallel()
		p := retry.Policy{InitialInterval: time.Second, Multiplier: 1}
		for failures := 1; failures <= 50; failures++ {
			require.Equal(t, time.Second, p.Backoff(failures))
		}
	})

	t.Run("BelowOneIsOne", func(t *testing.T) {
		t.Parallel()
		var p retry.Policy
		require.Equal(t, p.Backoff(1), p.Backoff(0))
		require.Equal(t, p.Backoff(1), p.Backoff(-5))
		require.Equal(t, p.Backoff(1), p.Backoff(math.MinInt))
	})

	t.Run("NoOverflow", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			name   string
			policy retry.Policy
			want   time.Duration
		}{
			{"Default", retry.Policy{}, retry.DefaultMaxInterval},
			{"HugeCap", retry.Policy{MaxInterval: math.MaxInt64}, math.MaxInt64},
			{"HugeMultiplier", retry.Policy{Multiplier: math.MaxFloat64}, retry.DefaultMaxInterval},
		}
		for _, tt := range tests {
			for _, failures := range []int{63, 64, 1000, 1 << 20, math.MaxInt} {
				got := tt.policy.Backoff(failures)
				require.Equal(t, tt.want, got, "%s failures=%d", tt.name, failures)
			}
		}
	})
}

func TestPolicyDelay(t *testing.T) {
	t.Parallel()

	t.Run("FullJitterWithinCap", func(t *testing.T) {
		t.Parallel()
		var p retry.Policy
		const samples = 10_000
		for _, failures := range []int{1, 3, 10} {
			limit := p.Backoff(failures)
			seen := make(map[time.Duration]bool)
			var sum float64
			for range samples {
				d := p.Delay(failures, errBoom)
				require.GreaterOrEqual(t, d, time.Duration(0))
				require.LessOrEqual(t, d, limit)
				seen[d] = true
				sum += float64(d)
			}
			require.Greater(t, len(seen), samples/2, "delays must vary, failures=%d", failures)
			// The mean of a uniform [0, limit] draw is limit/2; with 10,000
			// samples its standard error is under 0.3% of limit.
			require.InDelta(t, float64(limit)/2, sum/samples, float64(limit)/10, "failures=%d", failures)
		}
	})

	t.Run("ZeroCapIsZero", func(t *testing.T) {
		t.Parallel()
		// InitialInterval cannot be zero once defaults apply, so a zero cap
		// comes only from an invalid, negative interval.
		p := retry.Policy{InitialInterval: -time.Second, MaxInterval: -time.Second}
		require.Zero(t, p.Delay(1, errBoom))
	})

	t.Run("HugeCapDoesNotPanic", func(t *testing.T) {
		t.Parallel()
		p := retry.Policy{MaxInterval: math.MaxInt64}
		for range 100 {
			require.GreaterOrEqual(t, p.Delay(1000, errBoom), time.Duration(0))
		}
	})

	t.Run("AfterOverrides", func(t *testing.T) {
		t.Parallel()
		var p retry.Policy
		tests := []struct {
			name string
			err  error
			want time.Duration
		}{
			{"Direct", retry.After(1234*time.Millisecond, errBoom), 1234 * time.Millisecond},
			{"AboveMaxInterval", retry.After(time.Hour, errBoom), time.Hour},
			{"Zero", retry.After(0, errBoom), 0},
			{"Wrapped", fmt.Errorf("call: %w", retry.After(time.Minute, errBoom)), time.Minute},
			{"Joined", errors.Join(errBoom, retry.After(time.Minute, errBoom)), time.Minute},
		}
		for _, tt := range tests {
			for failures := 1; failures <= 10; failures++ {
				require.Equal(t, tt.want, p.Delay(failures, tt.err), "%s failures=%d", tt.name, failures)
			}
		}
	})

	t.Run("WaitsRealDurations", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			p := retry.Policy{InitialInterval: time.Second, MaxInterval: time.Minute}
			for failures, err := range []error{errBoom, retry.After(45*time.Second, errBoom), errBoom, errBoom} {
				d := p.Delay(failures+1, err)
				start := time.Now()
				time.Sleep(d)
				require.Equal(t, d, time.Since(start))
			}

			// A timer armed with a delay fires exactly then.
			d := p.Delay(1, retry.After(7*time.Second, errBoom))
			start := time.Now()
			<-time.After(d)
			require.Equal(t, 7*time.Second, time.Since(start))
		})
	})

	t.Run("ConcurrentUse", func(t *testing.T) {
		t.Parallel()
		p := retry.Policy{MaxAttempts: 3}
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for failures := 1; failures <= 100; failures++ {
					_ = p.Delay(failures, errBoom)
					_ = p.Class(errBoom)
				}
			})
		}
		wg.Wait()
	})
}
