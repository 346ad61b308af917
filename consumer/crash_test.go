package consumer_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dlq"
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
