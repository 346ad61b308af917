package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/idemkit/idem/dlq"
)

var _ dlq.Reviewer = (*Store)(nil)

// scanner is what pgx.Row and pgx.Rows have in common.
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
	d, err := scanDeadLetter(withExtra{row, []any{&rec.ReplayCount, &rec.UpdatedAt}})
	if err != nil {
		return nil, err
	}
	rec.DeadLetter = *d
	return &rec, nil
}

// filterSQL returns the WHERE clause of f, its arguments appended to args. paging adds
// f.AfterID.
func filterSQL(f dlq.Filter, args []any, paging bool) (string, []any) {
	var conds []string
	add := func(cond string, v any) {
		args = append(args, v)
		conds = append(conds, strings.ReplaceAll(cond, "$?", "$"+strconv.Itoa(len(args))))
	}
	if len(f.IDs) > 0 {
		add("id = ANY($?::bigint[])", f.IDs)
	}
	if f.Consumer != "" {
		add("consumer = $?", f.Consumer)
	}
	if f.Topic != "" {
		add("topic = $?", f.Topic)
	}
	if f.Fingerprint != "" {
		add("fingerprint = $?", f.Fingerprint)
	}
	if f.EventType != "" {
		add("event_type = $?", f.EventType)
	}
	if f.Status != "" {
		add("status = $?", string(f.Status))
	}
	if !f.Since.IsZero() {
		add("dead_lettered_at >= $?", f.Since)
	}
	if !f.Until.IsZero() {
		add("dead_lettered_at < $?", f.Until)
	}
	if paging && f.AfterID > 0 {
		add("id > $?", f.AfterID)
	}
	if len(conds) == 0 {
		return "", args
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

// List returns the dead letters f selects, in ID order; see dlq.Reviewer.
func (s *Store) List(ctx context.Context, f dlq.Filter) ([]*dlq.Record, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	where, args := filterSQL(f, nil, true)
	q := "SELECT " + recordColumns + " FROM " + s.schema + ".dead_letters" + where + " ORDER BY id"
	if f.Limit > 0 {
		args = append(args, f.Limit)
		q += " LIMIT $" + strconv.Itoa(len(args))
	}
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("postgres: list dead letters: %w", err)
	}
	defer rows.Close()
	var out []*dlq.Record
	for rows.Next() {
		rec, err := scanRecord(rows)
		if err != nil {
			return nil, fmt.Errorf("postgres: list dead letters: %w", err)
		}
		out = append(out, rec)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: list dead letters: %w", err)
	}
	return out, nil
}

// Get returns the dead letter with the given ID, or an error wrapping dlq.ErrNotFound.
func (s *Store) Get(ctx context.Context, id int64) (*dlq.Record, error) {
	row := s.pool.QueryRow(ctx, "SELECT "+recordColumns+`, (SELECT count(*) FROM `+s.schema+`.parked_events AS pe
    JOIN `+s.schema+`.entity_marks AS m ON pe.consumer = m.consumer AND pe.entity_id = m.entity_id
    WHERE m.consumer = d.consumer AND m.blocked_by = d.event_id) FROM `+s.schema+".dead_letters AS d WHERE id = $1", id)
	var parked int
	rec, err := scanRecord(withExtra{row, []any{&parked}})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("postgres: dead letter %d: %w", id, dlq.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: read dead letter %d: %w", id, err)
	}
	rec.Parked = parked
	return rec, nil
}

// Report groups the dead letters f selects by consumer, topic and fingerprint; see
// dlq.Reviewer. It reads the selected rows once, and counts the parked events once,
// by the dead letter they are parked behind.
func (s *Store) Report(ctx context.Context, f dlq.Filter) ([]dlq.Group, error) {
	f.AfterID, f.Limit = 0, 0
	if err := f.Validate(); err != nil {
		return nil, err
	}
	where, args := filterSQL(f, []any{dlq.GroupSamples}, false)
	// The filter's columns are unqualified: the parked counts' columns are named
	// apart from the dead letters'.
	q := `SELECT consumer, topic, fingerprint, count(*), sum(parked)::bigint, min(dead_lettered_at), max(dead_lettered_at),
    max(error) FILTER (WHERE newest = 1),
    array_agg(id ORDER BY id) FILTER (WHERE oldest <= $1),
    array_agg(event_id ORDER BY id) FILTER (WHERE oldest <= $1)
FROM (
    SELECT id, consumer, topic, fingerprint, event_id, error, dead_lettered_at, coalesce(p.parked, 0) AS parked,
        row_number() OVER (PARTITION BY consumer, topic, fingerprint ORDER BY dead_lettered_at DESC, id DESC) AS newest,
        row_number() OVER (PARTITION BY consumer, topic, fingerprint ORDER BY id) AS oldest
    FROM ` + s.schema + `.dead_letters AS dl
    LEFT JOIN (
        SELECT m.consumer AS blocked_consumer, m.blocked_by, count(*) AS parked
        FROM ` + s.schema + `.parked_events AS pe
        JOIN ` + s.schema + `.entity_marks AS m ON pe.consumer = m.consumer AND pe.entity_id = m.entity_id
        WHERE m.blocked_by IS NOT NULL
        GROUP BY m.consumer, m.blocked_by
    ) AS p ON p.blocked_consumer = dl.consumer AND p.blocked_by = dl.event_id AND dl.status = 'pending'` + where + `
) AS d
GROUP BY consumer, topic, fingerprint
ORDER BY count(*) DESC, min(dead_lettered_at), consumer, topic, fingerprint`
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("postgres: report dead letters: %w", err)
	}
	defer rows.Close()
	var out []dlq.Group
	for rows.Next() {
		var g dlq.Group
		if err := rows.Scan(&g.Consumer, &g.Topic, &g.Fingerprint, &g.Count, &g.Parked, &g.FirstSeen, &g.LastSeen,
			&g.SampleError, &g.SampleIDs, &g.SampleEventIDs); err != nil {
			return nil, fmt.Errorf("postgres: report dead letters: %w", err)
		}
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: report dead letters: %w", err)
	}
	return out, nil
}

