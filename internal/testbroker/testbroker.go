// Package testbroker gives tests the message brokers that run beside the test
// database: RabbitMQ, NATS with JetStream and Redis. Each accessor returns the
// broker's URL from its environment variable (or the local default), after checking
// that something listens there: the test is skipped when nothing does, and fails
// when CI is set, as internal/testdb does for PostgreSQL.
package testbroker

import (
	"net"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"
)

// The default URLs, used when the environment variables are not set.
const (
	DefaultAMQPURL  = "amqp://guest:guest@127.0.0.1:5672/"
	DefaultNATSURL  = "nats://127.0.0.1:4222"
	DefaultRedisURL = "redis://127.0.0.1:6379/0"
)

// AMQPURL returns $TEST_AMQP_URL (default DefaultAMQPURL), a RabbitMQ.
func AMQPURL(t testing.TB) string {
	t.Helper()
	return require(t, "TEST_AMQP_URL", DefaultAMQPURL, "5672")
}

// NATSURL returns $TEST_NATS_URL (default DefaultNATSURL), a NATS server with
// JetStream enabled.
func NATSURL(t testing.TB) string {
	t.Helper()
	return require(t, "TEST_NATS_URL", DefaultNATSURL, "4222")
}

// RedisURL returns $TEST_REDIS_URL (default DefaultRedisURL).
func RedisURL(t testing.TB) string {
	t.Helper()
	return require(t, "TEST_REDIS_URL", DefaultRedisURL, "6379")
}

var reach sync.Map // address -> error, checked once per process

func require(t testing.TB, env, def, port string) string {
	t.Helper()
	raw := os.Getenv(env)
	if raw == "" {
		raw = def
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("%s=%q does not parse: %v", env, raw, err)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), port)
	}
	v, _ := reach.LoadOrStore(addr, sync.OnceValue(func() error {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}))
	if err := v.(func() error)(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s at %s is not reachable and CI is set: %v", env, addr, err)
		}
		t.Skipf("%s at %s is not reachable (set %s): %v", env, addr, env, err)
	}
	return raw
}
