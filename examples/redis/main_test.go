package main

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/examples/internal/demo"
	"github.com/idemkit/idem/internal/testbroker"
)

func TestRedisExample(t *testing.T) {
	t.Parallel()
	url := testbroker.RedisURL(t)
	demo.RunOnBothStores(t, run, func(stream string) []string {
		return []string{"-redis-url", url, "-stream", stream}
	}, func(t *testing.T, stream, out string) {
		require.Contains(t, out, "stream "+stream+" deleted (0 messages pending)\n")

		opts, err := redis.ParseURL(url)
		require.NoError(t, err)
		client := redis.NewClient(opts)
		defer client.Close()
		n, err := client.Exists(context.Background(), stream).Result()
		require.NoError(t, err)
		require.Zero(t, n, "the stream is gone")
	})
}
