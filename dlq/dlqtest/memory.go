package dlqtest

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/idemkit/idem/dlq"
)

// MemoryStore is a dlq.Store in memory, for unit tests of code built on a store. It is
// not durable: never use it for real dead letters. It is safe for concurrent use, and
// it passes [Run].
type MemoryStore struct {
	mu      sync.Mutex
	letters map[[2]string]*dlq.DeadLetter
	nextID  int64
	// Err, when set, makes Put fail with it, as a store that is down would.
	err error
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{letters: map[[2]string]*dlq.DeadLetter{}}
}

var _ dlq.Store = (*MemoryStore)(nil)

// SetErr makes every following Put fail with err (nil to recover).
func (s *MemoryStore) SetErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

// Put implements dlq.Store.
func (s *MemoryStore) Put(ctx context.Context, d *dlq.DeadLetter) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return false, s.err
	}
	now := time.Now()
	k := [2]string{d.Consumer, d.EventID}
	old, exists := s.letters[k]
	c := *d
	c.Payload = slices.Clone(d.Payload)
	c.Metadata = maps.Clone(d.Metadata)
	if c.Metadata == nil {
		c.Metadata = map[string]string{}
	}
	c.Status, c.LastFailedAt, c.DeadLetteredAt = dlq.StatusPending, now, now
	c.History = []dlq.Failure{{At: now, Error: d.Error}}
	if exists {
		c.ID, c.Count, c.FirstFailedAt = old.ID, old.Count+1, old.FirstFailedAt
	} else {
		s.nextID++
		c.ID, c.Count, c.FirstFailedAt = s.nextID, 1, now
	}
	s.letters[k] = &c
	d.ID, d.Status, d.Count, d.FirstFailedAt, d.LastFailedAt, d.DeadLetteredAt = c.ID, c.Status, c.Count, c.FirstFailedAt, c.LastFailedAt, c.DeadLetteredAt
	return !exists, nil
}

// Get returns a copy of the dead letter of (consumer, eventID).
func (s *MemoryStore) Get(_ context.Context, consumer, eventID string) (*dlq.DeadLetter, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.letters[[2]string{consumer, eventID}]
	if !ok {
		return nil, fmt.Errorf("dlqtest: %s/%s: %w", consumer, eventID, dlq.ErrNotFound)
	}
	c := *d
	return &c, nil
}

// All returns copies of every dead letter, in ID order.
func (s *MemoryStore) All() []dlq.DeadLetter {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]dlq.DeadLetter, 0, len(s.letters))
	for _, d := range s.letters {
		out = append(out, *d)
	}
	slices.SortFunc(out, func(a, b dlq.DeadLetter) int { return int(a.ID - b.ID) })
	return out
}
