package middleware

import (
	"fmt"
	"runtime/debug"

	"github.com/ThreeDotsLabs/watermill/message"
)

// PanicError is a handler panic turned into an error. It is retried like any
// transient failure. Its Error text carries the panic value only; the stack is in
// Stack, for logs and spans, and never stored in a dead letter.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("handler panicked: %v", e.Value) }

// Unwrap returns the panic value when it is an error.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// Recover turns a panic in h into a [*PanicError], so that it is retried and
// dead-lettered like any failure instead of skipping the retry and dead-letter
// middleware on its way to the router.
func Recover(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) (produced []*message.Message, err error) {
		defer func() {
			if v := recover(); v != nil {
				produced, err = nil, &PanicError{Value: v, Stack: debug.Stack()}
			}
		}()
		return h(msg)
	}
}
