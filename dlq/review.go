package dlq

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ReplayCountKey is the metadata key a replayed message carries: how many times its
// dead letter has been replayed, "1" on the first replay. Everything else in the
// replayed message's metadata is the dead letter's.
const ReplayCountKey = "idem_replay_count"

// DerivedEventIDPrefix starts the event ID of a dead letter whose message had no
// usable event ID: the store keeps it under a key derived from its content (see
// dedup.DerivedKey). Such a dead letter has no event ID to replay under.
const DerivedEventIDPrefix = "derived:"

// HasEventID reports whether the dead letter's event ID is the message's own, as
// opposed to one derived from its content because the message had none. Only a dead
// letter with an event ID can be replayed safely: its replayed copy is recognised as a
// duplicate when the event was applied meanwhile.
func (d *DeadLetter) HasEventID() bool {
	return !strings.HasPrefix(d.EventID, DerivedEventIDPrefix)
}

// Valid reports whether s is one of the four statuses.
func (s Status) Valid() bool {
	switch s {
	case StatusPending, StatusReplayed, StatusDiscarded, StatusResolved:
		return true
	}
	return false
}

// Record is a dead letter as review sees it: the dead letter and its review state.
type Record struct {
	DeadLetter
	// ReplayCount is how many times the dead letter was replayed.
	ReplayCount int
	// UpdatedAt is when the row last changed: dead-lettered again, replayed,
	// discarded or resolved.
	UpdatedAt time.Time
	// Parked is how many events of the dead letter's entity are parked behind it
	// (ordering with quarantine, see dedup.Quarantiner), as Get reports it; List
	// leaves it 0.
	Parked int
}

// Filter selects dead letters. Every field set narrows the selection; the zero Filter
// selects every dead letter, whatever its status.
type Filter struct {
	// IDs selects these dead letters only, when not empty.
	IDs []int64
	// Consumer, Topic, Fingerprint and EventType select exact values.
	Consumer    string
	Topic       string
	Fingerprint string
	EventType   string
	// Status selects one status; "" selects all of them.
	Status Status
	// Since and Until bound DeadLetteredAt: Since <= DeadLetteredAt < Until. A zero
	// time leaves that side open.
	Since time.Time
	Until time.Time
	// AfterID and Limit page through [Reviewer.List]: dead letters whose ID is greater
	// than AfterID, at most Limit of them (0: no limit), in ID order. Report ignores
	// them.
	AfterID int64
	Limit   int
}

// Validate checks the filter's values.
func (f Filter) Validate() error {
	switch {
	case f.Status != "" && !f.Status.Valid():
		return fmt.Errorf("dlq: Filter.Status %q is not a status: want pending, replayed, discarded or resolved", f.Status)
	case !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until):
		return fmt.Errorf("dlq: Filter.Since %s is not before Until %s", f.Since.UTC().Format(time.RFC3339), f.Until.UTC().Format(time.RFC3339))
	case f.Limit < 0:
		return fmt.Errorf("dlq: Filter.Limit must not be negative, got %d", f.Limit)
	case f.AfterID < 0:
		return fmt.Errorf("dlq: Filter.AfterID must not be negative, got %d", f.AfterID)
	}
	return nil
}

// GroupSamples is how many sample event IDs a [Group] holds at most.
const GroupSamples = 3

// Group is the dead letters of one consumer and topic that share a fingerprint: one
// failure cause, as a report shows it.
type Group struct {
	Consumer    string
	Topic       string
	Fingerprint string
	// Count is how many dead letters the group holds.
	Count int64
	// Parked is how many events are parked behind the group's pending dead letters
	// (ordering with quarantine, see dedup.Quarantiner): the sum of their
	// Record.Parked.
	Parked int64
	// FirstSeen and LastSeen are the oldest and newest DeadLetteredAt of the group.
	FirstSeen time.Time
	LastSeen  time.Time
	// SampleError is the error of the group's most recent dead letter.
	SampleError string
	// SampleIDs and SampleEventIDs are the IDs and event IDs of the group's first
	// dead letters (lowest IDs first), at most GroupSamples of them.
	SampleIDs      []int64
	SampleEventIDs []string
}

