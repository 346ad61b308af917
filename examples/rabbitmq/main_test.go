package main

import (
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/examples/internal/demo"
	"github.com/idemkit/idem/internal/testbroker"
)

func TestRabbitMQExample(t *testing.T) {
	t.Parallel()
	url := testbroker.AMQPURL(t)
	demo.RunOnBothStores(t, run, func(queue string) []string {
		return []string{"-amqp-url", url, "-queue", queue}
	}, func(t *testing.T, queue, out string) {
		require.Contains(t, out, "queue "+queue+" deleted (0 messages left in it)\n")

		conn, err := amqp091.Dial(url)
		require.NoError(t, err)
		defer conn.Close()
		ch, err := conn.Channel()
		require.NoError(t, err)
		_, err = ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		var amqpErr *amqp091.Error
		require.ErrorAs(t, err, &amqpErr, "the queue is gone")
		require.Equal(t, amqp091.NotFound, amqpErr.Code)
	})
}
