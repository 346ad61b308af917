package kafka_test

import (
	"testing"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/kafka"
)

func TestSubscriberConfig(t *testing.T) {
	t.Parallel()
	cfg, err := kafka.SubscriberConfig([]string{"127.0.0.1:9092"}, "billing")
	require.NoError(t, err)
	require.Equal(t, "billing", cfg.ConsumerGroup)
	require.Equal(t, sarama.OffsetOldest, cfg.OverwriteSaramaConfig.Consumer.Offsets.Initial)
	require.Equal(t, kafka.DefaultNackResendSleep, cfg.NackResendSleep)

	_, err = kafka.SubscriberConfig(nil, "billing")
	require.ErrorContains(t, err, "broker")
	_, err = kafka.SubscriberConfig([]string{"127.0.0.1:9092"}, "")
	require.ErrorContains(t, err, "consumer group")
}

func TestPublisherConfig(t *testing.T) {
	t.Parallel()
	cfg, err := kafka.PublisherConfig([]string{"127.0.0.1:9092"})
	require.NoError(t, err)
	require.Equal(t, sarama.WaitForAll, cfg.OverwriteSaramaConfig.Producer.RequiredAcks)
	require.True(t, cfg.OverwriteSaramaConfig.Producer.Idempotent)
	_, err = kafka.PublisherConfig(nil)
	require.Error(t, err)
}

// The Kafka marshaler keeps what idem relies on: the event ID and correlation ID in
// metadata, and the payload, across a publish and a consume.
func TestMarshalerKeepsIdemMetadata(t *testing.T) {
	t.Parallel()
	cfg, err := kafka.SubscriberConfig([]string{"127.0.0.1:9092"}, "billing")
	require.NoError(t, err)
	pcfg, err := kafka.PublisherConfig([]string{"127.0.0.1:9092"})
	require.NoError(t, err)
	msg := message.NewMessage("0b6f2a4e-5f63-4a1e-9d0e-1c1f7d0f9a11", []byte(`{"order":1}`))
	msg.Metadata.Set("event_id", "evt-1")
	msg.Metadata.Set("correlation_id", "corr-1")
	pm, err := pcfg.Marshaler.Marshal("orders", msg)
	require.NoError(t, err)
	cm := &sarama.ConsumerMessage{Topic: "orders", Value: pm.Value.(sarama.ByteEncoder)}
	for _, h := range pm.Headers {
		cm.Headers = append(cm.Headers, &sarama.RecordHeader{Key: h.Key, Value: h.Value})
	}
	got, err := cfg.Unmarshaler.Unmarshal(cm)
	require.NoError(t, err)
	require.Equal(t, msg.UUID, got.UUID)
	require.Equal(t, "evt-1", got.Metadata.Get("event_id"))
	require.Equal(t, "corr-1", got.Metadata.Get("correlation_id"))
	require.Equal(t, msg.Payload, got.Payload)
}
