package consumer_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
)

// The crash test runs this test binary again as a consumer process (crashChild) that
// receives one message per run; its handler hangs, and the parent kills the process
// mid-handler, as an OOM kill or a crash would.
const crashChildEnv = "IDEM_TEST_CRASH_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		os.Exit(crashChild())
	}
	if os.Getenv(batchChildEnv) != "" {
		os.Exit(batchChild())
	}
	if os.Getenv(releaseChildEnv) != "" {
		os.Exit(releaseChild())
	}
	os.Exit(m.Run())
}

func crashChild() int {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("TEST_DATABASE_URL"))
	if err != nil {
		fmt.Println("error:", err)
		return 2
	}
	defer pool.Close()
	store, err := postgres.New(pool, postgres.Config{Schema: os.Getenv(crashChildEnv)})
	if err != nil {
		fmt.Println("error:", err)
		return 2
	}
	c, err := consumer.New(consumer.Config{Store: store, CrashGuard: 3, Logger: discardLogger()})
	if err != nil {
		fmt.Println("error:", err)
		return 2
	}
	h := c.WrapConsumer("orders", func(msg *message.Message) error {
		fmt.Println("in handler")
		select {} // hang until killed
	})
	if err := h(newMessage("evt-crash", "boom")); err != nil {
		fmt.Println("nacked:", err)
		return 1
	}
	fmt.Println("acked")
	return 0
}

func TestCrashLoopingMessageIsDeadLettered(t *testing.T) {
	t.Parallel()
	b := setup(t)
	run := func() (killed bool, out string) {
		t.Helper()
		return runChild(t, crashChildEnv+"="+b.store.Schema(), "in handler")
	}

	for i := 1; i <= 3; i++ {
		killed, out := run()
		require.True(t, killed, "delivery %d runs the handler and dies in it; output:\n%s", i, out)
		require.Zero(t, b.deadLetters(t))
	}
	killed, out := run()
	require.False(t, killed, "the fourth delivery does not run the handler again")
	require.Equal(t, "acked", out)

	d, err := b.store.DeadLetter(context.Background(), "orders", "evt-crash")
	require.NoError(t, err)
	require.Equal(t, dlq.ReasonCrashLooped, d.Reason)
	require.Equal(t, 3, d.Attempts)
	require.Contains(t, d.Error, "never finished")

	// Another copy of the event (a duplicate publish, a redelivery) is dead-lettered at
	// once instead of crashing a consumer again: the count outlives the dead letter.
	killed, out = run()
	require.False(t, killed, "a fifth delivery does not run the handler either")
	require.Equal(t, "acked", out)
	d, err = b.store.DeadLetter(context.Background(), "orders", "evt-crash")
	require.NoError(t, err)
	require.Equal(t, 2, d.Count, "dead-lettered again, one row")

	// Replaying the dead letter resets the count: the replayed copy runs the handler.
	_, err = b.store.Replay(context.Background(), dlq.Change{IDs: []int64{d.ID}, Actor: dlq.Actor{OSUser: "op", Host: "h"}, Selector: "ids"},
		func() error { return nil })
	require.NoError(t, err)
	n, err := b.store.StartAttempt(context.Background(), dedupKey("orders", "evt-crash"))
	require.NoError(t, err)
	require.Equal(t, 1, n)
}

// runChild runs this test binary again as a consumer process, with env set, and
// SIGKILLs it when it prints killOn, as an OOM kill or a crash would. It returns
// whether it killed it, and everything it printed.
func runChild(t *testing.T, env, killOn string) (killed bool, out string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env, "TEST_DATABASE_URL="+testdbURL())
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	var lines []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if sc.Text() == killOn {
			require.NoError(t, cmd.Process.Kill())
			killed = true
		}
	}
	_ = cmd.Wait()
	return killed, strings.Join(lines, "\n")
}

// TestConcurrentDeliveriesAreNoCrashLoop: copies of one event delivered while the
// first still runs (a redelivery past the ack deadline, a copy claimed by another
// replica) started and have not finished, yet their process runs: none of them is a
// crash, even with the strictest crash guard, and the effect happens once.
func TestConcurrentDeliveriesAreNoCrashLoop(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// The replica has a pool of its own, as another process would: the copies wait
	// for the first one's claim holding a connection each.
	replica, err := postgres.New(testdb.Pool(t), postgres.Config{Schema: b.store.Schema()})
	require.NoError(t, err)
	t.Cleanup(replica.Close)

	entered, gate := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	handler := func(msg *message.Message) error {
		if calls.Add(1) == 1 {
			close(entered)
			<-gate
		}
		return b.effect(msg.Context(), msg)
	}
	wrap := func(store *postgres.Store) func(*message.Message) error {
		c, err := consumer.New(consumer.Config{Store: store, Retry: fastPolicy(), CrashGuard: 1, Logger: testLogger(t)})
		require.NoError(t, err)
		return c.WrapConsumer("orders", handler)
	}
	here, there := wrap(b.store), wrap(replica)

	errs := make(chan error, 5)
	go func() { errs <- here(newMessage("evt-slow", "p")) }()
	<-entered
	for _, h := range []func(*message.Message) error{here, here, there, there} {
		go func() { errs <- h(newMessage("evt-slow", "p")) }()
	}
	// Every copy has counted its start before the first one ends.
	require.Eventually(t, func() bool {
		return b.count(t, "SELECT coalesce(sum(started), 0)::int FROM "+b.store.Schema()+".started WHERE event_id = 'evt-slow'") == 5
	}, 10*time.Second, 10*time.Millisecond)
	close(gate)
	for range 5 {
		require.NoError(t, <-errs, "every copy is acked")
	}
	require.Zero(t, b.deadLetters(t), "no copy is taken for a crash loop")
	require.Equal(t, 1, b.effectsOf(t, "evt-slow"))
	require.Equal(t, int32(1), calls.Load(), "the copies are duplicates of the first")
}
