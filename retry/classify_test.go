package retry_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/retry"
)

// behaviourError marks itself the way other packages do, without importing
// retry.
type behaviourError struct {
	permanent, infrastructure bool
	err                       error
}

func (e *behaviourError) Error() string        { return "behaviour" }
func (e *behaviourError) Unwrap() error        { return e.err }
func (e *behaviourError) Permanent() bool      { return e.permanent }
func (e *behaviourError) Infrastructure() bool { return e.infrastructure }

// asError is an error that converts itself to a marker through an As method,
// as errors.As allows.
type asError struct{}

func (asError) Error() string { return "as" }

func (asError) As(target any) bool {
	if p, ok := target.(**retry.InfrastructureError); ok {
		*p = &retry.InfrastructureError{Err: errBoom}
		return true
	}
	return false
}

func TestClassString(t *testing.T) {
	t.Parallel()

	tests := []struct {
		class retry.Class
		want  string
	}{
		{retry.ClassUnknown, "unknown"},
		{retry.ClassTransient, "transient"},
		{retry.ClassPermanent, "permanent"},
		{retry.ClassInfrastructure, "infrastructure"},
		{retry.Class(42), "Class(42)"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, tt.class.String())
		})
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()

	wrap := func(err error) error { return fmt.Errorf("handle order: %w", err) }

	tests := []struct {
		name string
		err  error
		want retry.Class
	}{
		{"Nil", nil, retry.ClassUnknown},
		{"Plain", errBoom, retry.ClassTransient},
		{"PlainWrapped", wrap(errBoom), retry.ClassTransient},

		{"Permanent", retry.Permanent(errBoom), retry.ClassPermanent},
		{"PermanentWrapped", wrap(wrap(retry.Permanent(errBoom))), retry.ClassPermanent},
		{"PermanentJoined", errors.Join(errBoom, retry.Permanent(errBoom)), retry.ClassPermanent},
		{"PermanentSentinel", wrap(retry.ErrPermanent), retry.ClassPermanent},
		{"Infrastructure", retry.Infrastructure(errBoom), retry.ClassInfrastructure},
		{"InfrastructureWrapped", wrap(retry.Infrastructure(errBoom)), retry.ClassInfrastructure},
		{"InfrastructureJoined", wrap(errors.Join(errBoom, retry.Infrastructure(errBoom))), retry.ClassInfrastructure},
		{"InfrastructureSentinel", wrap(retry.ErrInfrastructure), retry.ClassInfrastructure},
		{"InfrastructureThroughAs", wrap(asError{}), retry.ClassInfrastructure},
		{"After", retry.After(time.Second, errBoom), retry.ClassTransient},
		{"AfterWrapped", wrap(retry.After(time.Second, errBoom)), retry.ClassTransient},

		{"OutermostPermanentOverInfrastructure", retry.Permanent(retry.Infrastructure(errBoom)), retry.ClassPermanent},
		{"OutermostInfrastructureOverPermanent", wrap(retry.Infrastructure(wrap(retry.Permanent(errBoom)))), retry.ClassInfrastructure},
		{"OutermostAfterOverPermanent", retry.After(time.Second, retry.Permanent(errBoom)), retry.ClassTransient},
		{"OutermostPermanentOverAfter", retry.Permanent(retry.After(time.Second, errBoom)), retry.ClassPermanent},
		{"JoinFirstBranchFirst", errors.Join(retry.Infrastructure(errBoom), retry.Permanent(errBoom)), retry.ClassInfrastructure},
		{"JoinDepthFirst", errors.Join(wrap(wrap(retry.Permanent(errBoom))), retry.Infrastructure(errBoom)), retry.ClassPermanent},
		{"MarkerOverContext", retry.Permanent(context.Canceled), retry.ClassPermanent},
		{"MarkerOverBehaviour", &behaviourError{infrastructure: true, err: retry.Permanent(errBoom)}, retry.ClassPermanent},

		{"BehaviourPermanent", wrap(&behaviourError{permanent: true}), retry.ClassPermanent},
		{"BehaviourInfrastructure", wrap(&behaviourError{infrastructure: true}), retry.ClassInfrastructure},
		{"BehaviourBothIsPermanent", &behaviourError{permanent: true, infrastructure: true}, retry.ClassPermanent},
		{"BehaviourFalse", &behaviourError{}, retry.ClassTransient},
		{"BehaviourFalseThenTrue", &behaviourError{err: &behaviourError{infrastructure: true}}, retry.ClassInfrastructure},
		{"BehaviourJoined", errors.Join(errBoom, &behaviourError{permanent: true}), retry.ClassPermanent},
		{"BehaviourOverContext", &behaviourError{permanent: true, err: context.Canceled}, retry.ClassPermanent},

		{"Canceled", context.Canceled, retry.ClassInfrastructure},
		{"CanceledWrapped", wrap(context.Canceled), retry.ClassInfrastructure},
		{"CanceledJoined", errors.Join(errBoom, context.Canceled), retry.ClassInfrastructure},
		{"DeadlineExceeded", context.DeadlineExceeded, retry.ClassTransient},
		{"DeadlineExceededWrapped", wrap(context.DeadlineExceeded), retry.ClassTransient},
		{"CanceledOverDeadlineExceeded", errors.Join(context.DeadlineExceeded, context.Canceled), retry.ClassInfrastructure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, retry.Classify(tt.err))
			// With no classifier of its own, a Policy agrees with Classify.
			require.Equal(t, tt.want, retry.Policy{}.Class(tt.err))
		})
	}
}

