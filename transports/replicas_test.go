package transports_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/internal/testbroker"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
)

// TestReplicaProcesses runs this test binary again as consumer processes (replicaMain),
// configured through these variables.
const (
	replicaEnv       = "IDEM_TEST_REPLICA" // the replica's name; set only in a replica process
	replicaSchemaEnv = "IDEM_TEST_REPLICA_SCHEMA"
	replicaStreamEnv = "IDEM_TEST_REPLICA_STREAM"
	replicaHangEnv   = "IDEM_TEST_REPLICA_HANG" // "1": the handler hangs inside its transaction
	// replicaMaxIdle is the replicas' Redis MaxIdleTime: how soon the messages of a
	// killed replica are claimed by the others.
	replicaMaxIdle = 2 * time.Second
)

func TestMain(m *testing.M) {
	if name := os.Getenv(replicaEnv); name != "" {
		os.Exit(replicaMain(name))
	}
	os.Exit(m.Run())
}

// replicaMain consumes the stream with the whole stack until its stdin closes, then
// stops gracefully. It prints "ready" once consuming, and "holding <event>" when its
// handler hangs.
func replicaMain(name string) int {
	fail := func(err error) int {
		fmt.Println("error:", err)
		return 2
	}
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.URL())
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	schema := os.Getenv(replicaSchemaEnv)
	store, err := postgres.New(pool, postgres.Config{Schema: schema})
	if err != nil {
		return fail(err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("replica", name)
	c, err := consumer.New(consumer.Config{
		Store:           store,
		Retry:           retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond},
		AckDeadline:     replicaMaxIdle,
		MessagingSystem: "redis",
		Logger:          logger,
	})
	if err != nil {
		return fail(err)
	}
	url := os.Getenv("TEST_REDIS_URL")
	if url == "" {
		url = testbroker.DefaultRedisURL
	}
	client, err := newRedisClient(url)
	if err != nil {
		return fail(err)
	}
	stream := os.Getenv(replicaStreamEnv)
	sub, err := redisstream.NewSubscriber(redisSubscriberConfig(client, "billing", name, replicaMaxIdle), watermill.NopLogger{})
	if err != nil {
		return fail(err)
	}
	effects := pgx.Identifier{schema, "effects"}.Sanitize()
	hang := os.Getenv(replicaHangEnv) == "1"
	var stdout sync.Mutex
	say := func(a ...any) {
		stdout.Lock()
		defer stdout.Unlock()
		fmt.Println(a...)
	}

	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	if err != nil {
		return fail(err)
	}
	c.AddConsumerHandler(r, "billing", stream, sub, func(msg *message.Message) error {
		ctx := msg.Context()
		tx, ok := postgres.TxFromContext(ctx)
		if !ok {
			return postgres.ErrNoTx
		}
		id := msg.Metadata.Get("event_id")
		if _, err := tx.Exec(ctx, "INSERT INTO "+effects+" (event_id, replica) VALUES ($1, $2)", id, name); err != nil {
			return err
		}
		if hang {
			say("holding", id)
			select {} // until killed, with the claim and the effect uncommitted
		}
		return nil
	})
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	select {
	case <-r.Running():
	case err := <-done:
		return fail(err)
	}
	say("ready")
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes stdin
	cancel()
	if err := r.Close(); err != nil {
		return fail(err)
	}
	if err := <-done; err != nil {
		return fail(err)
	}
	say("stopped")
	return 0
}

// replica is a running replica process.
type replica struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // its stdout
	stderr *bytes.Buffer
	exited chan struct{}
}

func startReplica(t *testing.T, ctx context.Context, name, schema, stream string, hang bool) *replica {
	t.Helper()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	h := "0"
	if hang {
		h = "1"
	}
	cmd.Env = append(os.Environ(), replicaEnv+"="+name, replicaSchemaEnv+"="+schema, replicaStreamEnv+"="+stream,
		replicaHangEnv+"="+h, "TEST_DATABASE_URL="+testdb.URL(), "TEST_REDIS_URL="+testbroker.RedisURL(t))
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	rp := &replica{name: name, cmd: cmd, stdin: stdin, lines: make(chan string, 100), stderr: &bytes.Buffer{}, exited: make(chan struct{})}
	cmd.Stderr = &syncWriter{w: rp.stderr}
	require.NoError(t, cmd.Start())
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			rp.lines <- sc.Text()
		}
		close(rp.lines)
	}()
	go func() {
		_ = cmd.Wait()
		close(rp.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-rp.exited
		if t.Failed() {
			t.Logf("replica %s stderr:\n%s", name, rp.stderr)
		}
	})
	rp.expect(t, "ready")
	return rp
}

