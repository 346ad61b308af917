package dlq

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"time"
)

// Defaults of [WebhookConfig].
const (
	DefaultWebhookTimeout = 5 * time.Second
	DefaultWebhookRetries = 3
	DefaultWebhookBackoff = 500 * time.Millisecond
)

// WebhookConfig configures [NewWebhook].
type WebhookConfig struct {
	// URL receives a POST with a JSON body per alert. Required.
	URL string
	// Headers are added to every request (an Authorization header, say).
	Headers map[string]string
	// Timeout bounds one request. Defaults to DefaultWebhookTimeout.
	Timeout time.Duration
	// Retries is how many times a request that failed with a network error, a 429 or a
	// 5xx is tried again. Defaults to DefaultWebhookRetries; -1 means never.
	Retries int
	// Backoff is the first wait before a retry; it doubles each time, with full jitter.
	// Defaults to DefaultWebhookBackoff.
	Backoff time.Duration
	// Client sends the requests. Defaults to a client with no timeout of its own
	// (Timeout applies per request).
	Client *http.Client
}

// WebhookBody is the JSON the webhook posts: Text makes it a valid Slack incoming-webhook
// message (and Mattermost, Rocket.Chat, …); Alert carries the structured fields.
type WebhookBody struct {
	Text  string       `json:"text"`
	Alert WebhookAlert `json:"alert"`
}

// WebhookAlert is the structured part of a [WebhookBody], with stable snake_case keys.
type WebhookAlert struct {
	Fingerprint   string    `json:"fingerprint"`
	Consumer      string    `json:"consumer"`
	Topic         string    `json:"topic"`
	Reason        string    `json:"reason"`
	Error         string    `json:"error"`
	Count         int       `json:"count"`
	Summary       bool      `json:"summary"`
	EventIDs      []string  `json:"event_ids"`
	CorrelationID string    `json:"correlation_id"`
	TraceID       string    `json:"trace_id"`
	First         time.Time `json:"first"`
	Last          time.Time `json:"last"`
}

// Webhook is an Alerter that posts each alert to an HTTP endpoint. It is safe for
// concurrent use.
type Webhook struct {
	cfg WebhookConfig
}

// NewWebhook checks cfg and returns a Webhook.
func NewWebhook(cfg WebhookConfig) (*Webhook, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("dlq: WebhookConfig.URL must be an http or https URL, got %q", RedactURL(cfg.URL))
	}
	cfg.Timeout = cmp.Or(cfg.Timeout, DefaultWebhookTimeout)
	cfg.Retries = cmp.Or(cfg.Retries, DefaultWebhookRetries)
	cfg.Backoff = cmp.Or(cfg.Backoff, DefaultWebhookBackoff)
	cfg.Client = cmp.Or(cfg.Client, &http.Client{})
	switch {
	case cfg.Timeout < 0:
		return nil, fmt.Errorf("dlq: WebhookConfig.Timeout must not be negative, got %s", cfg.Timeout)
	case cfg.Retries < -1:
		return nil, fmt.Errorf("dlq: WebhookConfig.Retries must be -1 (never) or more, got %d", cfg.Retries)
	case cfg.Backoff < 0:
		return nil, fmt.Errorf("dlq: WebhookConfig.Backoff must not be negative, got %s", cfg.Backoff)
	}
	if cfg.Retries == -1 {
		cfg.Retries = 0
	}
	return &Webhook{cfg: cfg}, nil
}

// Alert posts a, retrying on network errors, 429 and 5xx answers with backoff, until
// it succeeds, the retries are spent or ctx ends.
func (w *Webhook) Alert(ctx context.Context, a Alert) error {
	body, err := json.Marshal(WebhookBody{Text: a.Text(), Alert: WebhookAlert{
		Fingerprint: a.Fingerprint, Consumer: a.Consumer, Topic: a.Topic, Reason: string(a.Reason),
		Error: a.Error, Count: a.Count, Summary: a.Summary, EventIDs: a.EventIDs,
		CorrelationID: a.CorrelationID, TraceID: a.TraceID, First: a.First.UTC(), Last: a.Last.UTC(),
	}})
	if err != nil {
		return fmt.Errorf("dlq: webhook: encode alert: %w", err)
	}
	var last error
	for attempt := 0; attempt <= w.cfg.Retries; attempt++ {
		if attempt > 0 {
			limit := w.cfg.Backoff << (attempt - 1)
			t := time.NewTimer(time.Duration(rand.Int64N(int64(limit) + 1)))
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("dlq: webhook %s: %w (last failure: %w)", RedactURL(w.cfg.URL), ctx.Err(), last)
			}
		}
		retry, err := w.post(ctx, body)
		if err == nil {
			return nil
		}
		last = err
		if !retry {
			break
		}
	}
	return last
}

func (w *Webhook) post(ctx context.Context, body []byte) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("dlq: webhook: build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range w.cfg.Headers {
		req.Header.Set(k, v)
	}
	resp, err := w.cfg.Client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // the URL may hold a token; say it once, redacted
		}
		return true, fmt.Errorf("dlq: webhook %s: %w", RedactURL(w.cfg.URL), err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return false, nil
	}
	return resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500,
		fmt.Errorf("dlq: webhook %s answered %s", RedactURL(w.cfg.URL), resp.Status)
}
