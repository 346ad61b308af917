// Idem is the operator command of idem: it migrates the database schema that idem's
// stores use, reviews, replays and discards dead letters, and keeps the
// deduplication tables in shape. It works on the PostgreSQL store and on the
// embedded SQLite store alike. docs/cli.md is its full manual.
//
// Install it with:
//
//	go install github.com/idemkit/idem/cmd/idem@latest
//
// # Usage
//
//	idem <command> [flags]
//
// The commands are:
//
//	migrate       create the schema or apply its pending migrations
//	dlq report    pending dead letters grouped by consumer, topic and failure
//	dlq list      list dead letters, a page at a time
//	dlq show      show one dead letter: metadata, error history, payload, audit
//	dlq replay    republish dead letters to their topics (dry run unless --yes)
//	dlq discard   mark dead letters discarded, with a --reason (dry run unless --yes)
//	dlq resolve   mark dead letters resolved (dry run unless --yes)
//	dlq check     exit 1 when pending dead letters exceed a count or an age (for cron)
//	dlq audit     list the audit of replays, discards and resolves
//	dedup prune   delete processed rows, attempt counts, reviewed dead letters and audit rows past their retention
//	dedup stats   show row counts and oldest ages of idem's tables
//	serve         the web console for the dead-letter review (loopback unless told otherwise)
//	version       print the version of idem
//	help          show the help of idem or of a command
//
// `idem help <command>` and `idem <command> -h` describe a command and its flags.
//
// # Connecting
//
// Every command that uses the database takes two flags:
//
//	--database-url URL   the database; defaults to $IDEM_DATABASE_URL
//	--schema NAME        the PostgreSQL schema holding idem's tables; defaults to idem
//
// The database URL is one of:
//
//	postgres://user:password@host:5432/dbname   PostgreSQL (postgresql:// too)
//	sqlite:///absolute/path/idem.db             a SQLite file, by absolute path
//	sqlite:relative/path/idem.db                a SQLite file, relative to the working directory
//	path/to/idem.db                             a plain path ending in .db, .sqlite or .sqlite3
//
// Percent-escapes in sqlite: URLs are decoded; plain paths are taken as they are. A
// SQLite database has no schemas: --schema is refused with one. Only `idem migrate`
// creates a SQLite file; the other commands report a missing file as unreachable.
// Connecting to PostgreSQL gives up after 5 seconds, unless the URL sets
// connect_timeout. No output shows the credentials of a URL, database or broker:
// the userinfo (user and password, or a lone token) and the values of secret-looking
// query parameters (password=, token=, sig=, …) are replaced by REDACTED.
//
// # Examples
//
//	export IDEM_DATABASE_URL='postgres://idem@db.internal:5432/app'
//	idem migrate --schema messaging
//	idem dlq report --schema messaging
//	idem dlq show 42 --schema messaging --show-payload
//	idem dlq replay --schema messaging --consumer billing --fingerprint 3f2a9c1d7e6b5a40 --yes
//	idem dlq discard 43 --schema messaging --reason "test order from staging" --yes
//	idem dlq check --schema messaging --max-pending 0 --max-age 24h
//	idem dedup prune --schema messaging --retention 336h --replay-window 168h
//	idem dlq report --database-url idem-quickstart.db
//
// # Exit codes
//
//	0  success
//	1  the command ran and failed (for example, a check failed, or a publish)
//	2  usage error: unknown command or flag, bad value, no database URL
//	3  cannot reach the store: connection or authentication failure, timeout, or a
//	   schema that is missing or not migrated (run `idem migrate`)
//
// Errors are written to standard error, prefixed by "idem: ".
package main
