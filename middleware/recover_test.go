package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/retry"
)

// panicInHandler panics with v; it is a named function so that its frame can be found
// in the recovered stack.
func panicInHandler(v any) message.HandlerFunc {
	return func(*message.Message) ([]*message.Message, error) {
		panic(v)
	}
}

func TestRecover(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		msg *message.Message
	}
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		return &testBundle{msg: newMessage("evt-1", "x")}
	}

	t.Run("PanicBecomesAPanicError", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		produced, err := middleware.Recover(panicInHandler("kaboom"))(bundle.msg)
		require.Nil(t, produced)
		var pe *middleware.PanicError
		require.ErrorAs(t, err, &pe)
		require.Equal(t, "kaboom", pe.Value)
		require.NotEmpty(t, pe.Stack)
		require.Contains(t, string(pe.Stack), "panicInHandler", "the stack shows where the handler panicked")
		require.Equal(t, "handler panicked: kaboom", err.Error(), "the text carries the value, never the stack")
	})

	t.Run("ClassifiedTransient", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		_, err := middleware.Recover(panicInHandler("kaboom"))(bundle.msg)
		require.Equal(t, retry.ClassTransient, retry.Classify(err))
		require.Equal(t, retry.ClassTransient, retry.Policy{}.Class(err))
	})

	t.Run("AnErrorValueDoesNotChangeTheClass", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		for _, v := range []any{retry.Permanent(errBoom), context.Canceled, errBoom} {
			_, err := middleware.Recover(panicInHandler(v))(bundle.msg)
			var pe *middleware.PanicError
			require.ErrorAs(t, err, &pe)
			require.Equal(t, v, pe.Value)
			require.NoError(t, errors.Unwrap(err), "a panic does not unwrap to its value")
			require.Equal(t, retry.ClassTransient, retry.Classify(err), "%v", v)
		}
	})

	t.Run("OtherValues", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		_, err := middleware.Recover(panicInHandler(42))(bundle.msg)
		var pe *middleware.PanicError
		require.ErrorAs(t, err, &pe)
		require.Equal(t, 42, pe.Value)
	})

	t.Run("RuntimeErrorPanic", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		_, err := middleware.Recover(func(*message.Message) ([]*message.Message, error) {
			var m map[string]int
			m["x"] = 1 // assignment to entry in nil map
			return nil, nil
		})(bundle.msg)
		var pe *middleware.PanicError
		require.ErrorAs(t, err, &pe)
		require.ErrorContains(t, err, "nil map")
		require.Equal(t, retry.ClassTransient, retry.Classify(err))
	})

	t.Run("NoPanicPassesThrough", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		out := message.NewMessage(watermill.NewUUID(), nil)
		produced, err := middleware.Recover(func(*message.Message) ([]*message.Message, error) {
			return []*message.Message{out}, nil
		})(bundle.msg)
		require.NoError(t, err)
		require.Equal(t, []*message.Message{out}, produced)

		wrapped := fmt.Errorf("charge: %w", errBoom)
		_, err = middleware.Recover(func(*message.Message) ([]*message.Message, error) { return nil, wrapped })(bundle.msg)
		require.Same(t, wrapped, err, "a returned error is not touched")
	})
}
