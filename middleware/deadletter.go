package middleware

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/retry"
)

// EventTypeKey and EventVersionKey are the metadata keys a producer sets to name an
// event's type and schema version; dead letters record them.
const (
	EventTypeKey    = "event_type"
	EventVersionKey = "event_version"
)

// redactSecrets returns md with the values of secret-looking keys (authorization,
// cookie, token, …) replaced, and every other value as it came.
func redactSecrets(md message.Metadata) map[string]string {
	out := make(map[string]string, len(md))
	for k, v := range md {
		if dlq.IsSecretKey(k) {
			v = "REDACTED"
		}
		out[k] = v
	}
	return out
}

// DeadLetterConfig configures [DeadLetter].
type DeadLetterConfig struct {
	// Store keeps the dead letters. Required.
	Store dlq.Store
	// Policy classifies failures and says how many attempts an event gets; use the
	// same Policy as [Retry]. Its zero value is ready to use.
	Policy retry.Policy
	// Consumer names the dedup scope; it must pass dedup.ValidateConsumer. Defaults to
	// the Watermill handler name (a message whose handler name does not pass is
	// dead-lettered as malformed).
	Consumer string
	// KeyFunc extracts the event ID. Defaults to dedup.FromMetadata(dedup.MetadataKey).
	KeyFunc dedup.KeyFunc
	// FingerprintFunc groups dead letters by cause. Defaults to dlq.Fingerprint.
	FingerprintFunc func(consumer string, err error) string
	// Timeout bounds storing a dead letter, which runs detached from the delivery's
	// cancellation so that a shutdown cannot cut it short. Defaults to
	// DefaultBookkeepingTimeout.
	Timeout time.Duration
	// Notifiers are told of every dead letter once it committed: *dlq.Dispatcher
	// turns them into aggregated alerts, *dlq.TopicPublisher publishes them to a
	// dead-letter topic; neither ever blocks. Defaults to none: the dead-lettering is
	// only logged, at error level.
	Notifiers []Notifier
	// Parker, when set, turns on delayed retries: a transient failure with attempts
	// left is parked in the store for its next attempt, due after the backoff, and
	// acked, instead of handed back to the broker, where it would block what follows
	// it (watermill-sql, Kafka and Redis resend in place). A [Redeliverer] publishes
	// it again when due; its attempts keep counting, and the dead-letter rules are
	// unchanged. A message consumed without a topic in its context is handed back as
	// before. Defaults to nil: handed back.
	Parker dedup.Parker
	// Ordering is the Dedup middleware's ordering configuration, when ordering is on:
	// DeadLetter reads GapTimeout from it (see OrderingConfig). Defaults to off.
	Ordering OrderingConfig
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Notifier is told of each dead letter after it committed. Notify must not block;
// *dlq.Dispatcher implements it.
type Notifier interface {
	Notify(d *dlq.DeadLetter)
}

// DeadLetter decides each delivery's final outcome. Success and duplicates are acked.
// A permanent failure, or a transient one on the event's last allowed attempt, is
// stored as a dead letter and acked only once that committed. A message without a
// usable event ID is dead-lettered at once under a key derived from its content.
// Everything that is not the message's fault (a cancelled context, an infrastructure
// error, a failing dead-letter store) is handed back to the broker (nacked) after a
// back-off that grows while such failures go on, and never dead-lettered. A transient
// failure with attempts left is handed back for redelivery.
func DeadLetter(cfg DeadLetterConfig) (message.HandlerMiddleware, error) {
	if cfg.Store == nil {
		return nil, errors.New("middleware: DeadLetterConfig.Store is required")
	}
	if err := validConsumer(cfg.Consumer); err != nil {
		return nil, fmt.Errorf("middleware: DeadLetterConfig.Consumer: %w", err)
	}
	if err := cfg.Ordering.Validate(); err != nil {
		return nil, fmt.Errorf("middleware: DeadLetterConfig.Ordering: %w", err)
	}
	if _, ok := cfg.Store.(dedup.Quarantiner); cfg.Ordering.Quarantine && !ok {
		return nil, fmt.Errorf("middleware: DeadLetterConfig.Ordering.Quarantine needs a store that quarantines entities (dedup.Quarantiner); %T does not", cfg.Store)
	}
	p := cfg.Policy.WithDefaults()
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("middleware: DeadLetterConfig.Policy: %w", err)
	}
	dl := &deadLetterer{
		store:       cfg.Store,
		policy:      p,
		consumer:    cfg.Consumer,
		keyFunc:     cfg.KeyFunc,
		fingerprint: cfg.FingerprintFunc,
		timeout:     cmp.Or(cfg.Timeout, DefaultBookkeepingTimeout),
		notifiers:   cfg.Notifiers,
		parker:      cfg.Parker,
		gapTimeout:  cfg.Ordering.gapTimeout(),
		quarantine:  cfg.Ordering.Quarantine,
		logger:      cmp.Or(cfg.Logger, slog.Default()),
	}
	if dl.fingerprint == nil {
		dl.fingerprint = dlq.Fingerprint
	}
	host, _ := os.Hostname()
	dl.host = dlq.Storable(host, 0)
	return dl.middleware, nil
}

