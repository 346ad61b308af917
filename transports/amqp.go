package transports

import (
	"fmt"

	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// AMQPQuorumConfig returns watermill-amqp's configuration for RabbitMQ made safe for
// idem: one durable quorum queue per topic (x-queue-type "quorum"; replicated, survives
// a node loss), persistent messages, a prefetch of 1, publisher confirms (Publish
// returns once the broker has the message), and a marshaler whose PreprocessDelivery is
// AMQPStringHeaders, so that redeliveries reach the handler.
//
// It is amqp.NewDurableQueueConfig(url) with those changes; adjust the result as
// usual (Connection.AmqpConfig, Consume.Qos, Queue.GenerateName, …). Keep
// Consume.NoRequeueOnNack off: idem bounds attempts and dead-letters itself.
//
// The queue must exist before the first publish (with the default exchange, a message
// for a missing queue is dropped, and still confirmed): declare it at deploy time, or
// call the subscriber's SubscribeInitialize(topic) before publishing.
func AMQPQuorumConfig(url string) amqp.Config {
	cfg := amqp.NewDurableQueueConfig(url)
	cfg.Queue.Arguments = amqp091.Table{"x-queue-type": "quorum"}
	cfg.Publish.ConfirmDelivery = true
	cfg.Marshaler = amqp.DefaultMarshaler{PreprocessDelivery: AMQPStringHeaders}
	return cfg
}

// AMQPStringHeaders returns d with every header that is not a string turned into one
// (fmt.Sprint). Use it as amqp.DefaultMarshaler.PreprocessDelivery when you build your
// own configuration: a quorum queue adds an integer x-delivery-count header to every
// redelivery (and dead-lettering adds x-death), watermill-amqp's DefaultMarshaler
// refuses headers that are not strings, and the delivery is nacked and redelivered
// forever without reaching the handler (watermill-amqp issue #65). The header then
// reaches the handler as message metadata, "1" on the first redelivery. It does not
// modify d's own header table and is safe for concurrent use.
func AMQPStringHeaders(d amqp091.Delivery) amqp091.Delivery {
	headers := make(amqp091.Table, len(d.Headers))
	for k, v := range d.Headers {
		if s, ok := v.(string); ok {
			headers[k] = s
		} else {
			headers[k] = fmt.Sprint(v)
		}
	}
	d.Headers = headers
	return d
}
