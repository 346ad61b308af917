package middleware

import (
	"fmt"
	"runtime/debug"

	"github.com/ThreeDotsLabs/watermill/message"
)

// PanicError is a handler panic turned into an error. It is always retried like a
// transient failure, whatever the panic value (a panic is a bug, never a statement of
// intent): it does not unwrap to the value, which stays in Value. Its Error text
// carries the panic value only; the stack is in Stack, for logs and spans, and never
// stored in a dead letter.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("handler panicked: %v", e.Value) }

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
