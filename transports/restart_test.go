package transports_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
)

// The restart tests' ack deadlines: short, so that a delivery whose ack was lost with
// the server is redelivered soon after it came back.
const (
	restartNATSAckWait   = 4 * time.Second
	restartRedisMaxIdle  = 2 * time.Second
	restartEvents        = 30 // evt-00 … evt-29
	restartHeldEvent     = "evt-12"
	restartConsumers     = 2
	restartServerTimeout = 15 * time.Second
)

// A NATS server of the test's own, with JetStream on file storage, is stopped while the
// consumers hold deliveries and started again on the same port and store directory.
// The stream, the durable consumer and its acks survive; nats.go reconnects by itself
// (nats.MaxReconnects(-1)) and resubscribes the push consumer's deliver subject, so the
// subscribers recover without a restart of the router.
func TestNATSRestart(t *testing.T) {
	t.Parallel()
	srv := startPrivateServer(t, "nats-server", func(port int, dir string) []string {
		return []string{"-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", dir}
	})
	runRestartScenario(t, srv, natsBroker(t, "nats://"+srv.addr, restartNATSAckWait, func(cc *nats.ConsumerConfig) {
		// Few deliveries in flight, so that most of the stream is delivered after the restart.
		cc.MaxAckPending = 4
	}))
}

// A Redis server of the test's own, with an fsynced append-only file, is stopped while
// the consumers hold deliveries and started again on the same port and directory. The
// stream, its consumer group and the pending entries survive; watermill-redisstream
// retries reads (every 500ms), claims and acks (every 100ms) until the server answers,
// so the subscribers recover without a restart of the router.
func TestRedisRestart(t *testing.T) {
	t.Parallel()
	srv := startPrivateServer(t, "redis-server", func(port int, dir string) []string {
		return []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
			"--appendonly", "yes", "--appendfsync", "always", "--save", ""}
	})
	runRestartScenario(t, srv, redisBroker(t, "redis://"+srv.addr+"/0", restartRedisMaxIdle))
}

