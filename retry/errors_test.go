package retry_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/retry"
)

var errBoom = errors.New("boom")

func TestPermanent(t *testing.T) {
	t.Parallel()

	t.Run("NilStaysNil", func(t *testing.T) {
		t.Parallel()
		require.NoError(t, retry.Permanent(nil))
	})

	t.Run("KeepsTextAndChain", func(t *testing.T) {
		t.Parallel()
		err := retry.Permanent(errBoom)
		require.EqualError(t, err, "boom")
		require.ErrorIs(t, err, errBoom)
		require.ErrorIs(t, err, retry.ErrPermanent)
		require.NotErrorIs(t, err, retry.ErrInfrastructure)

		var pe *retry.PermanentError
		require.ErrorAs(t, err, &pe)
		require.Equal(t, errBoom, pe.Err)
		require.Equal(t, errBoom, errors.Unwrap(err))
	})

	t.Run("FoundThroughWrapping", func(t *testing.T) {
		t.Parallel()
		err := fmt.Errorf("handle: %w", retry.Permanent(errBoom))
		require.ErrorIs(t, err, retry.ErrPermanent)
		require.ErrorIs(t, errors.Join(errors.New("other"), err), retry.ErrPermanent)
	})

	t.Run("ZeroValueHasText", func(t *testing.T) {
		t.Parallel()
		require.EqualError(t, &retry.PermanentError{}, "retry: permanent error")
	})
}

func TestAfter(t *testing.T) {
	t.Parallel()

	t.Run("NilStaysNil", func(t *testing.T) {
		t.Parallel()
		require.NoError(t, retry.After(time.Second, nil))
	})

	t.Run("KeepsTextAndChain", func(t *testing.T) {
		t.Parallel()
		err := retry.After(3*time.Second, errBoom)
		require.EqualError(t, err, "boom")
		require.ErrorIs(t, err, errBoom)
		require.NotErrorIs(t, err, retry.ErrPermanent)

		var ae *retry.AfterError
		require.ErrorAs(t, err, &ae)
		require.Equal(t, 3*time.Second, ae.Delay)
		require.Equal(t, errBoom, ae.Err)
	})

	t.Run("NegativeIsZero", func(t *testing.T) {
		t.Parallel()
		d, ok := retry.RetryAfter(retry.After(-time.Second, errBoom))
		require.True(t, ok)
		require.Zero(t, d)
	})

	t.Run("ZeroValueHasText", func(t *testing.T) {
		t.Parallel()
		require.EqualError(t, &retry.AfterError{Delay: time.Second}, "retry: retry after 1s")
	})
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name   string
		err    error
		want   time.Duration
		wantOK bool
	}{
		{"Nil", nil, 0, false},
		{"Plain", errBoom, 0, false},
		{"Direct", retry.After(time.Minute, errBoom), time.Minute, true},
		{"Wrapped", fmt.Errorf("call: %w", retry.After(time.Minute, errBoom)), time.Minute, true},
		{"Joined", errors.Join(errBoom, retry.After(time.Minute, errBoom)), time.Minute, true},
		{"OutermostWins", retry.After(time.Second, retry.After(time.Hour, errBoom)), time.Second, true},
		{"UnderPermanent", retry.Permanent(retry.After(time.Minute, errBoom)), time.Minute, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d, ok := retry.RetryAfter(tt.err)
			require.Equal(t, tt.wantOK, ok)
			require.Equal(t, tt.want, d)
		})
	}
}

func TestInfrastructure(t *testing.T) {
	t.Parallel()

	t.Run("NilStaysNil", func(t *testing.T) {
		t.Parallel()
		require.NoError(t, retry.Infrastructure(nil))
	})

	t.Run("KeepsTextAndChain", func(t *testing.T) {
		t.Parallel()
		err := retry.Infrastructure(errBoom)
		require.EqualError(t, err, "boom")
		require.ErrorIs(t, err, errBoom)
		require.ErrorIs(t, err, retry.ErrInfrastructure)
		require.NotErrorIs(t, err, retry.ErrPermanent)

		var ie *retry.InfrastructureError
		require.ErrorAs(t, err, &ie)
		require.Equal(t, errBoom, ie.Err)
		require.Equal(t, errBoom, errors.Unwrap(err))
	})

	t.Run("ZeroValueHasText", func(t *testing.T) {
		t.Parallel()
		require.EqualError(t, &retry.InfrastructureError{}, "retry: infrastructure error")
	})
}