type deadLetterer struct {
	store       dlq.Store
	policy      retry.Policy
	consumer    string
	keyFunc     dedup.KeyFunc
	fingerprint func(string, error) string
	timeout     time.Duration
	logger      *slog.Logger
	host        string
	notifiers   []Notifier
	parker      dedup.Parker
	gapTimeout  time.Duration
	quarantine  bool
	// deferrals counts consecutive deliveries handed back for reasons that are not the
	// message's fault; it paces consumption while they go on.
	deferrals atomic.Int64
}

func (dl *deadLetterer) middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		d := keyedDeliveryOf(msg, dl.consumer, dl.keyFunc)
		if d.keyErr != nil {
			d.key.EventID = dedup.DerivedKey(msg)
			return dl.deadLetter(msg, d, dlq.ReasonMalformed, d.keyErr, 1)
		}
		produced, err := h(msg)
		if err == nil {
			dl.deferrals.Store(0)
			if d.outcome == 0 {
				d.outcome = dedup.Processed
			}
			return produced, nil
		}
		class := dl.policy.Class(err)
		var gap *dedup.GapError
		switch {
		case msg.Context().Err() == nil && errors.As(err, &gap) && dl.gapTimeout >= 0 && gap.Open >= dl.gapTimeout:
			return dl.deadLetter(msg, d, dlq.ReasonGap, err, max(d.failures, 1))
		case msg.Context().Err() != nil || class == retry.ClassInfrastructure:
			return dl.deferral(msg, d, err)
		case errors.As(err, new(*CrashLoopError)):
			return dl.deadLetter(msg, d, dlq.ReasonCrashLooped, err, max(d.failures, 1))
		case errors.Is(err, dedup.ErrInvalidEntity):
			return dl.deadLetter(msg, d, dlq.ReasonMalformed, err, 1)
		case class == retry.ClassPermanent:
			return dl.deadLetter(msg, d, dlq.ReasonPermanent, err, max(d.failures, 1))
		case d.failures >= dl.policy.MaxAttempts:
			return dl.deadLetter(msg, d, dlq.ReasonExhausted, err, d.failures)
		}
		if topic := message.SubscribeTopicFromCtx(msg.Context()); dl.parker != nil && topic != "" {
			return dl.park(msg, d, topic, err)
		}
		d.outcome = dedup.Retried
		dl.logger.LogAttrs(msg.Context(), slog.LevelWarn, "idem: attempt failed, handing the message back for redelivery",
			append(logAttrs(msg, d), slog.Int("failures", d.failures), slog.Int("max_attempts", dl.policy.MaxAttempts), slog.String("error", err.Error()))...)
		return nil, err
	}
}

// park keeps msg in the store for its next attempt, due after the backoff, and acks
// it; when parking fails, msg is handed back to the broker, not its fault.
func (dl *deadLetterer) park(msg *message.Message, d *delivery, topic string, cause error) ([]*message.Message, error) {
	ctx := msg.Context()
	delay := d.nextWait
	if delay == 0 {
		delay = dl.policy.Delay(max(d.failures, 1), cause)
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dl.timeout)
	defer cancel()
	err := dl.parker.Park(wctx, dedup.Parked{Key: d.key, Topic: topic, Payload: msg.Payload, Metadata: maps.Clone(msg.Metadata), Delay: delay})
	if err != nil {
		return dl.deferral(msg, d, retry.Infrastructure(fmt.Errorf("parking the message for a delayed retry failed, it goes back to the broker: %w (the message failed with: %v)", err, cause)))
	}
	d.outcome, d.parkedFor = dedup.Retried, delay
	dl.deferrals.Store(0)
	dl.logger.LogAttrs(ctx, slog.LevelWarn, "idem: attempt failed, parked for a delayed retry",
		append(logAttrs(msg, d), slog.Int("failures", d.failures), slog.Int("max_attempts", dl.policy.MaxAttempts),
			slog.Duration("delay", delay), slog.String("error", cause.Error()))...)
	return nil, nil
}

