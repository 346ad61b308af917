package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/idemkit/idem/dlq"
)

var _ dlq.Reviewer = (*Store)(nil)

// timeFormat is how the store keeps times: UTC text with milliseconds, which sorts and
// compares as text.
const timeFormat = "2006-01-02T15:04:05.000Z"

func timeParam(t time.Time) string { return t.UTC().Format(timeFormat) }

type scanner interface {
	Scan(dest ...any) error
}

// withExtra scans the columns of deadLetterColumns into what scanDeadLetter expects,
// then the extra columns that follow them into extra.
type withExtra struct {
	row   scanner
	extra []any
}

func (r withExtra) Scan(dest ...any) error { return r.row.Scan(append(dest, r.extra...)...) }

const recordColumns = deadLetterColumns + `, replay_count, updated_at`

func scanRecord(row scanner) (*dlq.Record, error) {
	var rec dlq.Record
	d, err := scanDeadLetter(withExtra{row, []any{&rec.ReplayCount, timeText{&rec.UpdatedAt}}})
	if err != nil {
		return nil, err
	}
	rec.DeadLetter = *d
	return &rec, nil
}

// jsonIDs encodes ids as a JSON array, for json_each.
func jsonIDs(ids []int64) string {
	b, _ := json.Marshal(ids) // a []int64 always encodes
	return string(b)
}

// filterSQL returns the WHERE clause of f, its arguments appended to args. paging adds
// f.AfterID.
func filterSQL(f dlq.Filter, args []any, paging bool) (string, []any) {
	var conds []string
	add := func(cond string, v any) {
		args = append(args, v)
		conds = append(conds, strings.ReplaceAll(cond, "?N", "?"+strconv.Itoa(len(args))))
	}
	if len(f.IDs) > 0 {
		add("id IN (SELECT value FROM json_each(?N))", jsonIDs(f.IDs))
	}
	if f.Consumer != "" {
		add("consumer = ?N", f.Consumer)
	}
	if f.Topic != "" {
		add("topic = ?N", f.Topic)
	}
	if f.Fingerprint != "" {
		add("fingerprint = ?N", f.Fingerprint)
	}
	if f.EventType != "" {
		add("event_type = ?N", f.EventType)
	}
	if f.Status != "" {
		add("status = ?N", string(f.Status))
	}
	if !f.Since.IsZero() {
		add("dead_lettered_at >= ?N", timeParam(f.Since))
	}
	if !f.Until.IsZero() {
		add("dead_lettered_at < ?N", timeParam(f.Until))
	}
	if paging && f.AfterID > 0 {
		add("id > ?N", f.AfterID)
	}
	if len(conds) == 0 {
		return "", args
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

// List returns the dead letters f selects, in ID order; see dlq.Reviewer. It reads
// without waiting for writers.
func (s *Store) List(ctx context.Context, f dlq.Filter) ([]*dlq.Record, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	where, args := filterSQL(f, nil, true)
	q := "SELECT " + recordColumns + " FROM dead_letters" + where + " ORDER BY id"
	if f.Limit > 0 {
		args = append(args, f.Limit)
		q += " LIMIT ?" + strconv.Itoa(len(args))
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, &storeError{Op: "list dead letters", Err: err}
	}
	defer rows.Close()
	var out []*dlq.Record
	for rows.Next() {
		rec, err := scanRecord(rows)
		if err != nil {
			return nil, &storeError{Op: "list dead letters", Err: err}
		}
		out = append(out, rec)
	}
	if err := rows.Err(); err != nil {
		return nil, &storeError{Op: "list dead letters", Err: err}
	}
	return out, nil
}

// Get returns the dead letter with the given ID, or an error wrapping dlq.ErrNotFound.
func (s *Store) Get(ctx context.Context, id int64) (*dlq.Record, error) {
	row := s.db.QueryRowContext(ctx, "SELECT "+recordColumns+`, (SELECT count(*) FROM parked_events AS pe
    JOIN entity_marks AS m ON pe.consumer = m.consumer AND pe.entity_id = m.entity_id
    WHERE m.consumer = d.consumer AND m.blocked_by = d.event_id) FROM dead_letters AS d WHERE id = ?1`, id)
	var parked int
	rec, err := scanRecord(withExtra{row, []any{&parked}})
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlite: dead letter %d: %w", id, dlq.ErrNotFound)
	}
	if err != nil {
		return nil, &storeError{Op: "read dead letter " + strconv.FormatInt(id, 10), Err: err}
	}
	rec.Parked = parked
	return rec, nil
}

// Report groups the dead letters f selects by consumer, topic and fingerprint; see
// dlq.Reviewer. It reads the selected rows once, and counts the parked events once,
// by the dead letter they are parked behind, without waiting for writers.
func (s *Store) Report(ctx context.Context, f dlq.Filter) ([]dlq.Group, error) {
	f.AfterID, f.Limit = 0, 0
	if err := f.Validate(); err != nil {
		return nil, err
	}
	where, args := filterSQL(f, []any{dlq.GroupSamples}, false)
	// The filter's columns are unqualified: the parked counts' columns are named
	// apart from the dead letters'.
	q := `SELECT consumer, topic, fingerprint, count(*), sum(parked), min(dead_lettered_at), max(dead_lettered_at),
    max(error) FILTER (WHERE newest = 1),
    json_group_array(id ORDER BY id) FILTER (WHERE oldest <= ?1),
    json_group_array(event_id ORDER BY id) FILTER (WHERE oldest <= ?1)
FROM (
    SELECT id, consumer, topic, fingerprint, event_id, error, dead_lettered_at, coalesce(p.parked, 0) AS parked,
        row_number() OVER (PARTITION BY consumer, topic, fingerprint ORDER BY dead_lettered_at DESC, id DESC) AS newest,
        row_number() OVER (PARTITION BY consumer, topic, fingerprint ORDER BY id) AS oldest
    FROM dead_letters AS dl
    LEFT JOIN (
        SELECT m.consumer AS blocked_consumer, m.blocked_by, count(*) AS parked
        FROM parked_events AS pe
        JOIN entity_marks AS m ON pe.consumer = m.consumer AND pe.entity_id = m.entity_id
        WHERE m.blocked_by IS NOT NULL
        GROUP BY m.consumer, m.blocked_by
    ) AS p ON p.blocked_consumer = dl.consumer AND p.blocked_by = dl.event_id AND dl.status = 'pending'` + where + `
) AS d
GROUP BY consumer, topic, fingerprint
ORDER BY count(*) DESC, min(dead_lettered_at), consumer, topic, fingerprint`
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, &storeError{Op: "report dead letters", Err: err}
	}
	defer rows.Close()
	var out []dlq.Group
	for rows.Next() {
		var g dlq.Group
		var ids, eventIDs string
		if err := rows.Scan(&g.Consumer, &g.Topic, &g.Fingerprint, &g.Count, &g.Parked, timeText{&g.FirstSeen}, timeText{&g.LastSeen},
			&g.SampleError, &ids, &eventIDs); err != nil {
			return nil, &storeError{Op: "report dead letters", Err: err}
		}
		if err := json.Unmarshal([]byte(ids), &g.SampleIDs); err != nil {
			return nil, fmt.Errorf("sqlite: report dead letters: %w", err)
		}
		if err := json.Unmarshal([]byte(eventIDs), &g.SampleEventIDs); err != nil {
			return nil, fmt.Errorf("sqlite: report dead letters: %w", err)
		}
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		return nil, &storeError{Op: "report dead letters", Err: err}
	}
	return out, nil
}

