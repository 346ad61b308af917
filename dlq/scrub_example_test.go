package dlq_test

import (
	"fmt"

	"github.com/idemkit/idem/dlq"
)

// ExampleRedactURL shows the credentials of URLs hidden before they are shown.
func ExampleRedactURL() {
	fmt.Println(dlq.RedactURL("postgres://app:s3cret@db:5432/orders?sslmode=disable"))
	fmt.Println(dlq.RedactURL("nats://s3cr3ttoken@nats:4222"))
	fmt.Println(dlq.RedactURL("https://api.example.com/v1/orders?page=2&access_token=t0k3n"))
	fmt.Println(dlq.RedactURL("host=db user=app password=s3cret"))
	// Output:
	// postgres://REDACTED@db:5432/orders?sslmode=disable
	// nats://REDACTED@nats:4222
	// https://api.example.com/v1/orders?page=2&access_token=REDACTED
	// host=db user=app password=REDACTED
}
