package postgres

import (
	"time"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
)

// DefaultSubscriberAckDeadline is watermill-sql's ack deadline when
// SubscriberConfig.AckDeadline is left nil.
const DefaultSubscriberAckDeadline = 30 * time.Second

// SubscriberAckDeadline returns the ack deadline a watermill-sql subscriber configured
// with cfg works with, for consumer.Config.AckDeadline: cfg.AckDeadline, or
// watermill-sql's default of 30s when it is nil; 0 when it is set to 0 (no deadline).
func SubscriberAckDeadline(cfg wsql.SubscriberConfig) time.Duration {
	if cfg.AckDeadline == nil {
		return DefaultSubscriberAckDeadline
	}
	return *cfg.AckDeadline
}