// Action is what an operator did to dead letters.
type Action string

const (
	// ActionReplay: republished to their topics; status replayed.
	ActionReplay Action = "replay"
	// ActionDiscard: dropped on purpose, with a reason; status discarded.
	ActionDiscard Action = "discard"
	// ActionResolve: dealt with by other means; status resolved.
	ActionResolve Action = "resolve"
)

// Actor is who changed dead letters, as the audit records it. The store adds the
// database role itself.
type Actor struct {
	// OSUser is the operating-system user who ran the change.
	OSUser string
	// Host is the machine the change ran on.
	Host string
}

// Change is one operator action on dead letters.
type Change struct {
	// IDs are the dead letters to change. Required.
	IDs []int64
	// Actor is who changes them.
	Actor Actor
	// Reason says why. Required to discard.
	Reason string
	// Selector says how the operator selected the dead letters, for the audit: a
	// list of IDs, or a filter such as "status=pending consumer=billing".
	Selector string
	// Parked says what to do with the events parked behind the dead letters (see
	// dedup.Quarantiner), for Discard: ParkedRelease or ParkedDiscard. Discarding a
	// dead letter that has parked events behind it without a choice fails with
	// ErrParkedChoiceRequired. Replay and Resolve always release them.
	Parked ParkedAction
	// Counts, for Replay and MarkReplayed only, holds each dead letter's Count as read
	// before its copy was published. A dead letter whose Count has grown since was
	// dead-lettered again by its replayed copy: the replay is counted, but the dead
	// letter stays pending. A dead letter missing from Counts is marked replayed.
	Counts map[int64]int
}

// ParkedAction is what discarding a dead letter does to the events parked behind it.
type ParkedAction string

const (
	// ParkedRelease publishes them again, in sequence order, through the consumer's
	// delayed retries; the entity's mark moves past the discarded event.
	ParkedRelease ParkedAction = "release"
	// ParkedDiscard drops them with the dead letter; the entity's mark moves past them.
	ParkedDiscard ParkedAction = "discard"
)

// ErrParkedChoiceRequired is returned when a dead letter with events parked behind it
// is discarded without saying what to do with them (Change.Parked).
var ErrParkedChoiceRequired = errors.New("dlq: events are parked behind the dead letters: choose to release or discard them")

// ErrReasonRequired is returned when dead letters are discarded without a reason.
var ErrReasonRequired = errors.New("dlq: a reason is required to discard dead letters")

// Validate checks that c can be applied as action a.
func (c Change) Validate(a Action) error {
	switch a {
	case ActionReplay, ActionResolve:
	case ActionDiscard:
		if strings.TrimSpace(c.Reason) == "" {
			return ErrReasonRequired
		}
	default:
		return fmt.Errorf("dlq: unknown action %q", a)
	}
	switch c.Parked {
	case "", ParkedRelease, ParkedDiscard:
	default:
		return fmt.Errorf("dlq: Change.Parked %q is not release or discard", c.Parked)
	}
	if len(c.IDs) == 0 {
		return errors.New("dlq: Change.IDs is empty")
	}
	return nil
}

// AuditEntry is one operator action, written in the same transaction as the change
// it records.
type AuditEntry struct {
	ID int64
	// At is the database clock at the change.
	At     time.Time
	Action Action
	// OSUser and Host come from the Change's Actor; DBRole is the database role the
	// change ran as ("sqlite" for the embedded store, which has no roles).
	OSUser string
	Host   string
	DBRole string
	// Selector and Reason come from the Change.
	Selector string
	Reason   string
	// DeadLetterIDs are the dead letters the action changed, in ascending order.
	DeadLetterIDs []int64
}

