package postgres_test

import (
	"testing"
	"time"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/postgres"
)

func TestSubscriberAckDeadline(t *testing.T) {
	t.Parallel()
	require.Equal(t, 30*time.Second, postgres.SubscriberAckDeadline(wsql.SubscriberConfig{}))
	d := 5 * time.Second
	require.Equal(t, d, postgres.SubscriberAckDeadline(wsql.SubscriberConfig{AckDeadline: &d}))
	zero := time.Duration(0)
	require.Zero(t, postgres.SubscriberAckDeadline(wsql.SubscriberConfig{AckDeadline: &zero}))
}