func TestClassifyContextCause(t *testing.T) {
	t.Parallel()

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	require.Equal(t, retry.ClassInfrastructure, retry.Classify(ctx.Err()))

	ctx, cancel = context.WithTimeout(t.Context(), -time.Second)
	defer cancel()
	require.Equal(t, retry.ClassTransient, retry.Classify(ctx.Err()))
}

func TestPolicyClass(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		calls  int
		policy retry.Policy
	}

	// setup returns a Policy whose classifier answers class and counts its
	// calls.
	setup := func(t *testing.T, class retry.Class) *testBundle {
		t.Helper()
		bundle := &testBundle{}
		bundle.policy = retry.Policy{Classify: func(error) retry.Class {
			bundle.calls++
			return class
		}}
		return bundle
	}

	t.Run("NilIsUnknownWithoutCallingClassify", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t, retry.ClassPermanent)
		require.Equal(t, retry.ClassUnknown, bundle.policy.Class(nil))
		require.Zero(t, bundle.calls)
	})

	t.Run("MarkersComeFirst", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t, retry.ClassPermanent)
		require.Equal(t, retry.ClassInfrastructure, bundle.policy.Class(retry.Infrastructure(errBoom)))
		require.Equal(t, retry.ClassTransient, bundle.policy.Class(retry.After(time.Second, errBoom)))
		require.Zero(t, bundle.calls)
	})

	t.Run("ClassifyBeforeDefaultRules", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t, retry.ClassPermanent)
		require.Equal(t, retry.ClassPermanent, bundle.policy.Class(errBoom))
		require.Equal(t, retry.ClassPermanent, bundle.policy.Class(context.Canceled))
		require.Equal(t, retry.ClassPermanent, bundle.policy.Class(&behaviourError{infrastructure: true}))
		require.Equal(t, 3, bundle.calls)
	})

	t.Run("UnknownFallsThrough", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t, retry.ClassUnknown)
		require.Equal(t, retry.ClassTransient, bundle.policy.Class(errBoom))
		require.Equal(t, retry.ClassInfrastructure, bundle.policy.Class(context.Canceled))
		require.Equal(t, retry.ClassPermanent, bundle.policy.Class(&behaviourError{permanent: true}))
		require.Equal(t, 3, bundle.calls)
	})

	t.Run("UndefinedClassFallsThrough", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t, retry.Class(42))
		require.Equal(t, retry.ClassTransient, bundle.policy.Class(errBoom))
		require.Equal(t, 1, bundle.calls)
	})

	t.Run("ClassifySeesWholeError", func(t *testing.T) {
		t.Parallel()
		var got error
		p := retry.Policy{Classify: func(err error) retry.Class {
			got = err
			return retry.ClassUnknown
		}}
		err := fmt.Errorf("wrapped: %w", errBoom)
		p.Class(err)
		require.Equal(t, err, got)
	})
}
