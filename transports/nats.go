package transports

import (
	"fmt"
	"strings"
	"time"
	"unicode"

	natspub "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/nats-io/nats.go"
)

// DefaultNATSAckWait is the durable consumer's AckWait when NATSConfig.AckWait is 0:
// JetStream's own default.
const DefaultNATSAckWait = 30 * time.Second

// NATSConfig names the durable JetStream consumer that the replicas of one idem consumer
// share, for NATSJetStreamConfig.
type NATSConfig struct {
	// URL is the NATS server the Subscriber and Publisher configurations connect to
	// (natspub.NewSubscriber, natspub.NewPublisher; the WithNatsConn constructors ignore
	// it). Defaults to nats.DefaultURL.
	URL string
	// Stream is the JetStream stream to consume. Create it at deploy time, with file
	// storage and the limits you need, before the first publish. Required.
	Stream string
	// Consumer is the durable consumer's name, and the deliver group its replicas join
	// (watermill-nats QueueGroupPrefix and DurablePrefix). Use the idem consumer's name,
	// the handler name given to Consumer.AddConsumerHandler: each idem consumer then has
	// a durable of its own, and every replica of it shares that one. Required.
	Consumer string
	// Subject, when set, is the only subject of the stream the consumer reads (its
	// FilterSubject), and then the topic to subscribe to: a subscription to another topic
	// is refused. It may end in wildcards ("orders.*", "orders.>"). Defaults to "": the
	// consumer reads every subject of the stream, whatever topic is subscribed to.
	Subject string
	// AckWait is how long the server waits for the ack of a delivery before it delivers
	// the message again. It is the ack deadline: NATSJetStream.AckDeadline, which goes to
	// consumer.Config.AckDeadline. Defaults to DefaultNATSAckWait.
	AckWait time.Duration
	// SubscribersCount is how many deliveries each replica handles at once
	// (watermill-nats SubscribersCount: that many subscriptions on the deliver group,
	// each waiting for the ack of its delivery before it takes the next). The
	// consumer's MaxAckPending (1000 unless set) bounds the deliveries in flight across
	// all replicas. Defaults to 1.
	SubscribersCount int
}

// NATSJetStream is what NATSJetStreamConfig derives from a NATSConfig: the durable
// consumer to create at deploy time, the watermill-nats configurations that bind to it,
// and the ack deadline to give idem.
type NATSJetStream struct {
	// Consumer is the durable push consumer to create at deploy time, before any
	// subscriber starts: js.AddConsumer(cfg.Stream, Consumer). It acks explicitly, starts
	// at the beginning of the stream, waits AckWait for each ack, and never gives up on a
	// message (MaxDeliver -1: idem counts attempts and dead-letters; a JetStream limit
	// would drop the message without a dead letter). Its deliver subject,
	// "_INBOX.idem.<Stream>.<Consumer>", is derived from the names rather than random, so
	// creating the consumer again with the same configuration succeeds and a deploy step
	// may do it every time; change it if your permissions want another prefix.
	Consumer *nats.ConsumerConfig
	// Subscriber binds to that consumer (nats.Bind) and never creates one: nats.go deletes
	// a consumer its own Subscribe created when that subscription ends, under the other
	// replicas. It acks manually (nats.ManualAck: without it nats.go acks a delivery when
	// watermill-nats stops waiting for the handler, at AckWaitTimeout or at shutdown,
	// whatever the handler's outcome), waits for the server to confirm each ack
	// (AckAsync off), and waits for the handler as long as the server waits for the ack
	// (AckWaitTimeout = AckWait). Subscribing fails if the deployed consumer's AckWait or
	// ack policy differ, if it has no deliver group named Consumer, or if it does not
	// exist. A nack is a Nak, redelivered at once (idem paces its own deferrals); leave
	// NakDelay unset or static, never a MaxRetryDelay, which terminates the message after
	// N deliveries. Its NatsOptions reconnect forever (nats.MaxReconnects(-1)): by default
	// nats.go gives up after about two minutes and the subscriber then receives nothing,
	// silently. Use it with natspub.NewSubscriber, or pass
	// Subscriber.GetSubscriberSubscriptionConfig() to natspub.NewSubscriberWithNatsConn
	// with a connection made with those options.
	Subscriber natspub.SubscriberConfig
	// Publisher publishes through JetStream: Publish returns once the stream stored the
	// message. It does not set TrackMsgId: with it, JetStream drops a message whose UUID
	// it saw within the stream's duplicate window, and idem deduplicates by event ID
	// anyway. It never creates streams. Its NatsOptions reconnect forever.
	Publisher natspub.PublisherConfig
	// AckDeadline is the consumer's AckWait: give it to consumer.Config.AckDeadline, so
	// that in-process retrying stops before the server redelivers (Retry.MaxElapsedTime
	// defaults to half of it) and consumer.New refuses a retry budget that does not fit.
	AckDeadline time.Duration
}

