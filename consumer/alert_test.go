package consumer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/retry"
)

// hookServer is a real webhook endpoint on loopback that can hang until released.
type hookServer struct {
	*httptest.Server
	release chan struct{}
	mu      sync.Mutex
	bodies  []string
}

func newHookServer(t *testing.T) *hookServer {
	h := &hookServer{release: make(chan struct{})}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-h.release
		var b strings.Builder
		_, _ = fmt.Fprint(&b, jsonBody(r))
		h.mu.Lock()
		h.bodies = append(h.bodies, b.String())
		h.mu.Unlock()
	}))
	t.Cleanup(h.Close)
	return h
}

func jsonBody(r *http.Request) string {
	var v map[string]any
	_ = json.NewDecoder(r.Body).Decode(&v)
	b, _ := json.Marshal(v)
	return string(b)
}

func (h *hookServer) got() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.bodies...)
}

func TestAHungWebhookNeverSlowsConsumption(t *testing.T) {
	t.Parallel()
	b := setup(t)
	hook := newHookServer(t)
	webhook, err := dlq.NewWebhook(dlq.WebhookConfig{URL: hook.URL, Timeout: time.Minute})
	require.NoError(t, err)
	alerts, err := dlq.NewDispatcher(dlq.DispatcherConfig{Alerters: []dlq.Alerter{webhook}, Window: time.Hour, Logger: discardLogger()})
	require.NoError(t, err)
	c, err := consumer.New(consumer.Config{Store: b.store, Retry: fastPolicy(), Alerts: alerts, Logger: discardLogger()})
	require.NoError(t, err)
	h := c.WrapConsumer("orders", func(msg *message.Message) error {
		return retry.Permanent(fmt.Errorf("order %s: unknown currency", msg.Metadata.Get("event_id")))
	})

	const n = 50
	start := time.Now()
	for i := range n {
		require.NoError(t, deliver(h, newMessage(fmt.Sprintf("evt-%d", i), "x")))
	}
	elapsed := time.Since(start)
	require.Equal(t, n, b.deadLetters(t), "every poison message was stored and acked while the webhook hangs")
	require.Empty(t, hook.got(), "the webhook has not answered yet")
	t.Logf("%d dead letters stored and acked in %s (%s each) while the webhook hung", n, elapsed, elapsed/n)

	close(hook.release)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, alerts.Close(ctx))
	bodies := hook.got()
	require.Len(t, bodies, 2, "one immediate alert and one summary")
	require.Contains(t, bodies[1], `"count":49`)
	require.Zero(t, alerts.Dropped())
}

func TestSecretsNeverReachADeadLetterOrAnAlert(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rec := &alertRecorder{}
	alerts, err := dlq.NewDispatcher(dlq.DispatcherConfig{Alerters: []dlq.Alerter{rec}, Logger: discardLogger()})
	require.NoError(t, err)
	c, err := consumer.New(consumer.Config{Store: b.store, Retry: fastPolicy(), Alerts: alerts, Logger: discardLogger()})
	require.NoError(t, err)
	h := c.WrapConsumer("orders", func(msg *message.Message) error {
		return retry.Permanent(fmt.Errorf("connect postgres://app:pa55word@db:5432/orders: refused; Authorization: Bearer eyJhbGciOi.secretpart.sig"))
	})
	msg := newMessage("evt-1", "x")
	msg.Metadata.Set("Authorization", "Bearer s3cr3t-token")
	msg.Metadata.Set("cookie", "session=abcd1234")
	msg.Metadata.Set("tenant", "acme")
	require.NoError(t, deliver(h, msg))
	require.NoError(t, alerts.Close(context.Background()))

	var stored string
	require.NoError(t, b.pool.QueryRow(context.Background(), "SELECT d::text FROM "+
		pgx.Identifier{b.store.Schema(), "dead_letters"}.Sanitize()+" d").Scan(&stored))
	seen := stored + fmt.Sprintf("%+v", rec.got())
	for _, secret := range []string{"pa55word", "secretpart", "s3cr3t-token", "abcd1234"} {
		require.NotContains(t, seen, secret)
	}
	require.Contains(t, stored, "acme", "other metadata is kept")
	require.Len(t, rec.got(), 1)
}

type alertRecorder struct {
	mu     sync.Mutex
	alerts []dlq.Alert
}

func (r *alertRecorder) Alert(_ context.Context, a dlq.Alert) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.alerts = append(r.alerts, a)
	return nil
}

func (r *alertRecorder) got() []dlq.Alert {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]dlq.Alert(nil), r.alerts...)
}
