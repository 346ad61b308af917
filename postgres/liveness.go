package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem/dedup"
)

// lockClass is the first key of the session advisory locks that show a Store's
// process alive; the second is the Store's instance number. It spells "idem" in
// hexadecimal-ish letters and stays clear of the small numbers applications use.
const lockClass int32 = 0x1de30001

// livenessLinger is how long the liveness connection stays open after the last
// delivery that held it ended, so that a consumer with one delivery at a time does
// not connect once per delivery.
const livenessLinger = 30 * time.Second

// livenessTimeout bounds connecting the liveness connection and taking its lock.
const livenessTimeout = 10 * time.Second

var _ dedup.LiveStartRecorder = (*Store)(nil)

// liveness is how a Store shows the other consumer processes that it still runs:
// while deliveries it counted for the crash guard are in flight, it holds a session
// advisory lock (lockClass, instance) on a connection of its own, outside the pool so
// that it takes no connection from the handlers. PostgreSQL ends the session, and the
// lock with it, when the process dies: its starts are then crashes. Every start row
// carries the instance number; another process counts a row only when nobody holds
// that instance's lock.
type liveness struct {
	pool *pgxpool.Pool

	// instance is the number the start rows carry, > 0: read without mu on every
	// start, changed only under it.
	instance atomic.Int32

	mu       sync.Mutex
	holders  int
	conn     *pgx.Conn          // nil while not connected
	stop     context.CancelFunc // ends the watcher of conn, which closes it
	idle     *time.Timer
	closed   bool
	watchers sync.WaitGroup
}

func newLiveness(pool *pgxpool.Pool) *liveness {
	l := &liveness{pool: pool}
	l.instance.Store(newInstance())
	return l
}

// newInstance draws a positive 31-bit instance number: two live processes drawing the
// same one is caught when the second fails to take the lock.
func newInstance() int32 {
	return rand.Int32N(math.MaxInt32) + 1
}

// hold takes a hold on the liveness, connecting and locking first when needed.
func (l *liveness) hold(ctx context.Context) (func(), error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, &storeError{Op: "show this process alive to the crash guard", Err: errStoreClosed}
	}
	if l.idle != nil {
		l.idle.Stop()
		l.idle = nil
	}
	if l.conn == nil {
		// With holds taken, the connection failed and is being opened again: the
		// running deliveries' starts carry the instance number, keep it.
		if err := l.connectLocked(ctx, l.holders > 0); err != nil {
			return nil, err
		}
	}
	l.holders++
	var once sync.Once
	return func() { once.Do(l.release) }, nil
}

func (l *liveness) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.holders--
	if l.holders > 0 || l.conn == nil || l.closed {
		return
	}
	l.idle = time.AfterFunc(livenessLinger, func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.holders == 0 {
			l.dropLocked()
		}
	})
}

var (
	// errLockBusy reports that the instance's lock is still held by another session.
	errLockBusy = errors.New("the liveness lock is still held by the session that lost its connection; retry in a moment")
	// errStoreClosed reports a hold asked for after Store.Close.
	errStoreClosed = errors.New("the store is closed")
)

// connectLocked opens the liveness connection and takes the instance's lock on it.
// When another session holds the lock, it draws a new instance number, unless keep
// is set: deliveries then run whose starts carry the number, and it reports
// errLockBusy instead.
func (l *liveness) connectLocked(ctx context.Context, keep bool) error {
	ctx, cancel := context.WithTimeout(ctx, livenessTimeout)
	defer cancel()
	conn, err := connectLike(ctx, l.pool)
	if err != nil {
		return &storeError{Op: "open the crash guard's liveness connection", Err: err}
	}
	for {
		var locked bool
		if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1, $2)", lockClass, l.instance.Load()).Scan(&locked); err != nil {
			_ = conn.Close(context.WithoutCancel(ctx))
			return &storeError{Op: "take the crash guard's liveness lock", Err: err}
		}
		if locked {
			break
		}
		if keep {
			_ = conn.Close(context.WithoutCancel(ctx))
			return &storeError{Op: "take the crash guard's liveness lock again", Err: errLockBusy}
		}
		// Another session holds this number: another process drew it, or an earlier
		// liveness connection of this one is not over yet on the server. Starts are
		// counted under the new number from now on.
		l.instance.Store(newInstance())
	}
	wctx, stop := context.WithCancel(context.Background())
	l.conn, l.stop = conn, stop
	l.watchers.Add(1)
	go l.watch(wctx, conn)
	return nil
}