// NATSJetStreamConfig returns the configurations that make a NATS JetStream consumer
// safe for idem: a durable push consumer shared by all the replicas of one idem consumer
// through its deliver group, created once at deploy time and bound to by every
// replica, with explicit, manual, confirmed acks and an ack wait that idem knows.
// It returns an error naming the field when a name is empty or one that NATS refuses
// (whitespace, control characters, '.', '*', '>', or a path separator), or when a
// number is negative.
//
// Adjust the result as usual (Subscriber.CloseTimeout, Subscriber.NatsOptions,
// Consumer.MaxAckPending, …); keep what the field docs of NATSJetStream explain. Each
// call returns new values; it is safe for concurrent use.
func NATSJetStreamConfig(cfg NATSConfig) (NATSJetStream, error) {
	if err := cfg.validate(); err != nil {
		return NATSJetStream{}, err
	}
	cfg = cfg.withDefaults()
	consumer := &nats.ConsumerConfig{
		Durable:        cfg.Consumer,
		DeliverSubject: "_INBOX.idem." + cfg.Stream + "." + cfg.Consumer,
		DeliverGroup:   cfg.Consumer,
		DeliverPolicy:  nats.DeliverAllPolicy,
		AckPolicy:      nats.AckExplicitPolicy,
		AckWait:        cfg.AckWait,
		MaxDeliver:     -1,
		FilterSubject:  cfg.Subject,
		ReplayPolicy:   nats.ReplayInstantPolicy,
	}
	sub := natspub.SubscriberConfig{
		URL:               cfg.URL,
		NatsOptions:       []nats.Option{nats.MaxReconnects(-1)},
		QueueGroupPrefix:  cfg.Consumer,
		SubscribersCount:  cfg.SubscribersCount,
		AckWaitTimeout:    cfg.AckWait,
		Unmarshaler:       &natspub.NATSMarshaler{},
		SubjectCalculator: natspub.DefaultSubjectCalculator,
		JetStream: natspub.JetStreamConfig{
			// watermill-nats adds nats.Durable(DurablePrefix); without a DurablePrefix it
			// adds nats.BindStream(""), which contradicts nats.Bind.
			DurablePrefix: cfg.Consumer,
			AckAsync:      false,
			SubscribeOptions: []nats.SubOpt{
				nats.Bind(cfg.Stream, cfg.Consumer),
				nats.ManualAck(),
				// Checked against the deployed consumer when subscribing.
				nats.AckExplicit(),
				nats.AckWait(cfg.AckWait),
			},
		},
	}
	pub := natspub.PublisherConfig{
		URL:               cfg.URL,
		NatsOptions:       []nats.Option{nats.MaxReconnects(-1)},
		Marshaler:         &natspub.NATSMarshaler{},
		SubjectCalculator: natspub.DefaultSubjectCalculator,
	}
	return NATSJetStream{Consumer: consumer, Subscriber: sub, Publisher: pub, AckDeadline: cfg.AckWait}, nil
}

func (c NATSConfig) withDefaults() NATSConfig {
	if c.URL == "" {
		c.URL = nats.DefaultURL
	}
	if c.AckWait == 0 {
		c.AckWait = DefaultNATSAckWait
	}
	if c.SubscribersCount == 0 {
		c.SubscribersCount = 1
	}
	return c
}

func (c NATSConfig) validate() error {
	if err := checkNATSName("Stream", c.Stream); err != nil {
		return err
	}
	if err := checkNATSName("Consumer", c.Consumer); err != nil {
		return err
	}
	if c.Subject != "" {
		if err := checkNATSSubject(c.Subject); err != nil {
			return err
		}
	}
	if c.AckWait < 0 {
		return fmt.Errorf("transports: NATSConfig.AckWait must not be negative, got %s", c.AckWait)
	}
	if c.SubscribersCount < 0 {
		return fmt.Errorf("transports: NATSConfig.SubscribersCount must not be negative, got %d", c.SubscribersCount)
	}
	return nil
}

// checkNATSName checks a stream or consumer name as NATS documents them: names are used
// in subjects and as directory names, so they cannot hold whitespace, '.', '*', '>' or
// path separators.
func checkNATSName(field, name string) error {
	if name == "" {
		return fmt.Errorf("transports: NATSConfig.%s is required", field)
	}
	for _, r := range name {
		switch {
		case r == '.' || r == '*' || r == '>' || r == '/' || r == '\\':
			return fmt.Errorf("transports: NATSConfig.%s %q must not contain %q", field, name, r)
		case unicode.IsSpace(r) || !unicode.IsPrint(r):
			return fmt.Errorf("transports: NATSConfig.%s %q must not contain whitespace or control characters", field, name)
		}
	}
	return nil
}

// checkNATSSubject checks a filter subject: dot-separated tokens, none empty, none
// holding whitespace; '*' only as a whole token, '>' only as the whole last token.
func checkNATSSubject(subject string) error {
	if strings.ContainsFunc(subject, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) {
		return fmt.Errorf("transports: NATSConfig.Subject %q must not contain whitespace or control characters", subject)
	}
	tokens := strings.Split(subject, ".")
	for i, tok := range tokens {
		reason := ""
		switch {
		case tok == "":
			reason = "has an empty token"
		case tok == ">" && i != len(tokens)-1:
			reason = "has '>' before its last token"
		case tok != "*" && tok != ">" && strings.ContainsAny(tok, "*>"):
			reason = "has a wildcard inside a token"
		}
		if reason != "" {
			return fmt.Errorf("transports: NATSConfig.Subject %q %s", subject, reason)
		}
	}
	return nil
}
