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
	restartServerTimeout = time.Minute // to start or stop a private server
)

// A NATS server of the test's own, with JetStream on file storage, is stopped while the
// consumers hold deliveries and started again on the same port and store directory.
// The stream, the durable consumer and its acks survive; nats.go reconnects by itself
// (nats.MaxReconnects(-1)) and resubscribes the push consumer's deliver subject, so the
// subscribers recover without a restart of the router.
func TestNATSRestart(t *testing.T) {
	t.Parallel()
	srv := startPrivateServer(t, findProgram(t, "nats-server"), func(port int, dir string) (args, env []string) {
		return []string{"-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", dir}, nil
	})
	runRestartScenario(t, srv, natsBroker(t, "nats://"+srv.addr, restartNATSAckWait, func(cc *nats.ConsumerConfig) {
		// Few deliveries in flight, so that most of the stream is delivered after the restart.
		cc.MaxAckPending = 4
	}), consumersRecover)
}

// A Redis server of the test's own, with an fsynced append-only file, is stopped while
// the consumers hold deliveries and started again on the same port and directory. The
// stream, its consumer group and the pending entries survive; watermill-redisstream
// retries reads (every 500ms), claims and acks (every 100ms) until the server answers,
// so the subscribers recover without a restart of the router.
func TestRedisRestart(t *testing.T) {
	t.Parallel()
	srv := startPrivateServer(t, findProgram(t, "redis-server"), func(port int, dir string) (args, env []string) {
		return []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
			"--appendonly", "yes", "--appendfsync", "always", "--save", ""}, nil
	})
	runRestartScenario(t, srv, redisBroker(t, "redis://"+srv.addr+"/0", restartRedisMaxIdle), consumersRecover)
}

// A RabbitMQ node of the test's own is stopped while every consumer holds a delivery
// inside its transaction, and started again on the same ports and data directory. The
// quorum queue and its messages survive, and what was delivered and not acked when the
// node stopped is delivered again.
//
// The consumers stop with the node and start again after it (consumersRestart), unlike
// the NATS and Redis tests' subscribers, which recover by themselves: watermill-amqp
// v3.1.0 reconnects (Connection.Reconnect), but with a data race (ConnectionWrapper
// replaces its connected channel in handleConnectionClose, unsynchronized, and the
// subscriber's reconnect loop reads it: ThreeDotsLabs/watermill#693), which the race
// detector reports as soon as that loop runs after the connection dropped. The test
// closes the subscribers while each waits for the outcome of its delivery, so that none
// goes around its reconnect loop.
//
// The node runs the server script itself (Debian's /usr/sbin/rabbitmq-server runs it as
// the rabbitmq user, with the system's home and cookie), with an Erlang port mapper of its
// own, and everything else under the test's directory: configuration, data, cookie.
func TestRabbitMQRestart(t *testing.T) {
	t.Parallel()
	server := findProgram(t, "rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server")
	epmd := startPrivateServer(t, findProgram(t, "epmd"), func(port int, _ string) (args, env []string) {
		return []string{"-port", strconv.Itoa(port), "-address", "127.0.0.1"}, nil
	})
	distPort := freePort(t)
	srv := startPrivateServer(t, server, func(port int, dir string) (args, env []string) {
		files := map[string]string{
			"rabbitmq-env.conf": "", // instead of /etc/rabbitmq/rabbitmq-env.conf
			"rabbitmq.conf":     "log.console = true\nlog.console.level = warning\n",
			"enabled_plugins":   "[].\n", // no management plugin, nor any other
		}
		for name, content := range files {
			require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600))
		}
		require.NoError(t, os.Mkdir(filepath.Join(dir, "home"), 0o700))
		return nil, []string{
			"HOME=" + filepath.Join(dir, "home"), // the Erlang cookie
			"ERL_EPMD_ADDRESS=127.0.0.1",
			"ERL_EPMD_PORT=" + strconv.Itoa(epmd.port),
			"RABBITMQ_NODENAME=" + uniqueName("idem_test_") + "@localhost",
			"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
			"RABBITMQ_NODE_PORT=" + strconv.Itoa(port),
			"RABBITMQ_DIST_PORT=" + strconv.Itoa(distPort),
			"RABBITMQ_CONF_ENV_FILE=" + filepath.Join(dir, "rabbitmq-env.conf"),
			"RABBITMQ_CONFIG_FILE=" + filepath.Join(dir, "rabbitmq.conf"),
			"RABBITMQ_ADVANCED_CONFIG_FILE=" + filepath.Join(dir, "advanced.config"),
			"RABBITMQ_ENABLED_PLUGINS_FILE=" + filepath.Join(dir, "enabled_plugins"),
			"RABBITMQ_MNESIA_BASE=" + filepath.Join(dir, "mnesia"),
			"RABBITMQ_LOG_BASE=" + filepath.Join(dir, "log"),
			"RABBITMQ_LOGS=-",
			// Distribution on loopback only, and never a port mapper of Erlang's own
			// starting (it would outlive the test).
			"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false",
		}
	})
	runRestartScenario(t, srv, amqpBroker(t, "amqp://guest:guest@"+srv.addr+"/"), consumersRestart)
}

