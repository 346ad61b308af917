package postgres

import (
	"context"

	"github.com/idemkit/idem/dlq"
)

var _ dlq.TopicStore = (*Store)(nil)

// Unpublished returns pending dead letters not yet published to the dead-letter topic,
// oldest first; see dlq.TopicStore.
func (s *Store) Unpublished(ctx context.Context, limit int) ([]*dlq.DeadLetter, error) {
	rows, err := s.pool.Query(ctx, "SELECT "+deadLetterColumns+" FROM "+s.schema+
		".dead_letters WHERE published_at IS NULL AND status = 'pending' ORDER BY id LIMIT $1", limit)
	if err != nil {
		return nil, &storeError{Op: "read unpublished dead letters", Err: err}
	}
	defer rows.Close()
	var out []*dlq.DeadLetter
	for rows.Next() {
		d, err := scanDeadLetter(rows)
		if err != nil {
			return nil, &storeError{Op: "read unpublished dead letters", Err: err}
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, &storeError{Op: "read unpublished dead letters", Err: err}
	}
	return out, nil
}

// MarkPublished records that dead letter id was published; see dlq.TopicStore.
func (s *Store) MarkPublished(ctx context.Context, id int64) error {
	if _, err := s.pool.Exec(ctx, "UPDATE "+s.schema+".dead_letters SET published_at = now() WHERE id = $1", id); err != nil {
		return &storeError{Op: "mark dead letter published", Err: err}
	}
	return nil
}