// runRestartScenario publishes restartEvents events with duplicates to br, consumes them
// on restartConsumers instances of the whole stack, and stops srv in the middle: when
// restartHeldEvent is reached, every handler holds its delivery inside its transaction,
// the server is stopped (SIGTERM, until it exited), the handlers finish and commit
// while it is down (their acks fail or wait), and the server starts again. Each
// event's effect commits exactly once, and the broker ends drained.
func runRestartScenario(t *testing.T, srv *privateServer, br *broker) {
	t.Helper()
	start := time.Now()
	store, pool := testdb.Store(t)
	ctx := context.Background()
	effects := pgx.Identifier{store.Schema(), "effects"}.Sanitize()
	_, err := pool.Exec(ctx, "CREATE TABLE "+effects+" (event_id text NOT NULL)")
	require.NoError(t, err)

	var msgs []*message.Message
	for i := range restartEvents {
		id := fmt.Sprintf("evt-%02d", i)
		msgs = append(msgs, newMessage(id, id))
		if i%5 == 0 {
			msgs = append(msgs, newMessage(id, id)) // a duplicate right behind
		}
	}
	for i := 0; i < restartEvents; i += 7 {
		id := fmt.Sprintf("evt-%02d", i)
		msgs = append(msgs, newMessage(id, "late duplicate"))
	}
	require.NoError(t, br.publisher.Publish(br.topic, msgs...))

	var (
		gated     atomic.Bool
		gateOnce  sync.Once
		holding   = make(chan struct{}) // closed when restartHeldEvent reached a handler
		release   = make(chan struct{}) // closed when the held handlers may finish
		held      atomic.Int32          // deliveries held while the server stopped
		after     atomic.Int32          // deliveries that reached a handler after the restart
		restarted atomic.Bool
	)
	var stops []func()
	for i := range restartConsumers {
		c, err := consumer.New(consumer.Config{
			Store:           store,
			Retry:           retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond},
			AckDeadline:     br.ackDeadline,
			MessagingSystem: br.system,
			Logger:          testLogger(t).With("instance", i),
		})
		require.NoError(t, err)
		sub := br.subscriber(t, i)
		stops = append(stops, runRouter(t, func(r *message.Router) {
			c.AddConsumerHandler(r, "billing", br.topic, sub, func(msg *message.Message) error {
				ctx := msg.Context()
				tx, ok := postgres.TxFromContext(ctx)
				if !ok {
					return postgres.ErrNoTx
				}
				if restarted.Load() {
					after.Add(1)
				}
				id := msg.Metadata.Get("event_id")
				if _, err := tx.Exec(ctx, "INSERT INTO "+effects+" (event_id) VALUES ($1)", id); err != nil {
					return err
				}
				if id == restartHeldEvent {
					gateOnce.Do(func() {
						gated.Store(true)
						close(holding)
					})
				}
				if gated.Load() {
					select {
					case <-release:
						return nil
					default:
					}
					held.Add(1)
					select {
					case <-release: // the server is down: commit, and ack into the void
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				return nil
			})
		}))
	}

	processed := pgx.Identifier{store.Schema(), "processed"}.Sanitize()
	count := func() int {
		var n int
		require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM "+processed).Scan(&n))
		return n
	}
	select {
	case <-holding:
	case <-time.After(15 * time.Second):
		t.Fatalf("%s did not reach a handler within 15s (%d events processed)", restartHeldEvent, count())
	}
	srv.stop(t)
	before := count()
	require.Less(t, before, restartEvents, "the server stopped in the middle of consumption")
	close(release)
	srv.start(t)
	restarted.Store(true)

	var last string
	ok := assertEventually(func() bool {
		p := count()
		left, err := br.unfinished(ctx)
		if err != nil {
			last = fmt.Sprintf("processed %d/%d, broker: %v", p, restartEvents, err)
			return false
		}
		last = fmt.Sprintf("processed %d/%d, broker: %q", p, restartEvents, left)
		return p == restartEvents && left == ""
	}, 20*time.Second)
	require.True(t, ok, "not done 20s after the restart: %s", last)
	for _, stop := range stops {
		stop()
	}
	unfinished, err := br.unfinished(ctx)
	require.NoError(t, err)
	require.Empty(t, unfinished, "the broker holds messages after the consumers stopped")

	rows, err := pool.Query(ctx, "SELECT event_id, count(*) FROM "+effects+" GROUP BY event_id")
	require.NoError(t, err)
	applied := map[string]int{}
	for rows.Next() {
		var id string
		var n int
		require.NoError(t, rows.Scan(&id, &n))
		applied[id] = n
	}
	require.NoError(t, rows.Err())
	want := map[string]int{}
	for i := range restartEvents {
		want[fmt.Sprintf("evt-%02d", i)] = 1
	}
	require.Equal(t, want, applied, "each event's effect committed exactly once across the restart")
	require.Positive(t, after.Load(), "the subscribers received deliveries from the restarted server")
	t.Logf("%s: %d messages, %d events; stopped with %d processed and %d deliveries held, %d deliveries after the restart; %s",
		br.system, len(msgs), restartEvents, before, held.Load(), after.Load(), time.Since(start).Round(time.Millisecond))
}

// privateServer is a broker process of one test's own, on a free loopback port, with its
// data in a temporary directory, so that the test can stop and start it without
// disturbing the shared servers other tests use.
type privateServer struct {
	name string
	path string
	args []string
	addr string
	out  *syncWriter // the process's stdout and stderr

	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd exited
}

// startPrivateServer finds the program name (on PATH, or in /usr/sbin or /usr/bin) and
// starts it with args(port, dir). A missing program fails the test when CI is set, and
// skips it otherwise.
func startPrivateServer(t *testing.T, name string, args func(port int, dir string) []string) *privateServer {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/usr/bin", "/usr/local/bin"} {
			if _, statErr := os.Stat(filepath.Join(dir, name)); statErr == nil {
				path, err = filepath.Join(dir, name), nil
				break
			}
		}
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed and CI is set: %v", name, err)
		}
		t.Skipf("%s is not installed: %v", name, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	s := &privateServer{
		name: name,
		path: path,
		args: args(port, t.TempDir()),
		addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		out:  &syncWriter{w: &limitedBuffer{max: 64 << 10}},
	}
	t.Cleanup(func() {
		if s.cmd != nil {
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, s.out.w)
		}
	})
	s.start(t)
	return s
}

// start starts the server and waits until it accepts connections.
func (s *privateServer) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command(s.path, s.args...)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	require.NoError(t, cmd.Start(), "start %s", s.name)
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited
	deadline := time.After(restartServerTimeout)
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for {
		if c, err := net.DialTimeout("tcp", s.addr, time.Second); err == nil {
			_ = c.Close()
			return
		}
		select {
		case <-exited:
			s.cmd = nil
			t.Fatalf("%s exited at start: %s", s.name, cmd.ProcessState)
		case <-deadline:
			t.Fatalf("%s does not accept connections on %s after %s", s.name, s.addr, restartServerTimeout)
		case <-poll.C:
		}
	}
}

// stop sends the server SIGTERM and waits until it exited.
func (s *privateServer) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, s.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-s.exited:
		s.cmd = nil
	case <-time.After(restartServerTimeout):
		t.Fatalf("%s did not exit within %s of SIGTERM", s.name, restartServerTimeout)
	}
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	max int
	b   []byte
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }
