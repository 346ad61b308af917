package dedup_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
)

func TestValidateEventID(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, id, reason string
	}{
		{name: "Empty", id: "", reason: "it is empty"},
		{name: "Spaces", id: "   ", reason: "it is only white space"},
		{name: "TabsAndNewlines", id: "\t\r\n", reason: "it is only white space"},
		{name: "UnicodeSpaces", id: "\u00a0\u2003", reason: "it is only white space"},
		{name: "TooLong", id: strings.Repeat("x", dedup.DefaultMaxIDLength+1), reason: "longer than the limit of 200"},
		{name: "NotUTF8", id: "evt-\xff", reason: "it is not valid UTF-8"},
		{name: "NUL", id: "evt-\x00", reason: "it contains a NUL byte"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := dedup.ValidateEventID(tt.id, 0)
			require.ErrorIs(t, err, dedup.ErrInvalidEventID)
			require.ErrorContains(t, err, tt.reason)
			var perm interface{ Permanent() bool }
			require.True(t, errors.As(err, &perm) && perm.Permanent())
		})
	}
	for _, id := range []string{"evt-1", " padded ", strings.Repeat("x", dedup.DefaultMaxIDLength), "événement"} {
		require.NoError(t, dedup.ValidateEventID(id, 0), "%q", id)
	}
}

func TestValidateConsumer(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, consumer, reason string
	}{
		{name: "Empty", consumer: "", reason: "it is empty"},
		{name: "Spaces", consumer: " \t", reason: "it is only white space"},
		{name: "NUL", consumer: "billing\x00", reason: "it contains a NUL byte"},
		{name: "NotUTF8", consumer: "billing\xc3", reason: "it is not valid UTF-8"},
		{name: "Control", consumer: "bill\x1b[31ming", reason: "it contains a control character"},
		{name: "TooLong", consumer: strings.Repeat("b", dedup.MaxConsumerLength+1), reason: "201 bytes long"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := dedup.ValidateConsumer(tt.consumer)
			require.ErrorIs(t, err, dedup.ErrInvalidConsumer)
			require.ErrorContains(t, err, tt.reason)
			require.ErrorContains(t, err, "a consumer name must be 1 to 200 bytes of valid UTF-8", "the error names the rule")
		})
	}
	for _, name := range []string{"billing", "orders.v2/invoices", "facturación", strings.Repeat("b", dedup.MaxConsumerLength)} {
		require.NoError(t, dedup.ValidateConsumer(name), "%q", name)
	}
}

// TestDerivedKeyIgnoresWhatRedeliveriesChange: the same malformed message, redelivered
// by RabbitMQ (with its redelivery flag and delivery count) or published again with a
// new trace context, keeps one derived key; other content changes it.
func TestDerivedKeyIgnoresWhatRedeliveriesChange(t *testing.T) {
	t.Parallel()
	first := message.NewMessage("u-1", []byte(`{"order": 1}`))
	first.Metadata.Set("correlation_id", "c-1")
	first.Metadata.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	again := message.NewMessage("u-2", []byte(`{"order": 1}`))
	again.Metadata.Set("correlation_id", "c-1")
	again.Metadata.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	again.Metadata.Set("_watermill_amqp_redelivered", "true")
	again.Metadata.Set("x-delivery-count", "1")
	again.Metadata.Set("published_at", "2026-12-02T10:00:00Z")
	require.Equal(t, dedup.DerivedKey(first), dedup.DerivedKey(again))

	other := message.NewMessage("u-3", []byte(`{"order": 1}`))
	other.Metadata.Set("correlation_id", "c-2")
	require.NotEqual(t, dedup.DerivedKey(first), dedup.DerivedKey(other), "other metadata is other content")
	payload := message.NewMessage("u-4", []byte(`{"order": 2}`))
	payload.Metadata.Set("correlation_id", "c-1")
	require.NotEqual(t, dedup.DerivedKey(first), dedup.DerivedKey(payload))
}
