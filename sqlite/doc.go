// Package sqlite is idem's embedded store: event claims, attempt counts and dead
// letters in one local SQLite file, through modernc.org/sqlite (pure Go, no cgo). The
// examples and the quickstart use it: no server to run, durable, and the same `idem`
// command reviews its dead letters. Production with replicas uses package postgres;
// both stores pass the same conformance suites (dedup/deduptest, dlq/dlqtest).
//
// # Usage
//
//	store, err := sqlite.Open(ctx, "idem.db", sqlite.Config{Migrate: true})
//	if err != nil {
//		return err
//	}
//	defer store.Close()
//	c, err := consumer.New(consumer.Config{Store: store})
//	if err != nil {
//		return err
//	}
//	c.AddConsumerHandler(router, "shipping", "orders", sub,
//		sqlite.Handler(func(ctx context.Context, tx *sql.Tx, e OrderPlaced) error {
//			_, err := tx.ExecContext(ctx, "INSERT INTO shipments (order_id) VALUES (?1)", e.OrderID)
//			return err
//		}))
//
// A handler that is not typed finds the transaction with [TxFromContext].
//
// # Guarantees
//
// At-least-once in, effects once. [Store.Run] claims the event's (consumer, event ID)
// with INSERT … ON CONFLICT DO NOTHING in the same transaction as the handler's
// writes: the claim and the effects commit together or not at all, and a later
// delivery of a committed event is a duplicate that does not run the handler. Writes
// the handler makes elsewhere (HTTP calls, another database) are not covered.
//
// Durable before acked. Every connection runs in WAL mode with synchronous=FULL: a
// commit has reached the disk when it returns, so the claim, the effects and a dead
// letter survive a crash of the process, of the operating system, or a power loss, as
// they do on PostgreSQL. Dead letters keep the payload as a BLOB and the metadata as
// JSON text (dlq.EncodeMetadata), byte for byte.
//
// # One writer
//
// SQLite runs one write transaction at a time per database file. The store works with
// that rather than against it: every write (Run from its claim to its commit,
// RecordFailure, Put, each batch of Prune) first takes the Store's in-process write
// slot, granted in arrival order, then begins with BEGIN IMMEDIATE, which takes
// SQLite's write lock up front. Two deliveries of one event therefore never race: the
// second waits, then finds the claim. No transaction ever has to upgrade a read lock
// to a write lock, the case in which SQLite fails at once with SQLITE_BUSY instead of
// waiting. Other processes on the same file (the idem command, a second consumer) wait
// for the lock through SQLite's busy timeout. Reads ([Store.DeadLetter],
// [Store.Stats], queries through [Store.DB]) never wait for writers: WAL lets them run
// beside the writer, on the last committed state.
//
// What that means for handlers:
//
//   - Concurrent handlers of one process run one after the other: the write lock is
//     held from the claim, before the handler starts, until the commit. Keep handlers
//     short, and keep slow calls to other services out of them.
//   - A write that waits longer than Config.BusyTimeout (default 5s) fails with
//     [ErrBusy], or SQLITE_BUSY when another process holds the lock: a transient
//     error, retried with backoff and counted as an attempt.
//   - Inside a handler, write only through its transaction. A write through
//     [Store.DB], or a call to Run or Put of the same store, waits for the handler's
//     own transaction, and fails after the busy timeout.
//
// # Limits
//
//   - One machine: the file must be on a local file system. WAL needs shared memory,
//     which network file systems do not provide; Open refuses a database that does not
//     end up in WAL mode. For replicas on several machines, use PostgreSQL.
//   - Throughput is one write transaction at a time, each ending in an fsync: see the
//     benchmark in bench_test.go for figures on your disk.
//   - Times come from SQLite's clock, that of the process that writes (there is no
//     server), kept as UTC text with millisecond precision.
//   - A path names a file: in-memory databases (":memory:") and file: URIs are
//     refused, since every pooled connection would see a database of its own.
//   - Claims always run in a transaction of their own; there is no counterpart to the
//     postgres store's claiming inside a watermill-sql subscriber's transaction.
//
// # Errors
//
// [Classify] maps SQLite's result codes to retry classes: a busy or locked database is
// transient; I/O errors, a full disk, a read-only, unopenable or corrupt file and
// failures of the store's own begin, claim and commit are infrastructure (the message
// is handed back, its budget untouched, never dead-lettered); NOT NULL, CHECK and type
// violations are permanent. The consumer uses it by itself when its store is a *Store.
//
// # Schema
//
// The tables (processed, attempts, dead_letters, and schema_migrations) are STRICT
// tables created by embedded, numbered migrations ([Migrations]). Open runs no DDL
// unless Config.Migrate is set; otherwise run [Migrate] or `idem migrate`, and call
// [Store.Check] at start-up. Consuming never changes the schema. [Store.Prune] deletes
// old processed rows and attempt counts in bounded batches, and refuses a retention
// shorter than the replay window.
package sqlite