// deferral hands msg back to the broker without spending its budget, after a back-off
// that grows with consecutive deferrals (unless the context ended: shutdown must not
// wait).
func (dl *deadLetterer) deferral(msg *message.Message, d *delivery, err error) ([]*message.Message, error) {
	d.outcome = dedup.Deferred
	ctx := msg.Context()
	n := dl.deferrals.Add(1)
	if ctx.Err() != nil {
		return nil, err
	}
	wait := dl.policy.Delay(int(min(n, 64)), nil)
	dl.logger.LogAttrs(ctx, slog.LevelWarn, "idem: processing deferred, not the message's fault; handing it back",
		append(logAttrs(msg, d), slog.Duration("wait", wait), slog.String("error", err.Error()))...)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	return nil, err
}

func (dl *deadLetterer) deadLetter(msg *message.Message, d *delivery, reason dlq.Reason, cause error, attempts int) ([]*message.Message, error) {
	ctx := msg.Context()
	sc := trace.SpanContextFromContext(ctx)
	// Every text field is made storable (dlq.Storable, dlq.ScrubError): a byte a text
	// column cannot hold must not send the message back to the broker forever. The
	// payload and the metadata are kept as they came.
	letter := &dlq.DeadLetter{
		Consumer:     d.key.Consumer,
		EventID:      d.key.EventID,
		Topic:        dlq.Storable(message.SubscribeTopicFromCtx(ctx), 0),
		Handler:      dlq.Storable(message.HandlerNameFromCtx(ctx), 0),
		MessageUUID:  dlq.Storable(msg.UUID, 0),
		EventType:    dlq.Storable(msg.Metadata.Get(EventTypeKey), 0),
		EventVersion: dlq.Storable(msg.Metadata.Get(EventVersionKey), 0),
		Host:         dl.host,
		Payload:      msg.Payload,
		Metadata:     redactSecrets(msg.Metadata),
		Reason:       reason,
		Error:        dlq.ScrubError(cause.Error(), 0),
		Fingerprint:  dlq.Storable(dl.fingerprint(d.key.Consumer, cause), 0),
		Attempts:     attempts,
	}
	if id, ok := CorrelationID(ctx); ok {
		letter.CorrelationID = dlq.Storable(id, 0)
	} else {
		letter.CorrelationID = dlq.Storable(msg.Metadata.Get(CorrelationIDKey), 0)
	}
	if sc.IsValid() {
		letter.TraceID, letter.SpanID = sc.TraceID().String(), sc.SpanID().String()
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dl.timeout)
	defer cancel()
	created, err := dl.store.Put(wctx, letter)
	if err != nil && dl.policy.Class(err) == retry.ClassPermanent {
		// The store refused the dead letter for its data (SQLSTATE class 22, say):
		// the message's fault, not an outage. Keep what identifies it instead.
		dl.logger.LogAttrs(ctx, slog.LevelError, "idem: the store refused the dead letter's data; storing it in reduced form",
			append(logAttrs(msg, d), slog.String("error", dlq.ScrubError(err.Error(), 0)))...)
		letter = dlq.Reduce(letter, err)
		created, err = dl.store.Put(wctx, letter)
	}
	if err != nil {
		return dl.deferral(msg, d, retry.Infrastructure(fmt.Errorf("storing the dead letter failed, the message goes back to the broker: %w (the message failed with: %v)", err, cause)))
	}
	if dl.quarantine && d.ordered {
		// The entity's later events are parked from now on. Until this commits they
		// wait on the gap the dead letter leaves; if it fails, the redelivery stores
		// the dead letter again and quarantines then.
		if err := dl.store.(dedup.Quarantiner).Quarantine(wctx, d.key, d.entity); err != nil {
			return dl.deferral(msg, d, retry.Infrastructure(fmt.Errorf("quarantining the entity of the dead letter failed, the message goes back to the broker: %w (the message failed with: %v)", err, cause)))
		}
	}
	d.outcome, d.letter = dedup.DeadLettered, letter
	dl.deferrals.Store(0)
	for _, n := range dl.notifiers {
		n.Notify(letter)
	}
	dl.logger.LogAttrs(ctx, slog.LevelError, "idem: message dead-lettered",
		append(logAttrs(msg, d),
			slog.String("reason", string(reason)), slog.Int("attempts", attempts),
			slog.Int64("dead_letter_id", letter.ID), slog.Bool("new", created),
			slog.String("fingerprint", letter.Fingerprint), slog.String("error", letter.Error),
			slog.String("host", dl.host))...)
	return nil, nil
}
