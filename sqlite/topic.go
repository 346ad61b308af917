package sqlite

import (
	"context"
	"database/sql"

	"github.com/idemkit/idem/dlq"
)

var _ dlq.TopicStore = (*Store)(nil)

// Unpublished returns pending dead letters not yet published to the dead-letter topic,
// oldest first; see dlq.TopicStore.
func (s *Store) Unpublished(ctx context.Context, limit int) ([]*dlq.DeadLetter, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT "+deadLetterColumns+
		" FROM dead_letters WHERE published_at IS NULL AND status = 'pending' ORDER BY id LIMIT ?1", limit)
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
	return s.write(ctx, "mark dead letter published", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "UPDATE dead_letters SET published_at = "+nowSQL+" WHERE id = ?1", id)
		return err
	})
}