// How the consumers of runRestartScenario live through the restart.
const (
	// consumersRecover: the routers keep running, and the subscribers recover by
	// themselves once the server is back.
	consumersRecover = iota
	// consumersRestart: the subscribers are closed while the server is down, which
	// cancels the deliveries their handlers hold (their transactions roll back), and
	// new consumers start once it is back, as a deploy that restarts them would.
	consumersRestart
)

// runRestartScenario publishes restartEvents events with duplicates to br, consumes them
// on restartConsumers instances of the whole stack, and stops srv in the middle: when
// restartHeldEvent is reached, every handler holds its delivery inside its transaction,
// the server is stopped (SIGTERM, until it exited), and it starts again. With
// consumersRecover the handlers finish and commit while it is down (their acks fail or
// wait); with consumersRestart the consumers stop with the server and start again after
// it. Each event's effect commits exactly once, and the broker ends drained.
func runRestartScenario(t *testing.T, srv *privateServer, br *broker, mode int) {
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
	if mode == consumersRestart {
		require.NoError(t, br.publisher.Close(), "the publisher is not needed again")
	}

	var (
		gated     atomic.Bool
		gateOnce  sync.Once
		holding   = make(chan struct{}) // closed when restartHeldEvent reached a handler
		release   = make(chan struct{}) // closed when the held handlers may finish
		held      atomic.Int32          // deliveries held while the server stopped
		after     atomic.Int32          // deliveries that reached a handler after the restart
		restarted atomic.Bool
		subs      []message.Subscriber
		stops     []func()
	)
	startConsumers := func() {
		subs, stops = nil, nil
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
			subs = append(subs, sub)
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
	}
	startConsumers()

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
	if mode == consumersRestart {
		// Every consumer holds a delivery, so that none is between two when the server
		// stops.
		require.True(t, assertEventually(func() bool { return held.Load() == restartConsumers }, 15*time.Second),
			"%d of %d consumers hold a delivery", held.Load(), restartConsumers)
	}
	srv.stop(t)
	before := count()
	require.Less(t, before, restartEvents, "the server stopped in the middle of consumption")
	if mode == consumersRestart {
		for _, sub := range subs {
			require.NoError(t, sub.Close())
		}
		for _, stop := range stops {
			stop()
		}
	}
	close(release)
	srv.start(t)
	if mode == consumersRestart {
		startConsumers()
	}
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
	env  []string // added to the test's environment
	port int
	addr string
	out  *syncWriter // the process's stdout and stderr

	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd exited
}

// findProgram returns the first of preferred that exists, or else the program name on
// PATH or in /usr/sbin, /usr/bin or /usr/local/bin. A missing program fails the test
// when CI is set, and skips it otherwise.
func findProgram(t *testing.T, name string, preferred ...string) string {
	t.Helper()
	for _, path := range preferred {
		if _, err := os.Stat(path); err == nil {
			return path
		}
	}
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/usr/local/bin"} {
		if _, statErr := os.Stat(filepath.Join(dir, name)); statErr == nil {
			return filepath.Join(dir, name)
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed and CI is set: %v", name, err)
	}
	t.Skipf("%s is not installed: %v", name, err)
	return ""
}

// freePort returns a loopback TCP port that nothing listens on.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startPrivateServer starts the program at path with the arguments and the environment
// that command returns for a free port and a new temporary directory, and waits until
// it accepts connections on that port. When the test ends, the server is stopped with
// SIGTERM, and its process group killed if it has not exited 10s later.
func startPrivateServer(t *testing.T, path string, command func(port int, dir string) (args, env []string)) *privateServer {
	t.Helper()
	port := freePort(t)
	args, env := command(port, t.TempDir())
	s := &privateServer{
		name: filepath.Base(path),
		path: path,
		args: args,
		env:  env,
		port: port,
		addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		out:  &syncWriter{w: &limitedBuffer{max: 64 << 10}},
	}
	t.Cleanup(func() {
		if s.cmd != nil {
			// SIGTERM first: a script killed together with the server it runs (the
			// RabbitMQ one) leaves the server orphaned until it exited.
			_ = s.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-s.exited:
			case <-time.After(10 * time.Second):
				_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL) // its process group
				<-s.exited
			}
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", s.name, s.out.w)
		}
	})
	s.start(t)
	return s
}

// start starts the server, in a process group of its own, and waits until it accepts
// connections.
func (s *privateServer) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command(s.path, s.args...)
	cmd.Env = append(os.Environ(), s.env...)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = time.Second // for children that keep its output open
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
