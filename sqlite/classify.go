package sqlite

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"strings"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/idemkit/idem/retry"
)

// ErrBusy is returned when a write had to wait for this process's other writes for
// longer than Config.BusyTimeout. Like SQLite's own SQLITE_BUSY it is transient: the
// attempt is retried with backoff.
var ErrBusy = errors.New("sqlite: database is busy: waited Config.BusyTimeout for another write transaction of this process")

// Classify maps SQLite failures to retry classes, for retry.Policy.Classify; the
// consumer plugs it in by itself when its store is a *Store.
//
//   - transient (retry in-process, spends budget): SQLITE_BUSY and SQLITE_LOCKED (the
//     write lock stayed taken for longer than the busy timeout), and [ErrBusy];
//   - infrastructure (hand back, budget untouched, never dead-lettered): I/O errors,
//     a full disk, a read-only or unopenable database file, a corrupt file or one that
//     is not a database, out of memory, a closed connection, and any
//     failure of the store's own begin, claim or commit that is not transient;
//   - permanent (dead-letter now): NOT NULL and CHECK constraint violations, a value
//     of the wrong type for a STRICT table's column, a datatype mismatch and a value
//     too big for SQLite (the payload cannot be stored as it is), also when the
//     store's own statements fail with them: the data is the message's, and no
//     redelivery can change it;
//   - anything else: [retry.ClassUnknown], so that the default rules apply.
func Classify(err error) retry.Class {
	if err == nil {
		return retry.ClassUnknown
	}
	var se *storeError
	if errors.As(err, &se) {
		switch {
		case transientError(se.Err):
			return retry.ClassTransient
		case dataError(se.Err):
			return retry.ClassPermanent
		}
		return retry.ClassInfrastructure
	}
	if errors.Is(err, ErrBusy) {
		return retry.ClassTransient
	}
	var sqlErr *sqlite.Error
	if errors.As(err, &sqlErr) {
		return classifyCode(sqlErr.Code())
	}
	if errors.Is(err, sql.ErrConnDone) || errors.Is(err, driver.ErrBadConn) || errors.Is(err, context.Canceled) {
		return retry.ClassInfrastructure
	}
	return retry.ClassUnknown
}

// classifyCode classifies an extended SQLite result code.
func classifyCode(code int) retry.Class {
	switch code {
	case sqlite3.SQLITE_CONSTRAINT_NOTNULL, sqlite3.SQLITE_CONSTRAINT_CHECK, sqlite3.SQLITE_CONSTRAINT_DATATYPE:
		return retry.ClassPermanent
	}
	switch code & 0xff { // the primary result code
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		return retry.ClassTransient
	case sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN,
		sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_PERM,
		sqlite3.SQLITE_PROTOCOL, sqlite3.SQLITE_NOLFS, sqlite3.SQLITE_AUTH:
		return retry.ClassInfrastructure
	case sqlite3.SQLITE_MISMATCH, sqlite3.SQLITE_TOOBIG:
		return retry.ClassPermanent
	}
	return retry.ClassUnknown
}

// transientError reports whether a failure of the store's own statements deserves an
// in-process retry rather than a deferral.
func transientError(err error) bool {
	if errors.Is(err, ErrBusy) {
		return true
	}
	var sqlErr *sqlite.Error
	return errors.As(err, &sqlErr) && classifyCode(sqlErr.Code()) == retry.ClassTransient
}

// dataError reports whether a failure of the store's own statements is due to the
// data they were given (a constraint, a type mismatch, a value too big), as opposed to
// the database.
func dataError(err error) bool {
	var sqlErr *sqlite.Error
	return errors.As(err, &sqlErr) && classifyCode(sqlErr.Code()) == retry.ClassPermanent
}

// storeError is a failure of the store's own work (open, begin, claim, commit,
// bookkeeping), as opposed to an error the user's handler returned.
type storeError struct {
	Op  string
	Err error
}

func (e *storeError) Error() string {
	msg := "sqlite: " + e.Op + ": " + e.Err.Error()
	var sqlErr *sqlite.Error
	if errors.As(e.Err, &sqlErr) && sqlErr.Code() == sqlite3.SQLITE_ERROR && missingTable(sqlErr) {
		msg += " (is the database migrated? run `idem migrate`, sqlite.Migrate, or set Config.Migrate)"
	}
	return msg
}

func (e *storeError) Unwrap() error { return e.Err }

// missingTable reports whether err is SQLite's "no such table". SQLite gives it only
// the generic SQLITE_ERROR code, so the text decides; it is used for the hint in an
// error message, never to classify.
func missingTable(err *sqlite.Error) bool {
	return strings.Contains(err.Error(), "no such table")
}

// Infrastructure reports whether the failure is not the message's fault: every store
// failure is, except a transient wait for the write lock and a value the database
// refused (see Permanent).
func (e *storeError) Infrastructure() bool { return !transientError(e.Err) && !dataError(e.Err) }

// Permanent reports whether the database refused the data it was given: the
// message's fault, which no redelivery can mend.
func (e *storeError) Permanent() bool { return dataError(e.Err) }
