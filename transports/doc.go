// Package transports holds idem's integration tests against real brokers: watermill-sql
// on PostgreSQL, RabbitMQ (watermill-amqp, durable quorum queues, publisher confirms),
// NATS JetStream (watermill-nats) and Redis Streams (watermill-redisstream). It has no
// API; docs/transports.md describes each transport's behaviour and the settings the
// tests use.
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
// applied twice.
//
// # Running
//
// The tests read TEST_DATABASE_URL, TEST_AMQP_URL, TEST_NATS_URL and TEST_REDIS_URL,
// defaulting to the servers' standard ports on loopback (scripts/test starts them).
// A test whose server is unreachable is skipped, or fails when CI is set.
package transports
