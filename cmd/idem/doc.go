// Idem is the operator command of idem: it migrates the database schema that idem's
// stores use and keeps the deduplication tables in shape.
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
//	dedup prune   delete processed rows and attempt counts older than the retention
//	dedup stats   show row counts and oldest ages of idem's tables
//	version       print the version of idem
//	help          show the help of idem or of a command
//
// `idem help <command>` and `idem <command> -h` describe a command and its flags.
//
// # Connecting
//
// Every command that uses the database takes two flags:
//
//	--database-url URL   postgres://user:password@host:5432/dbname; defaults to $IDEM_DATABASE_URL
//	--schema NAME        the schema holding idem's tables; defaults to idem
//
// Only postgres:// and postgresql:// URLs are supported by this build. Connecting
// gives up after 5 seconds, unless the URL sets connect_timeout. No message shows
// the password of the URL: it is replaced by xxxxx.
//
// # Examples
//
//	export IDEM_DATABASE_URL='postgres://idem@db.internal:5432/app'
//	idem migrate --schema messaging
//	idem dedup prune --schema messaging --retention 336h --replay-window 168h
//	idem dedup stats --schema messaging --format json
//
// `idem migrate` prints each migration it applied ("applied 001 create_tables"), or
// "schema messaging is up to date (version 1)". Consumers never change the schema:
// run it before deploying a new version of idem.
//
// # Exit codes
//
//	0  success
//	1  the command ran and failed (for example, a check failed)
//	2  usage error: unknown command or flag, bad value, no database URL
//	3  cannot reach the store: connection or authentication failure, timeout, or a
//	   schema that is missing or not migrated (run `idem migrate`)
//
// Errors are written to standard error, prefixed by "idem: ".
package main
