// Package kafka configures Watermill's Kafka subscriber for idem consumers. It is a
// module of its own, so that the Kafka client (sarama and its dependencies) reaches
// only the services that use Kafka.
//
// # What idem needs from Kafka
//
// A consumer group, so that replicas share the partitions; offsets committed only for
// messages that were acked; and no auto-commit that would move past a message still
// being processed. Watermill's subscriber acks in order within a partition, and a
// nack resends the message in place after NackResendSleep: a message idem hands back
// (deferred or retried) holds up its partition until it is acked, which is why idem
// counts attempts durably and dead-letters at MaxAttempts instead of nacking forever.
//
// Kafka has no ack deadline: give consumer.Config no AckDeadline, and bound each
// attempt with consumer.Config.HandlerTimeout instead, so that a hung handler cannot
// stall its partition. This package is tested without a server (there is none where
// idem is built); see docs/transports.md.
package kafka

import (
	"errors"
	"fmt"
	"time"

	"github.com/IBM/sarama"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
)

// DefaultNackResendSleep is how long a nacked message waits before it is resent.
const DefaultNackResendSleep = 100 * time.Millisecond

// SubscriberConfig returns a watermill-kafka subscriber configuration for an idem
// consumer: consumer group group on brokers, offsets from the oldest message on first
// start (nothing published before the group existed is skipped), offsets committed
// only after acks, and a resend delay after a nack.
func SubscriberConfig(brokers []string, group string) (wkafka.SubscriberConfig, error) {
	if len(brokers) == 0 {
		return wkafka.SubscriberConfig{}, errors.New("kafka: SubscriberConfig needs at least one broker address")
	}
	if group == "" {
		return wkafka.SubscriberConfig{}, errors.New("kafka: SubscriberConfig needs a consumer group: without one, every replica reads every partition")
	}
	sc := wkafka.DefaultSaramaSubscriberConfig()
	sc.Consumer.Offsets.Initial = sarama.OffsetOldest
	sc.Consumer.Offsets.AutoCommit.Enable = true // commits only what Watermill marked, i.e. acked messages
	cfg := wkafka.SubscriberConfig{
		Brokers:               brokers,
		ConsumerGroup:         group,
		Unmarshaler:           wkafka.DefaultMarshaler{},
		OverwriteSaramaConfig: sc,
		NackResendSleep:       DefaultNackResendSleep,
		ReconnectRetrySleep:   time.Second,
	}
	if err := sc.Validate(); err != nil {
		return wkafka.SubscriberConfig{}, fmt.Errorf("kafka: sarama config: %w", err)
	}
	return cfg, nil
}

// PublisherConfig returns a watermill-kafka publisher configuration that waits for all
// in-sync replicas to acknowledge each message, so that an acked publish survives the
// loss of a broker.
func PublisherConfig(brokers []string) (wkafka.PublisherConfig, error) {
	if len(brokers) == 0 {
		return wkafka.PublisherConfig{}, errors.New("kafka: PublisherConfig needs at least one broker address")
	}
	sc := wkafka.DefaultSaramaSyncPublisherConfig()
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Idempotent = true
	sc.Net.MaxOpenRequests = 1 // required by the idempotent producer
	if err := sc.Validate(); err != nil {
		return wkafka.PublisherConfig{}, fmt.Errorf("kafka: sarama config: %w", err)
	}
	return wkafka.PublisherConfig{Brokers: brokers, Marshaler: wkafka.DefaultMarshaler{}, OverwriteSaramaConfig: sc}, nil
}
