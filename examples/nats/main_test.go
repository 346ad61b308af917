package main

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/examples/internal/demo"
	"github.com/idemkit/idem/internal/testbroker"
)

func TestNATSExample(t *testing.T) {
	t.Parallel()
	url := testbroker.NATSURL(t)
	demo.RunOnBothStores(t, run, func(stream string) []string {
		return []string{"-nats-url", url, "-stream", stream}
	}, func(t *testing.T, stream, out string) {
		require.Contains(t, out, "stream "+stream+" deleted (0 messages unacknowledged)\n")

		conn, err := nats.Connect(url)
		require.NoError(t, err)
		defer conn.Close()
		js, err := conn.JetStream()
		require.NoError(t, err)
		_, err = js.StreamInfo(stream)
		require.ErrorIs(t, err, nats.ErrStreamNotFound, "the stream is gone")
	})
}