// connectLike opens a connection of its own the way pool opens its connections: with
// its connection configuration and its BeforeConnect and AfterConnect hooks (a
// password or token fetched per connection, session settings).
func connectLike(ctx context.Context, pool *pgxpool.Pool) (*pgx.Conn, error) {
	cfg := pool.Config()
	cc := cfg.ConnConfig
	if cfg.BeforeConnect != nil {
		if err := cfg.BeforeConnect(ctx, cc); err != nil {
			return nil, fmt.Errorf("the pool's BeforeConnect: %w", err)
		}
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, err
	}
	if cfg.AfterConnect != nil {
		if err := cfg.AfterConnect(ctx, conn); err != nil {
			_ = conn.Close(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("the pool's AfterConnect: %w", err)
		}
	}
	return conn, nil
}

// watch waits on the liveness connection until it fails (the server restarted, the
// session was terminated) or is dropped, closes it, and reconnects when deliveries
// still hold the liveness.
func (l *liveness) watch(ctx context.Context, conn *pgx.Conn) {
	defer l.watchers.Done()
	_ = conn.PgConn().WaitForNotification(ctx) // returns when the connection fails or ctx ends
	closeCtx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	_ = conn.Close(closeCtx)
	cancel()
	if ctx.Err() != nil {
		return // dropped on purpose
	}
	l.mu.Lock()
	if l.conn == conn {
		l.conn = nil
		l.stop()
	}
	again := l.holders > 0 && !l.closed
	l.mu.Unlock()
	if again {
		l.watchers.Add(1)
		go l.reconnect()
	}
}

// reconnect connects again, with backoff, while deliveries still hold the liveness.
// It keeps the instance number the running deliveries counted their starts under
// while the server may still be ending the old session (about 20 seconds); past
// that, another process holds it and a new number is drawn.
func (l *liveness) reconnect() {
	defer l.watchers.Done()
	for try, wait := 0, 100*time.Millisecond; ; try, wait = try+1, min(2*wait, 2*time.Second) {
		l.mu.Lock()
		if l.conn != nil || l.holders == 0 || l.closed {
			l.mu.Unlock()
			return
		}
		err := l.connectLocked(context.Background(), try < 20)
		l.mu.Unlock()
		if err == nil {
			return
		}
		time.Sleep(wait)
	}
}

func (l *liveness) dropLocked() {
	if l.idle != nil {
		l.idle.Stop()
		l.idle = nil
	}
	if l.conn != nil {
		l.stop()
		l.conn = nil
	}
}

func (l *liveness) close() {
	l.mu.Lock()
	l.closed = true
	l.dropLocked()
	l.mu.Unlock()
	l.watchers.Wait()
}

// HoldLive shows the other consumer processes that this one runs, until release is
// called; see dedup.LiveStartRecorder. The first hold opens a connection of its own
// (outside the pool) and takes a session advisory lock on it; the connection is
// closed 30 seconds after the last hold is released, or by [Store.Close]. When the
// connection fails while holds are taken, it is opened again at once, with backoff.
func (s *Store) HoldLive(ctx context.Context) (func(), error) {
	release, err := s.live.hold(ctx)
	if err != nil {
		return nil, fmt.Errorf("crash guard: %w", err)
	}
	return release, nil
}

// Close closes the crash guard's liveness connection, if open; the pool stays open.
// A Store that is never closed closes it 30 seconds after its last delivery.
func (s *Store) Close() {
	s.live.close()
}
