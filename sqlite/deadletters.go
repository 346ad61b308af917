package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/idemkit/idem/dlq"
)

const deadLetterColumns = `id, consumer, event_id, topic, handler, message_uuid, payload, metadata, reason, error,
    fingerprint, attempts, correlation_id, trace_id, span_id, host, event_type, event_version, history,
    status, count, first_failed_at, last_failed_at, dead_lettered_at`

func scanDeadLetter(row interface{ Scan(dest ...any) error }) (*dlq.DeadLetter, error) {
	var d dlq.DeadLetter
	var md, reason, status, history string
	err := row.Scan(&d.ID, &d.Consumer, &d.EventID, &d.Topic, &d.Handler, &d.MessageUUID, &d.Payload, &md, &reason, &d.Error,
		&d.Fingerprint, &d.Attempts, &d.CorrelationID, &d.TraceID, &d.SpanID, &d.Host, &d.EventType, &d.EventVersion, &history,
		&status, &d.Count,
		timeText{&d.FirstFailedAt}, timeText{&d.LastFailedAt}, timeText{&d.DeadLetteredAt})
	if err != nil {
		return nil, err
	}
	d.Reason, d.Status = dlq.Reason(reason), dlq.Status(status)
	if d.Metadata, err = dlq.DecodeMetadata([]byte(md)); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(history), &d.History); err != nil {
		return nil, fmt.Errorf("sqlite: decode dead letter history: %w", err)
	}
	return &d, nil
}

// DeadLetter returns the dead letter of (consumer, eventID), or an error wrapping
// dlq.ErrNotFound. It reads without waiting for writers.
func (s *Store) DeadLetter(ctx context.Context, consumer, eventID string) (*dlq.DeadLetter, error) {
	row := s.db.QueryRowContext(ctx, "SELECT "+deadLetterColumns+" FROM dead_letters WHERE consumer = ?1 AND event_id = ?2", consumer, eventID)
	d, err := scanDeadLetter(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlite: dead letter %s/%s: %w", consumer, eventID, dlq.ErrNotFound)
	}
	if err != nil {
		return nil, &storeError{Op: "read dead letter " + consumer + "/" + eventID, Err: err}
	}
	return d, nil
}
