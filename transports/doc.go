// Package transports holds broker configurations made safe for idem, and idem's
// integration tests against real brokers: watermill-sql on PostgreSQL, RabbitMQ
// (watermill-amqp, durable quorum queues, publisher confirms), NATS JetStream
// (watermill-nats) and Redis Streams (watermill-redisstream). docs/transports.md
// describes each transport's behaviour and the settings the tests use.
//
// It is not one of idem's core packages: it imports the broker clients it configures
// (watermill-amqp and amqp091-go, watermill-nats and nats.go), so import it only if you
// use them.
//
// # RabbitMQ
//
// AMQPQuorumConfig returns watermill-amqp's configuration for a durable quorum queue with
// publisher confirms, and a marshaler (AMQPStringHeaders) that survives the integer
// x-delivery-count header a quorum queue puts on every redelivery:
//
//	cfg := transports.AMQPQuorumConfig("amqp://guest:guest@127.0.0.1:5672/")
//	pub, err := amqp.NewPublisher(cfg, logger)
//	sub, err := amqp.NewSubscriber(cfg, logger)
//
// # NATS JetStream
//
// NATSJetStreamConfig returns, for one idem consumer, the durable push consumer that its
// replicas share (to create at deploy time), watermill-nats subscriber and publisher
// configurations that bind to it with manual, confirmed acks, and the ack deadline to
// give consumer.Config:
//
//	n, err := transports.NATSJetStreamConfig(transports.NATSConfig{Stream: "orders", Consumer: "billing"})
//	_, err = js.AddConsumer("orders", n.Consumer) // at deploy time
//	sub, err := natspub.NewSubscriber(n.Subscriber, logger)
//	c, err := consumer.New(consumer.Config{Store: store, AckDeadline: n.AckDeadline})
//
// # What the tests check
//
// For each broker, the whole stack (a Watermill router, consumer.New on the PostgreSQL
// store) consumes a batch of events with duplicates, one event that fails transiently
// (once in-process, once handed back to the broker), and one poison event, on three
// consumer instances sharing one subscription and one database. The effects of each
// event commit exactly once, the poison event ends as exactly one dead letter, and the
// broker holds nothing unacknowledged at the end. TestReplicaProcesses runs three
// consumer processes on one Redis Streams consumer group, with a fourth that is killed
// inside its handler's transaction, and checks that nothing is lost and nothing is
// applied twice. TestNATSRestart, TestRedisRestart and TestRabbitMQRestart stop a broker
// of their own (a private nats-server, redis-server or RabbitMQ node on free ports) in
// the middle of consumption and start it again: each effect still commits once. The NATS
// and Redis subscribers recover by themselves; the RabbitMQ consumers stop with the node
// and start again after it (docs/transports.md says why).
//
// TestNATSJetStreamConfig checks NATSJetStreamConfig's subscribers on a NATS server: two
// replicas share the durable and each message reaches one of them, the durable outlives
// the replica that stops first, a nack is redelivered, a message acked before a restart
// is not delivered again while one unfinished at shutdown is, subscribing never creates
// the durable, and an AckWait other than the deployed consumer's is refused.
//
// # Running
//
// The tests read TEST_DATABASE_URL, TEST_AMQP_URL, TEST_NATS_URL and TEST_REDIS_URL,
// defaulting to the servers' standard ports on loopback (scripts/test starts them).
// A test whose server is unreachable is skipped, or fails when CI is set. The restart
// tests need the nats-server, redis-server, rabbitmq-server and epmd programs, with the
// same rule.
package transports