// MarkReplayed records that the dead letters c.IDs were republished; see dlq.Reviewer.
func (s *Store) MarkReplayed(ctx context.Context, c dlq.Change) (dlq.AuditEntry, error) {
	return s.change(ctx, dlq.ActionReplay, c, nil, s.markReplayedSQL(), c.IDs, seenCounts(c))
}

// Replay forgets the failed attempts counted for the events of the dead letters c.IDs,
// calls publish, and records the replay as MarkReplayed does, in one transaction; see
// dlq.Reviewer. The DELETE of the attempt counts holds their rows until the commit: a
// consumer counting a failure of the replayed copy meanwhile waits, then counts from
// zero.
func (s *Store) Replay(ctx context.Context, c dlq.Change, publish func() error) (dlq.AuditEntry, error) {
	var published error
	entry, err := s.change(ctx, dlq.ActionReplay, c, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM `+s.schema+`.attempts AS a
USING `+s.schema+`.dead_letters AS d
WHERE d.id = ANY($1::bigint[]) AND a.consumer = d.consumer AND a.event_id = d.event_id`, c.IDs); err != nil {
			return fmt.Errorf("reset attempts: %w", err)
		}
		// The crash guard's count too: the replayed copy runs the handler again.
		if _, err := tx.Exec(ctx, `DELETE FROM `+s.schema+`.started AS st
USING `+s.schema+`.dead_letters AS d
WHERE d.id = ANY($1::bigint[]) AND st.consumer = d.consumer AND st.event_id = d.event_id`, c.IDs); err != nil {
			return fmt.Errorf("reset the crash guard's counts: %w", err)
		}
		published = publish()
		return published
	}, s.markReplayedSQL(), c.IDs, seenCounts(c))
	if published != nil {
		return dlq.AuditEntry{}, published
	}
	return entry, err
}

func (s *Store) markReplayedSQL() string {
	return `UPDATE ` + s.schema + `.dead_letters AS d SET
    replay_count = d.replay_count + 1,
    status       = CASE WHEN c.seen < 0 OR d.count = c.seen THEN 'replayed' ELSE d.status END,
    updated_at   = now()
FROM unnest($1::bigint[], $2::bigint[]) AS c(id, seen)
WHERE d.id = c.id
RETURNING d.id`
}

// seenCounts lists c.Counts in the order of c.IDs, -1 for a dead letter not in it.
func seenCounts(c dlq.Change) []int64 {
	seen := make([]int64, len(c.IDs))
	for i, id := range c.IDs {
		seen[i] = -1
		if n, ok := c.Counts[id]; ok {
			seen[i] = int64(n)
		}
	}
	return seen
}

// Discard sets the status of the dead letters c.IDs to discarded, with c.Reason; see
// dlq.Reviewer.
func (s *Store) Discard(ctx context.Context, c dlq.Change) (dlq.AuditEntry, error) {
	return s.change(ctx, dlq.ActionDiscard, c, nil, s.setStatusSQL(dlq.StatusDiscarded), c.IDs)
}

// Resolve sets the status of the dead letters c.IDs to resolved; see dlq.Reviewer.
func (s *Store) Resolve(ctx context.Context, c dlq.Change) (dlq.AuditEntry, error) {
	return s.change(ctx, dlq.ActionResolve, c, nil, s.setStatusSQL(dlq.StatusResolved), c.IDs)
}

func (s *Store) setStatusSQL(st dlq.Status) string {
	return `UPDATE ` + s.schema + `.dead_letters SET status = '` + string(st) + `', updated_at = now()
WHERE id = ANY($1::bigint[]) AND status <> '` + string(st) + `'
RETURNING id`
}

// change runs before, when not nil, then update, which returns the IDs it changed, and
// writes the audit entry listing them, in one transaction.
func (s *Store) change(ctx context.Context, a dlq.Action, c dlq.Change, before func(tx pgx.Tx) error, update string, args ...any) (dlq.AuditEntry, error) {
	if err := c.Validate(a); err != nil {
		return dlq.AuditEntry{}, err
	}
	var entry dlq.AuditEntry
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if before != nil {
			if err := before(tx); err != nil {
				return err
			}
		}
		rows, err := tx.Query(ctx, update, args...)
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
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
		return tx.QueryRow(ctx, `INSERT INTO `+s.schema+`.dead_letter_audit
    (action, os_user, host, selector, reason, dead_letter_ids)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id, at, db_role`, string(a), c.Actor.OSUser, c.Actor.Host, selector, c.Reason, ids).
			Scan(&entry.ID, &entry.At, &entry.DBRole)
	})
	if err != nil {
		return dlq.AuditEntry{}, fmt.Errorf("postgres: %s dead letters: %w", a, err)
	}
	return entry, nil
}

// Audit returns the audit entries f selects, in ID order; see dlq.Reviewer.
func (s *Store) Audit(ctx context.Context, f dlq.AuditFilter) ([]dlq.AuditEntry, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	var conds []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		conds = append(conds, strings.ReplaceAll(cond, "$?", "$"+strconv.Itoa(len(args))))
	}
	if f.Action != "" {
		add("action = $?", string(f.Action))
	}
	if f.DeadLetterID != 0 {
		add("dead_letter_ids @> ARRAY[$?::bigint]", f.DeadLetterID)
	}
	if !f.Since.IsZero() {
		add("at >= $?", f.Since)
	}
	if !f.Until.IsZero() {
		add("at < $?", f.Until)
	}
	if f.AfterID > 0 {
		add("id > $?", f.AfterID)
	}
	q := "SELECT id, at, action, os_user, host, db_role, selector, reason, dead_letter_ids FROM " + s.schema + ".dead_letter_audit"
	if len(conds) > 0 {
		q += " WHERE " + strings.Join(conds, " AND ")
	}
	q += " ORDER BY id"
	if f.Limit > 0 {
		args = append(args, f.Limit)
		q += " LIMIT $" + strconv.Itoa(len(args))
	}
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("postgres: read audit: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (dlq.AuditEntry, error) {
		var e dlq.AuditEntry
		var action string
		err := row.Scan(&e.ID, &e.At, &action, &e.OSUser, &e.Host, &e.DBRole, &e.Selector, &e.Reason, &e.DeadLetterIDs)
		e.Action = dlq.Action(action)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: read audit: %w", err)
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
func (s *Store) releaseParked(ctx context.Context, tx pgx.Tx, a dlq.Action, c dlq.Change, ids []int64) (string, error) {
	if len(ids) == 0 {
		return c.Selector, nil
	}
	// A statement of its own: it waits for the lock of each mark row, held by a
	// consumer parking an event, and the statements after it see what it parked.
	rows, err := tx.Query(ctx, `UPDATE `+s.schema+`.entity_marks AS m SET
    seq         = CASE WHEN $2 THEN greatest(m.seq, m.blocked_seq) ELSE m.seq END,
    gap_since   = CASE WHEN $2 THEN NULL ELSE m.gap_since END,
    blocked_by  = NULL,
    blocked_seq = NULL,
    updated_at  = now()
FROM `+s.schema+`.dead_letters AS d
WHERE d.id = ANY($1::bigint[]) AND d.status <> 'pending' AND m.consumer = d.consumer AND m.blocked_by = d.event_id
RETURNING m.consumer, m.entity_id`, ids, a != dlq.ActionReplay)
	if err != nil {
		return "", fmt.Errorf("lift quarantines: %w", err)
	}
	var consumers, entities []string
	for rows.Next() {
		var c, e string
		if err := rows.Scan(&c, &e); err != nil {
			rows.Close()
			return "", fmt.Errorf("lift quarantines: %w", err)
		}
		consumers, entities = append(consumers, c), append(entities, e)
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("lift quarantines: %w", err)
	}
	if len(consumers) == 0 {
		return c.Selector, nil
	}
	// Counted after the marks are locked: an event a consumer was parking meanwhile
	// is counted, and released or discarded, with the others.
	var parked int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM `+s.schema+`.parked_events AS pe
JOIN unnest($1::text[], $2::text[]) AS u (consumer, entity_id) ON pe.consumer = u.consumer AND pe.entity_id = u.entity_id`,
		consumers, entities).Scan(&parked); err != nil {
		return "", fmt.Errorf("count parked events: %w", err)
	}
	action := dlq.ParkedRelease
	if a == dlq.ActionDiscard {
		if parked > 0 && c.Parked == "" {
			return "", dlq.ErrParkedChoiceRequired
		}
		action = cmp.Or(c.Parked, dlq.ParkedRelease)
	}
	if action == dlq.ParkedDiscard {
		if _, err := tx.Exec(ctx, `UPDATE `+s.schema+`.entity_marks AS m SET seq = greatest(m.seq, p.top), gap_since = NULL
FROM (SELECT pe.consumer, pe.entity_id, max(pe.seq) AS top FROM `+s.schema+`.parked_events AS pe
      JOIN unnest($1::text[], $2::text[]) AS u (consumer, entity_id) ON pe.consumer = u.consumer AND pe.entity_id = u.entity_id
      GROUP BY pe.consumer, pe.entity_id) AS p
WHERE m.consumer = p.consumer AND m.entity_id = p.entity_id`, consumers, entities); err != nil {
			return "", fmt.Errorf("discard parked events: %w", err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM `+s.schema+`.parked_events AS pe
USING unnest($1::text[], $2::text[]) AS u (consumer, entity_id) WHERE pe.consumer = u.consumer AND pe.entity_id = u.entity_id`, consumers, entities); err != nil {
			return "", fmt.Errorf("discard parked events: %w", err)
		}
	} else if _, err := tx.Exec(ctx, `WITH p AS (
    DELETE FROM `+s.schema+`.parked_events AS pe
    USING unnest($1::text[], $2::text[]) AS u (consumer, entity_id)
    WHERE pe.consumer = u.consumer AND pe.entity_id = u.entity_id
    RETURNING pe.*)
INSERT INTO `+s.schema+`.delayed (consumer, event_id, topic, payload, metadata, due_at)
SELECT consumer, event_id, topic, payload, metadata,
    now() + (row_number() OVER (PARTITION BY consumer, entity_id ORDER BY seq) - 1) * interval '1 millisecond'
FROM p
ON CONFLICT (consumer, event_id) DO NOTHING`, consumers, entities); err != nil {
		return "", fmt.Errorf("release parked events: %w", err)
	}
	return strings.TrimSpace(c.Selector + " parked=" + string(action) + ":" + strconv.Itoa(parked)), nil
}