// AuditFilter selects audit entries. Its zero value selects them all.
type AuditFilter struct {
	// Action selects one action; "" selects all of them.
	Action Action
	// DeadLetterID selects the entries that changed this dead letter, when not 0.
	DeadLetterID int64
	// Since and Until bound At: Since <= At < Until. A zero time leaves that side open.
	Since time.Time
	Until time.Time
	// AfterID and Limit page: entries whose ID is greater than AfterID, at most Limit
	// of them (0: no limit), in ID order.
	AfterID int64
	Limit   int
}

// Validate checks the filter's values.
func (f AuditFilter) Validate() error {
	switch f.Action {
	case "", ActionReplay, ActionDiscard, ActionResolve:
	default:
		return fmt.Errorf("dlq: AuditFilter.Action %q is not an action: want replay, discard or resolve", f.Action)
	}
	switch {
	case !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until):
		return fmt.Errorf("dlq: AuditFilter.Since %s is not before Until %s", f.Since.UTC().Format(time.RFC3339), f.Until.UTC().Format(time.RFC3339))
	case f.Limit < 0:
		return fmt.Errorf("dlq: AuditFilter.Limit must not be negative, got %d", f.Limit)
	case f.AfterID < 0:
		return fmt.Errorf("dlq: AuditFilter.AfterID must not be negative, got %d", f.AfterID)
	}
	return nil
}

// Reviewer is what an operator's tool (the idem command) needs of a store to review
// dead letters: read them, group them, and change their status with an audit row.
// postgres.Store and sqlite.Store implement it. Implementations must be safe for
// concurrent use.
type Reviewer interface {
	// List returns the dead letters f selects, in ID order, paged by f.AfterID and
	// f.Limit.
	List(ctx context.Context, f Filter) ([]*Record, error)
	// Report groups the dead letters f selects by consumer, topic and fingerprint,
	// largest group first (then oldest first).
	Report(ctx context.Context, f Filter) ([]Group, error)
	// Get returns the dead letter with the given ID, or an error wrapping ErrNotFound.
	Get(ctx context.Context, id int64) (*Record, error)
	// Replay republishes the dead letters c.IDs through publish and records it, in one
	// transaction: it forgets the failed attempts counted for their events, so that
	// the replayed copies get a whole attempt budget again instead of being
	// dead-lettered on their first failure; it calls publish; then, when publish
	// succeeded, it records the replay as MarkReplayed does, audit entry included.
	// When publish fails, Replay rolls back and returns publish's error as it is: the
	// dead letters and their attempt counts are left as they were. Any other error
	// also leaves them as they were, whether publish ran or not.
	//
	// The attempt counts stay held by the transaction while publish runs: a consumer
	// that counts a failure of a replayed copy before the commit waits for it, then
	// counts from zero. Keep publish short: on PostgreSQL, the consumers' writes to
	// those attempt counts wait for it; on SQLite, every write to the database does.
	Replay(ctx context.Context, c Change, publish func() error) (AuditEntry, error)
	// MarkReplayed records that the dead letters c.IDs were republished: it bumps
	// their replay count and sets their status to replayed (but see Change.Counts).
	// It writes one audit entry listing them, in the same transaction, and returns it.
	// It leaves the attempt counts alone: Replay is the whole replay.
	MarkReplayed(ctx context.Context, c Change) (AuditEntry, error)
	// Discard sets the status of the dead letters c.IDs to discarded; c.Reason is
	// required. Resolve sets it to resolved. Each changes only the dead letters whose
	// status differs, and writes one audit entry listing them, in the same
	// transaction, and returns it.
	//
	// When Replay, MarkReplayed, Discard or Resolve changes nothing (unknown IDs, or
	// all in that status already), it writes no audit entry and returns one with no
	// DeadLetterIDs.
	Discard(ctx context.Context, c Change) (AuditEntry, error)
	Resolve(ctx context.Context, c Change) (AuditEntry, error)
	// Audit returns the audit entries f selects, in ID order.
	Audit(ctx context.Context, f AuditFilter) ([]AuditEntry, error)
}
