package transports_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/internal/testbroker"
)

// redisMaxIdleTime is how long a delivered message may stay unacknowledged before
// another consumer of the group claims it (XCLAIM), in these tests.
const redisMaxIdleTime = 10 * time.Second

// redisSubscriberConfig reads stream through consumer group group as consumer name.
// The subscriber closes its client when it closes: give each its own.
func redisSubscriberConfig(client redis.UniversalClient, group, name string, maxIdle time.Duration) redisstream.SubscriberConfig {
	return redisstream.SubscriberConfig{
		Client:        client,
		ConsumerGroup: group,
		Consumer:      name,
		MaxIdleTime:   maxIdle,
		ClaimInterval: maxIdle / 4,
		OldestId:      "0", // a group created after the first publish still reads it
	}
}

func newRedisClient(url string) (*redis.Client, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	opts.DialTimeout = 5 * time.Second
	return redis.NewClient(opts), nil
}

func redisClient(t *testing.T, url string) *redis.Client {
	t.Helper()
	client, err := newRedisClient(url)
	require.NoError(t, err)
	return client
}

// redisUnfinished describes what the group still holds of stream: entries not yet
// delivered to it, and entries delivered and not acknowledged (XPENDING).
func redisUnfinished(ctx context.Context, client *redis.Client, stream, group string) (string, error) {
	pending, err := client.XPending(ctx, stream, group).Result()
	if err != nil {
		return "", err
	}
	info, err := client.XInfoStream(ctx, stream).Result()
	if err != nil {
		return "", err
	}
	groups, err := client.XInfoGroups(ctx, stream).Result()
	if err != nil {
		return "", err
	}
	for _, g := range groups {
		if g.Name != group {
			continue
		}
		if pending.Count == 0 && g.LastDeliveredID == info.LastGeneratedID {
			return "", nil
		}
		return fmt.Sprintf("%d pending, last delivered %s of %s", pending.Count, g.LastDeliveredID, info.LastGeneratedID), nil
	}
	return "", fmt.Errorf("no consumer group %s on stream %s", group, stream)
}

func newRedisBroker(t *testing.T, _ *pgxpool.Pool) *broker {
	t.Helper()
	return redisBroker(t, testbroker.RedisURL(t), redisMaxIdleTime)
}

// redisBroker is a stream of its own on the Redis server at url, whose consumer group
// claims messages left idle for maxIdle.
func redisBroker(t *testing.T, url string, maxIdle time.Duration) *broker {
	t.Helper()
	stream := uniqueName("idem_test_")
	const group = "billing"

	admin := redisClient(t, url)
	t.Cleanup(func() {
		_ = admin.Del(context.Background(), stream).Err()
		_ = admin.Close()
	})
	pubClient := redisClient(t, url)
	t.Cleanup(func() { _ = pubClient.Close() })
	pub, err := redisstream.NewPublisher(redisstream.PublisherConfig{Client: pubClient}, watermill.NopLogger{})
	require.NoError(t, err)

	return &broker{
		system:      "redis",
		topic:       stream,
		ackDeadline: maxIdle,
		publisher:   pub,
		subscriber: func(t *testing.T, instance int) message.Subscriber {
			cfg := redisSubscriberConfig(redisClient(t, url), group, fmt.Sprintf("replica-%d", instance), maxIdle)
			sub, err := redisstream.NewSubscriber(cfg, watermill.NopLogger{})
			require.NoError(t, err)
			t.Cleanup(func() { _ = sub.Close() })
			return sub
		},
		unfinished: func(ctx context.Context) (string, error) {
			return redisUnfinished(ctx, admin, stream, group)
		},
	}
}

func TestRedisStreams(t *testing.T) {
	t.Parallel()
	runScenario(t, newRedisBroker)
}
