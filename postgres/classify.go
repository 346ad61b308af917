package postgres

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/idemkit/idem/retry"
)

// Classify maps PostgreSQL failures to retry classes, for retry.Policy.Classify; the
// consumer plugs it in by itself when its store is a *Store.
//
//   - transient (retry in-process, spends budget): SQLSTATE 40001 serialization failure,
//     40P01 deadlock, 55P03 lock not available, 57014 statement timeout or cancel, and a
//     COMMIT that PostgreSQL turned into a ROLLBACK;
//   - infrastructure (hand back, budget untouched, never dead-lettered): connection
//     failures and class 08, 57P01-57P03 server shutting down or starting, class 53
//     out of resources, 3D000/3F000/42P01 a database, schema or table that does not
//     exist (run Migrate), failures to acquire a pooled connection, and any failure of
//     the store's own begin, claim or commit that is not transient;
//   - permanent (dead-letter now): class 22 data exceptions (the payload cannot be
//     stored as it is), 23502 not-null and 23514 check violations, and 54000 (a value
//     too large for an index), also when the store's own statements fail with them:
//     the data is the message's, and no redelivery can change it;
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
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return classifySQLState(pgErr.Code)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		// A timeout: the default rules decide (it satisfies net.Error, but says
		// nothing about the connection).
		return retry.ClassUnknown
	}
	if connectionError(err) {
		return retry.ClassInfrastructure
	}
	return retry.ClassUnknown
}

func classifySQLState(code string) retry.Class {
	switch {
	case code == "40001", code == "40P01", code == "55P03", code == "57014":
		return retry.ClassTransient
	case strings.HasPrefix(code, "08"), strings.HasPrefix(code, "53"),
		code == "57P01", code == "57P02", code == "57P03",
		code == "3D000", code == "3F000", code == "42P01":
		return retry.ClassInfrastructure
	case strings.HasPrefix(code, "22"), code == "23502", code == "23514", code == "54000":
		return retry.ClassPermanent
	}
	return retry.ClassUnknown
}

// transientError reports whether a failure of the store's own statements deserves an
// in-process retry rather than a deferral.
func transientError(err error) bool {
	if errors.Is(err, pgx.ErrTxCommitRollback) {
		return true
	}
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && classifySQLState(pgErr.Code) == retry.ClassTransient
}

// dataError reports whether a failure of the store's own statements is due to the
// data they were given, as opposed to the database.
func dataError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && classifySQLState(pgErr.Code) == retry.ClassPermanent
}

func connectionError(err error) bool {
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connectErr) ||
		errors.As(err, &netErr) ||
		errors.Is(err, pgconn.ErrConnClosed) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, io.EOF) ||
		pgconn.SafeToRetry(err) ||
		errors.Is(err, context.Canceled)
}

// storeError is a failure of the store's own work (begin, claim, commit, bookkeeping),
// as opposed to an error the user's handler returned.
type storeError struct {
	Op  string
	Err error
}

func (e *storeError) Error() string {
	msg := "postgres: " + e.Op + ": " + e.Err.Error()
	var pgErr *pgconn.PgError
	if errors.As(e.Err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000") {
		msg += " (is the schema migrated? run `idem migrate` or postgres.Migrate)"
	}
	return msg
}

func (e *storeError) Unwrap() error { return e.Err }

// Infrastructure reports whether the failure is not the message's fault: every store
// failure is, except a transient conflict between concurrent transactions and a
// value the database refused (see Permanent).
func (e *storeError) Infrastructure() bool { return !transientError(e.Err) && !dataError(e.Err) }

// Permanent reports whether the database refused the data it was given (SQLSTATE
// class 22, say): the message's fault, which no redelivery can mend.
func (e *storeError) Permanent() bool { return dataError(e.Err) }
