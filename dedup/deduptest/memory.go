package deduptest

import (
	"bytes"
	"context"
	"sync"

	"github.com/idemkit/idem/dedup"
)

// MemoryStore is a dedup.Store in memory, for unit tests of code built on a store. It
// is not durable and shared by nothing: never use it to deduplicate real traffic. It is
// safe for concurrent use, and it passes [Run].
type MemoryStore struct {
	mu        sync.Mutex
	claimed   map[dedup.Key][]byte // the payload hash kept, or nil
	inflight  map[dedup.Key]*sync.Mutex
	failures  map[dedup.Key]int
	lastCause map[dedup.Key]string
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{
		claimed:   map[dedup.Key][]byte{},
		inflight:  map[dedup.Key]*sync.Mutex{},
		failures:  map[dedup.Key]int{},
		lastCause: map[dedup.Key]string{},
	}
}

var _ dedup.Store = (*MemoryStore)(nil)

// Tx stands for a MemoryStore transaction: writes registered with OnCommit take effect
// only if the attempt commits.
type Tx struct {
	onCommit []func()
}

// OnCommit registers fn to run when the transaction commits.
func (tx *Tx) OnCommit(fn func()) { tx.onCommit = append(tx.onCommit, fn) }

type txKey struct{}

// TxFromContext returns the MemoryStore transaction of the attempt being run.
func TxFromContext(ctx context.Context) (*Tx, bool) {
	tx, ok := ctx.Value(txKey{}).(*Tx)
	return tx, ok
}

// Run implements dedup.Store. Attempts on the same key run one at a time, as a unique
// index makes them in a database. It keeps payload hashes and reports conflicting
// duplicates.
func (s *MemoryStore) Run(ctx context.Context, key dedup.Key, fn func(ctx context.Context) error) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	s.mu.Lock()
	lock, ok := s.inflight[key]
	if !ok {
		lock = &sync.Mutex{}
		s.inflight[key] = lock
	}
	s.mu.Unlock()

	lock.Lock()
	defer lock.Unlock()
	s.mu.Lock()
	kept, done := s.claimed[key]
	s.mu.Unlock()
	got := dedup.PayloadHash(ctx)
	if done {
		if kept != nil && got != nil && !bytes.Equal(kept, got) {
			return false, &dedup.ConflictingDuplicateError{Key: key, Kept: kept, Got: got}
		}
		return false, nil
	}
	tx := &Tx{}
	if err := fn(context.WithValue(ctx, txKey{}, tx)); err != nil {
		return true, err
	}
	s.mu.Lock()
	s.claimed[key] = got
	s.mu.Unlock()
	for _, f := range tx.onCommit {
		f()
	}
	return true, nil
}

// RecordFailure implements dedup.Store.
func (s *MemoryStore) RecordFailure(ctx context.Context, key dedup.Key, cause string) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures[key]++
	s.lastCause[key] = cause
	return s.failures[key], nil
}

// Failures returns the failed attempts recorded for key, and the last cause.
func (s *MemoryStore) Failures(key dedup.Key) (int, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failures[key], s.lastCause[key]
}
