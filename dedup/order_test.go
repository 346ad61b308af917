package dedup_test

import (
	"context"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/retry"
)

func TestEntityFromMetadata(t *testing.T) {
	t.Parallel()
	msg := func(md map[string]string) *message.Message {
		m := message.NewMessage("u", nil)
		for k, v := range md {
			m.Metadata.Set(k, v)
		}
		return m
	}

	t.Run("Reads", func(t *testing.T) {
		t.Parallel()
		e, err := dedup.EntityFromMetadata("", "")(msg(map[string]string{"entity_id": "order:42", "entity_seq": "7"}))
		require.NoError(t, err)
		require.Equal(t, dedup.Entity{ID: "order:42", Seq: 7}, e)
		e, err = dedup.EntityFromMetadata("order", "version")(msg(map[string]string{"order": "42", "version": "9223372036854775807"}))
		require.NoError(t, err)
		require.Equal(t, dedup.Entity{ID: "42", Seq: 1<<63 - 1}, e)
	})

	for _, tt := range []struct {
		name, id, seq, reason string
	}{
		{name: "NoID", id: "", seq: "1", reason: "entity ID (metadata entity_id) \"\": it is empty"},
		{name: "BlankID", id: " ", seq: "1", reason: "it is only white space"},
		{name: "LongID", id: strings.Repeat("x", 201), seq: "1", reason: "longer than the limit of 200"},
		{name: "NULInID", id: "a\x00", seq: "1", reason: "it contains a NUL byte"},
		{name: "NoSeq", id: "a", seq: "", reason: "entity metadata entity_seq \"\": it is not a positive decimal integer"},
		{name: "Zero", id: "a", seq: "0", reason: "not a positive decimal integer"},
		{name: "Negative", id: "a", seq: "-1", reason: "not a positive decimal integer"},
		{name: "Text", id: "a", seq: "1e3", reason: "not a positive decimal integer"},
		{name: "Spaces", id: "a", seq: "1 ", reason: "not a positive decimal integer"},
		{name: "Overflow", id: "a", seq: "9223372036854775808", reason: "not a positive decimal integer"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := dedup.EntityFromMetadata("", "")(msg(map[string]string{"entity_id": tt.id, "entity_seq": tt.seq}))
			require.ErrorIs(t, err, dedup.ErrInvalidEntity)
			require.ErrorContains(t, err, tt.reason)
			require.Equal(t, retry.ClassPermanent, retry.Classify(err), "never retried")
		})
	}
}

func TestValidateEntity(t *testing.T) {
	t.Parallel()
	require.NoError(t, dedup.ValidateEntity(dedup.Entity{ID: "a", Seq: 1}))
	require.ErrorIs(t, dedup.ValidateEntity(dedup.Entity{ID: "a", Seq: 0}), dedup.ErrInvalidEntity)
	require.ErrorIs(t, dedup.ValidateEntity(dedup.Entity{ID: "", Seq: 1}), dedup.ErrInvalidEntity)
}

func TestOrderingVocabulary(t *testing.T) {
	t.Parallel()
	require.Equal(t, "stale", dedup.Stale.String())
	require.Equal(t, "apply", dedup.GapApply.String())
	require.Equal(t, "strict", dedup.GapStrict.String())
	gap := &dedup.GapError{Key: dedup.Key{Consumer: "c", EventID: "e"}, Entity: dedup.Entity{ID: "a", Seq: 3}, Mark: 1}
	require.Equal(t, retry.ClassInfrastructure, retry.Classify(gap), "waiting is not the message's fault")
	require.ErrorIs(t, gap, dedup.ErrGap)
	require.ErrorIs(t, &dedup.StaleEventError{}, dedup.ErrStaleEvent)

	ctx := dedup.WithEntity(context.Background(), dedup.Entity{ID: "a", Seq: 2}, dedup.GapStrict)
	e, p, ok := dedup.EntityFrom(ctx)
	require.True(t, ok)
	require.Equal(t, dedup.Entity{ID: "a", Seq: 2}, e)
	require.Equal(t, dedup.GapStrict, p)
	_, _, ok = dedup.EntityFrom(context.Background())
	require.False(t, ok)
}