// MarkReplayed records that the dead letters c.IDs were republished; see dlq.Reviewer.
func (s *Store) MarkReplayed(ctx context.Context, c dlq.Change) (dlq.AuditEntry, error) {
	return s.change(ctx, dlq.ActionReplay, c, nil, s.markReplayed(ctx, c))
}

// Replay forgets the failed attempts counted for the events of the dead letters c.IDs,
// calls publish, and records the replay as MarkReplayed does, in one write
// transaction; see dlq.Reviewer. The store's other writes, and other processes', wait
// while publish runs.
func (s *Store) Replay(ctx context.Context, c dlq.Change, publish func() error) (dlq.AuditEntry, error) {
	var published error
	entry, err := s.change(ctx, dlq.ActionReplay, c, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM attempts WHERE (consumer, event_id) IN (
    SELECT consumer, event_id FROM dead_letters WHERE id IN (SELECT value FROM json_each(?1)))`, jsonIDs(c.IDs)); err != nil {
			return fmt.Errorf("reset attempts: %w", err)
		}
		// The crash guard's count too: the replayed copy runs the handler again.
		if _, err := tx.ExecContext(ctx, `DELETE FROM started WHERE (consumer, event_id) IN (
    SELECT consumer, event_id FROM dead_letters WHERE id IN (SELECT value FROM json_each(?1)))`, jsonIDs(c.IDs)); err != nil {
			return fmt.Errorf("reset the crash guard's counts: %w", err)
		}
		published = publish()
		return published
	}, s.markReplayed(ctx, c))
	if published != nil {
		return dlq.AuditEntry{}, published
	}
	return entry, err
}

func (s *Store) markReplayed(ctx context.Context, c dlq.Change) func(tx *sql.Tx) ([]int64, error) {
	return func(tx *sql.Tx) ([]int64, error) {
		var ids []int64
		for _, id := range c.IDs {
			seen := -1
			if n, ok := c.Counts[id]; ok {
				seen = n
			}
			var got int64
			err := tx.QueryRowContext(ctx, `UPDATE dead_letters SET
    replay_count = replay_count + 1,
    status       = CASE WHEN ?2 < 0 OR count = ?2 THEN 'replayed' ELSE status END,
    updated_at   = `+nowSQL+`
WHERE id = ?1
RETURNING id`, id, seen).Scan(&got)
			if errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if err != nil {
				return nil, err
			}
			ids = append(ids, got)
		}
		return ids, nil
	}
}

// Discard sets the status of the dead letters c.IDs to discarded, with c.Reason; see
// dlq.Reviewer.
func (s *Store) Discard(ctx context.Context, c dlq.Change) (dlq.AuditEntry, error) {
	return s.change(ctx, dlq.ActionDiscard, c, nil, s.setStatus(ctx, dlq.StatusDiscarded, c.IDs))
}

// Resolve sets the status of the dead letters c.IDs to resolved; see dlq.Reviewer.
func (s *Store) Resolve(ctx context.Context, c dlq.Change) (dlq.AuditEntry, error) {
	return s.change(ctx, dlq.ActionResolve, c, nil, s.setStatus(ctx, dlq.StatusResolved, c.IDs))
}

func (s *Store) setStatus(ctx context.Context, st dlq.Status, ids []int64) func(tx *sql.Tx) ([]int64, error) {
	return func(tx *sql.Tx) ([]int64, error) {
		rows, err := tx.QueryContext(ctx, `UPDATE dead_letters SET status = ?1, updated_at = `+nowSQL+`
WHERE id IN (SELECT value FROM json_each(?2)) AND status <> ?1
RETURNING id`, string(st), jsonIDs(ids))
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		var out []int64
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				return nil, err
			}
			out = append(out, id)
		}
		return out, rows.Err()
	}
}

// change runs before, when not nil, then update, which returns the IDs it changed, and
// writes the audit entry listing them, in one write transaction.
func (s *Store) change(ctx context.Context, a dlq.Action, c dlq.Change, before func(tx *sql.Tx) error, update func(tx *sql.Tx) ([]int64, error)) (dlq.AuditEntry, error) {
	if err := c.Validate(a); err != nil {
		return dlq.AuditEntry{}, err
	}
	var entry dlq.AuditEntry
	err := s.write(ctx, string(a)+" dead letters", func(tx *sql.Tx) error {
		if before != nil {
			if err := before(tx); err != nil {
				return err
			}
		}
		ids, err := update(tx)
		if err != nil {
			return err
		}
		slices.Sort(ids)
		selector, err := s.releaseParked(ctx, tx, a, c, ids)
		if err != nil {
			return err
		}
		entry = dlq.AuditEntry{
			Action: a, OSUser: c.Actor.OSUser, Host: c.Actor.Host,
			Selector: selector, Reason: c.Reason, DeadLetterIDs: ids,
		}
		if len(ids) == 0 {
			return nil
		}
		return tx.QueryRowContext(ctx, `INSERT INTO dead_letter_audit
    (action, os_user, host, selector, reason, dead_letter_ids)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
RETURNING id, at, db_role`, string(a), c.Actor.OSUser, c.Actor.Host, selector, c.Reason, jsonIDs(ids)).
			Scan(&entry.ID, timeText{&entry.At}, &entry.DBRole)
	})
	if err != nil {
		return dlq.AuditEntry{}, err
	}
	return entry, nil
}

// Audit returns the audit entries f selects, in ID order; see dlq.Reviewer. It reads
// without waiting for writers.
func (s *Store) Audit(ctx context.Context, f dlq.AuditFilter) ([]dlq.AuditEntry, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	var conds []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		conds = append(conds, strings.ReplaceAll(cond, "?N", "?"+strconv.Itoa(len(args))))
	}
	if f.Action != "" {
		add("action = ?N", string(f.Action))
	}
	if f.DeadLetterID != 0 {
		add("EXISTS (SELECT 1 FROM json_each(dead_letter_ids) WHERE value = ?N)", f.DeadLetterID)
	}
	if !f.Since.IsZero() {
		add("at >= ?N", timeParam(f.Since))
	}
	if !f.Until.IsZero() {
		add("at < ?N", timeParam(f.Until))
	}
	if f.AfterID > 0 {
		add("id > ?N", f.AfterID)
	}
	q := "SELECT id, at, action, os_user, host, db_role, selector, reason, dead_letter_ids FROM dead_letter_audit"
	if len(conds) > 0 {
		q += " WHERE " + strings.Join(conds, " AND ")
	}
	q += " ORDER BY id"
	if f.Limit > 0 {
		args = append(args, f.Limit)
		q += " LIMIT ?" + strconv.Itoa(len(args))
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, &storeError{Op: "read audit", Err: err}
	}
	defer rows.Close()
	var out []dlq.AuditEntry
	for rows.Next() {
		var e dlq.AuditEntry
		var action, ids string
		if err := rows.Scan(&e.ID, timeText{&e.At}, &action, &e.OSUser, &e.Host, &e.DBRole, &e.Selector, &e.Reason, &ids); err != nil {
			return nil, &storeError{Op: "read audit", Err: err}
		}
		e.Action = dlq.Action(action)
		if err := json.Unmarshal([]byte(ids), &e.DeadLetterIDs); err != nil {
			return nil, fmt.Errorf("sqlite: read audit: %w", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, &storeError{Op: "read audit", Err: err}
	}
	return out, nil
}

// releaseParked lifts the quarantine of the entities blocked by the dead letters ids
// that are no longer pending, in tx: replaying releases the parked events, and leaves
// the mark for the replayed event to move; resolving releases them and moves the mark
// past the resolved event; discarding does what c.Parked says, and requires it when
// events are parked. Released events move to the delayed retries, due at once, one
// millisecond apart in sequence order. It returns the selector the audit entry
// records, with what was done to parked events appended.
func (s *Store) releaseParked(ctx context.Context, tx *sql.Tx, a dlq.Action, c dlq.Change, ids []int64) (string, error) {
	if len(ids) == 0 {
		return c.Selector, nil
	}
	type blocked struct{ consumer, entity string }
	rows, err := tx.QueryContext(ctx, `SELECT m.consumer, m.entity_id FROM entity_marks AS m
JOIN dead_letters AS d ON m.consumer = d.consumer AND m.blocked_by = d.event_id
WHERE d.id IN (SELECT value FROM json_each(?1)) AND d.status <> 'pending'`, jsonIDs(ids))
	if err != nil {
		return "", fmt.Errorf("find quarantines: %w", err)
	}
	var found []blocked
	for rows.Next() {
		var b blocked
		if err := rows.Scan(&b.consumer, &b.entity); err != nil {
			_ = rows.Close()
			return "", fmt.Errorf("find quarantines: %w", err)
		}
		found = append(found, b)
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("find quarantines: %w", err)
	}
	if len(found) == 0 {
		return c.Selector, nil
	}
	parked := 0
	for _, b := range found {
		var n int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM parked_events WHERE consumer = ?1 AND entity_id = ?2", b.consumer, b.entity).Scan(&n); err != nil {
			return "", fmt.Errorf("count parked events: %w", err)
		}
		parked += n
	}
	action := dlq.ParkedRelease
	if a == dlq.ActionDiscard {
		if parked > 0 && c.Parked == "" {
			return "", dlq.ErrParkedChoiceRequired
		}
		action = cmp.Or(c.Parked, dlq.ParkedRelease)
	}
	for _, b := range found {
		move := a != dlq.ActionReplay
		if _, err := tx.ExecContext(ctx, `UPDATE entity_marks SET
    seq         = CASE WHEN ?3 THEN max(seq, blocked_seq) ELSE seq END,
    gap_since   = CASE WHEN ?3 THEN NULL ELSE gap_since END,
    blocked_by  = NULL,
    blocked_seq = NULL,
    updated_at  = `+nowSQL+`
WHERE consumer = ?1 AND entity_id = ?2`, b.consumer, b.entity, move); err != nil {
			return "", fmt.Errorf("lift quarantine: %w", err)
		}
		if action == dlq.ParkedDiscard {
			if _, err := tx.ExecContext(ctx, `UPDATE entity_marks SET gap_since = NULL,
    seq = max(seq, coalesce((SELECT max(seq) FROM parked_events WHERE consumer = ?1 AND entity_id = ?2), 0))
WHERE consumer = ?1 AND entity_id = ?2`, b.consumer, b.entity); err != nil {
				return "", fmt.Errorf("discard parked events: %w", err)
			}
		} else if _, err := tx.ExecContext(ctx, `INSERT INTO delayed (consumer, event_id, topic, payload, metadata, due_at, parked_at)
SELECT consumer, event_id, topic, payload, metadata,
    strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+' || ((row_number() OVER (ORDER BY seq) - 1) / 1000.0) || ' seconds'), `+nowSQL+`
FROM parked_events WHERE consumer = ?1 AND entity_id = ?2 ORDER BY seq
ON CONFLICT (consumer, event_id) DO NOTHING`, b.consumer, b.entity); err != nil {
			return "", fmt.Errorf("release parked events: %w", err)
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM parked_events WHERE consumer = ?1 AND entity_id = ?2", b.consumer, b.entity); err != nil {
			return "", fmt.Errorf("release parked events: %w", err)
		}
	}
	return strings.TrimSpace(c.Selector + " parked=" + string(action) + ":" + strconv.Itoa(parked)), nil
}
