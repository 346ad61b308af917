package transports_test

import (
	"fmt"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/idemkit/idem/transports"
)

// ExampleAMQPQuorumConfig shows the configuration, and its marshaler reading a quorum
// queue's redelivery, whose integer x-delivery-count header watermill-amqp's
// DefaultMarshaler refuses.
func ExampleAMQPQuorumConfig() {
	cfg := transports.AMQPQuorumConfig("amqp://guest:guest@127.0.0.1:5672/")
	// With it: amqp.NewPublisher(cfg, logger), amqp.NewSubscriber(cfg, logger).
	fmt.Println(cfg.Queue.Arguments["x-queue-type"], cfg.Queue.Durable, cfg.Publish.ConfirmDelivery)

	redelivery := amqp091.Delivery{
		Redelivered: true,
		Headers: amqp091.Table{
			"_watermill_message_uuid": "0f8fad5b-d9cb-469f-a165-70867728950e",
			"event_id":                "order-42",
			"x-delivery-count":        int64(1),
		},
		Body: []byte(`{"order_id":"42"}`),
	}
	msg, err := cfg.Marshaler.Unmarshal(redelivery)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(msg.Metadata.Get("event_id"), msg.Metadata.Get("x-delivery-count"))
	// Output:
	// quorum true true
	// order-42 1
}