// expect waits for the replica to print a line that starts with prefix, and returns it.
func (rp *replica) expect(t *testing.T, prefix string) string {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case line, ok := <-rp.lines:
			if !ok {
				t.Fatalf("replica %s exited before printing %q; stderr:\n%s", rp.name, prefix, rp.stderr)
			}
			if strings.HasPrefix(line, prefix) {
				return line
			}
			if strings.HasPrefix(line, "error:") {
				t.Fatalf("replica %s: %s", rp.name, line)
			}
		case <-timeout:
			t.Fatalf("replica %s did not print %q within 15s", rp.name, prefix)
		}
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

// Three consumer processes and a fourth that is killed while it holds messages share
// one Redis Streams consumer group and one PostgreSQL schema; every event is published
// two or three times. Each event's effect commits exactly once, nothing is lost, and the
// group ends with nothing pending.
func TestReplicaProcesses(t *testing.T) {
	t.Parallel()
	start := time.Now()
	store, pool := testdb.Store(t)
	br := newRedisBroker(t, pool) // the stream and the admin client; its subscribers are unused
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	effects := pgx.Identifier{store.Schema(), "effects"}.Sanitize()
	_, err := pool.Exec(ctx, "CREATE TABLE "+effects+" (event_id text NOT NULL, replica text NOT NULL)")
	require.NoError(t, err)

	const events = 60
	publish := func(from, to int) {
		var msgs []*message.Message
		for i := from; i < to; i++ {
			id := fmt.Sprintf("evt-%03d", i)
			msgs = append(msgs, newMessage(id, id), newMessage(id, id)) // a duplicate right behind
			if i%4 == 0 {
				msgs = append(msgs, newMessage(fmt.Sprintf("evt-%03d", i/2), "late duplicate"))
			}
		}
		require.NoError(t, br.publisher.Publish(br.topic, msgs...))
	}

	// The victim consumes alone first, so that it surely holds a message when killed.
	victim := startReplica(t, ctx, "victim", store.Schema(), br.topic, true)
	publish(0, 10)
	held := strings.TrimPrefix(victim.expect(t, "holding "), "holding ")

	var replicas []*replica
	for i := range 3 {
		replicas = append(replicas, startReplica(t, ctx, fmt.Sprintf("replica-%d", i), store.Schema(), br.topic, false))
	}
	publish(10, events)
	require.NoError(t, victim.cmd.Process.Kill()) // SIGKILL, mid-handler, inside its transaction
	<-victim.exited

	var last string
	ok := assertEventually(func() bool {
		var n int
		require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{store.Schema(), "processed"}.Sanitize()).Scan(&n))
		unfinished, err := br.unfinished(ctx)
		require.NoError(t, err)
		last = fmt.Sprintf("processed %d/%d, broker: %q", n, events, unfinished)
		return n == events && unfinished == ""
	}, 20*time.Second)
	require.True(t, ok, "not done after 20s: %s", last)
	for _, rp := range replicas {
		require.NoError(t, rp.stdin.Close())
		rp.expect(t, "stopped")
		<-rp.exited
		require.Zero(t, rp.cmd.ProcessState.ExitCode(), "replica %s; stderr:\n%s", rp.name, rp.stderr)
	}
	unfinished, err := br.unfinished(ctx)
	require.NoError(t, err)
	require.Empty(t, unfinished)

	rows, err := pool.Query(ctx, "SELECT event_id, replica FROM "+effects)
	require.NoError(t, err)
	applied := map[string]int{}
	byReplica := map[string]int{}
	for rows.Next() {
		var id, name string
		require.NoError(t, rows.Scan(&id, &name))
		applied[id]++
		byReplica[name]++
	}
	require.NoError(t, rows.Err())
	want := map[string]int{}
	for i := range events {
		want[fmt.Sprintf("evt-%03d", i)] = 1
	}
	require.Equal(t, want, applied, "each event's effect committed exactly once")
	require.Zero(t, byReplica["victim"], "the killed replica's transaction rolled back")
	t.Logf("effects by replica %v; the victim held %s; %s", byReplica, held, time.Since(start).Round(time.Millisecond))
}
