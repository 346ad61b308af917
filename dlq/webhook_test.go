package dlq_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dlq"
)

func sampleAlert() dlq.Alert {
	return dlq.Alert{
		Fingerprint: "0123456789abcdef", Consumer: "billing", Topic: "orders", Reason: dlq.ReasonExhausted,
		Error: "charge failed: gateway 503", Count: 1, EventIDs: []string{"evt-1"}, CorrelationID: "corr-1",
		First: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Last: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}
}

func TestWebhook(t *testing.T) {
	t.Parallel()

	t.Run("PostsASlackCompatibleBody", func(t *testing.T) {
		t.Parallel()
		var got dlq.WebhookBody
		var header string
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			header = r.Header.Get("Authorization")
			require.Equal(t, "application/json", r.Header.Get("Content-Type"))
			body, _ := io.ReadAll(r.Body)
			require.NoError(t, json.Unmarshal(body, &got))
			var raw map[string]any
			require.NoError(t, json.Unmarshal(body, &raw))
			require.IsType(t, "", raw["text"], "Slack needs a top-level text string")
		}))
		t.Cleanup(srv.Close)
		w, err := dlq.NewWebhook(dlq.WebhookConfig{URL: srv.URL, Headers: map[string]string{"Authorization": "Bearer t0k"}})
		require.NoError(t, err)
		require.NoError(t, w.Alert(context.Background(), sampleAlert()))
		require.Equal(t, "Bearer t0k", header)
		require.Contains(t, got.Text, "consumer billing")
		require.Contains(t, got.Text, "evt-1")
		require.Equal(t, "billing", got.Alert.Consumer)
		require.Equal(t, "exhausted", got.Alert.Reason)
		require.Equal(t, []string{"evt-1"}, got.Alert.EventIDs)
	})

	t.Run("ErrorsNeverHoldTheURLsSecrets", func(t *testing.T) {
		t.Parallel()
		const secret = "s3cr3tPathPart"
		failing := &http.Client{Transport: roundTripFunc(func(*http.Request) (*http.Response, error) {
			return nil, errors.New("connection refused")
		})}
		w, err := dlq.NewWebhook(dlq.WebhookConfig{
			URL:    "https://hooks.slack.com/services/T0000/B0000/" + secret + "?token=" + secret,
			Client: failing, Retries: -1,
		})
		require.NoError(t, err)
		err = w.Alert(context.Background(), sampleAlert())
		require.ErrorContains(t, err, "connection refused")
		require.NotContains(t, err.Error(), secret)
		_, err = dlq.NewWebhook(dlq.WebhookConfig{URL: "ftp://u:" + secret + "@host/x"})
		require.ErrorContains(t, err, "must be an http or https URL")
		require.NotContains(t, err.Error(), secret)
	})

	t.Run("RetriesServerErrorsThenSucceeds", func(t *testing.T) {
		t.Parallel()
		var calls atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if calls.Add(1) <= 2 {
				w.WriteHeader(http.StatusInternalServerError)
			}
		}))
		t.Cleanup(srv.Close)
		w, err := dlq.NewWebhook(dlq.WebhookConfig{URL: srv.URL, Backoff: time.Millisecond})
		require.NoError(t, err)
		require.NoError(t, w.Alert(context.Background(), sampleAlert()))
		require.Equal(t, int32(3), calls.Load())
	})

	t.Run("GivesUpAfterTheRetries", func(t *testing.T) {
		t.Parallel()
		var calls atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			w.WriteHeader(http.StatusBadGateway)
		}))
		t.Cleanup(srv.Close)
		w, err := dlq.NewWebhook(dlq.WebhookConfig{URL: srv.URL, Backoff: time.Millisecond, Retries: 2})
		require.NoError(t, err)
		err = w.Alert(context.Background(), sampleAlert())
		require.ErrorContains(t, err, "502")
		require.Equal(t, int32(3), calls.Load())
	})

	t.Run("ClientErrorsAreNotRetried", func(t *testing.T) {
		t.Parallel()
		var calls atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			w.WriteHeader(http.StatusForbidden)
		}))
		t.Cleanup(srv.Close)
		w, err := dlq.NewWebhook(dlq.WebhookConfig{URL: srv.URL, Backoff: time.Millisecond})
		require.NoError(t, err)
		require.ErrorContains(t, w.Alert(context.Background(), sampleAlert()), "403")
		require.Equal(t, int32(1), calls.Load())
	})

	t.Run("AHangingServerTimesOut", func(t *testing.T) {
		t.Parallel()
		release := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}))
		t.Cleanup(func() { close(release); srv.Close() })
		w, err := dlq.NewWebhook(dlq.WebhookConfig{URL: srv.URL, Timeout: 50 * time.Millisecond, Retries: -1})
		require.NoError(t, err)
		err = w.Alert(context.Background(), sampleAlert())
		require.ErrorIs(t, err, context.DeadlineExceeded)
	})

	t.Run("TheURLIsNeverPrintedWithItsToken", func(t *testing.T) {
		t.Parallel()
		_, err := dlq.NewWebhook(dlq.WebhookConfig{URL: "ftp://user:hunter2@example.invalid/x"})
		require.Error(t, err)
		require.NotContains(t, err.Error(), "hunter2")
		w, err := dlq.NewWebhook(dlq.WebhookConfig{URL: "http://user:hunter2@127.0.0.1:1/hook", Retries: -1})
		require.NoError(t, err)
		err = w.Alert(context.Background(), sampleAlert())
		require.Error(t, err)
		require.NotContains(t, err.Error(), "hunter2")
	})

	t.Run("ThroughTheDispatcherASlowWebhookLosesNothing", func(t *testing.T) {
		t.Parallel()
		var mu sync.Mutex
		var counts []int
		release := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-release
			var b dlq.WebhookBody
			_ = json.NewDecoder(r.Body).Decode(&b)
			mu.Lock()
			counts = append(counts, b.Alert.Count)
			mu.Unlock()
		}))
		t.Cleanup(srv.Close)
		w, err := dlq.NewWebhook(dlq.WebhookConfig{URL: srv.URL})
		require.NoError(t, err)
		d, err := dlq.NewDispatcher(dlq.DispatcherConfig{Alerters: []dlq.Alerter{w}, Window: time.Hour, Logger: quiet()})
		require.NoError(t, err)
		for i := range 500 {
			d.Notify(letter("fp", i))
		}
		close(release)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, d.Close(ctx))
		mu.Lock()
		defer mu.Unlock()
		require.Equal(t, []int{1, 499}, counts, "one immediate alert, one summary: every dead letter accounted for")
	})
}

func TestAlertText(t *testing.T) {
	t.Parallel()
	a := sampleAlert()
	require.True(t, strings.HasPrefix(a.Text(), "idem: message dead-lettered"))
	a.Summary, a.Count = true, 41
	require.Contains(t, a.Text(), "41 more dead letters")
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
