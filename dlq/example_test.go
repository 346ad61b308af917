package dlq_test

import (
	"errors"
	"fmt"

	"github.com/idemkit/idem/dlq"
)

// ExampleNormalizeMessage shows the parts of an error message that vary between
// occurrences of one failure replaced by placeholders.
func ExampleNormalizeMessage() {
	fmt.Println(dlq.NormalizeMessage(`order "A-17" not found after 3 attempts at 2024-05-01T10:00:00Z`))
	fmt.Println(dlq.NormalizeMessage("customer 0b7f0a7e-3c1d-4a4e-9d1f-6c2b1e0f9a11 has no address"))
	fmt.Println(dlq.NormalizeMessage("stock for sku_4411 is -2, want >= 0.5"))
	// Output:
	// order ? not found after <n> attempts at <time>
	// customer <uuid> has no address
	// stock for sku_<n> is <n>, want >= <n>
}

// ExampleScrubError shows secrets removed from error text before it is stored.
func ExampleScrubError() {
	fmt.Println(dlq.ScrubError("dial postgres://app:s3cret@db:5432/orders: connection refused", 0))
	fmt.Println(dlq.ScrubError("host=db user=app password='s3cret' dbname=orders", 0))
	fmt.Println(dlq.ScrubError("POST /hook: 401 for Authorization: Bearer eyabc.def", 0))
	fmt.Println(dlq.ScrubError("GET /v1/orders?page=2&api_key=k3y: 403", 0))
	fmt.Println(dlq.ScrubError("a very long error message", 20))
	// Output:
	// dial postgres://app:REDACTED@db:5432/orders: connection refused
	// host=db user=app password='REDACTED' dbname=orders
	// POST /hook: 401 for Authorization: Bearer REDACTED
	// GET /v1/orders?page=2&api_key=REDACTED: 403
	// a very…(truncated)
}

// ExampleFingerprint shows two failures of the same cause sharing a fingerprint.
func ExampleFingerprint() {
	a := dlq.Fingerprint("orders", fmt.Errorf("charge order %d: %w", 1001, errors.New("card declined")))
	b := dlq.Fingerprint("orders", fmt.Errorf("charge order %d: %w", 2002, errors.New("card declined")))
	c := dlq.Fingerprint("orders", errors.New("address missing"))
	fmt.Println(len(a), a == b, a == c)
	// Output: 16 true false
}

// ExampleSanitizeMetadata shows message metadata made fit for an alert.
func ExampleSanitizeMetadata() {
	md := dlq.SanitizeMetadata(map[string]string{
		"event_id":      "evt-1",
		"Authorization": "Bearer abc.def",
		"source":        "amqp://guest:guest@rabbit:5672/",
	})
	fmt.Println(md)
	// Output: map[Authorization:REDACTED event_id:evt-1 source:amqp://guest:REDACTED@rabbit:5672/]
}
