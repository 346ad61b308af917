package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"

	"github.com/idemkit/idem/postgres"
)

// The command line.

type topics struct{ orderPlaced, paymentCaptured string }

type options struct {
	backend     string
	dbPath      string
	databaseURL string
	schema      string
	topicPrefix string
	verbose     bool
}

// topicPrefixRE keeps topics valid for watermill-sql, whose offsets table is named
// watermill_offsets_<topic> and must fit PostgreSQL's 63-byte identifiers.
var topicPrefixRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,27}$`)

func parseFlags(args []string, stdout io.Writer) (options, error) {
	var opts options
	fs := flag.NewFlagSet("monolith", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&opts.backend, "backend", "gochannel", "`BACKEND`: gochannel (in-process, SQLite) or sql (watermill-sql, PostgreSQL)")
	fs.StringVar(&opts.dbPath, "db", "idem-monolith.db", "the SQLite database `FILE` of -backend gochannel; removed first")
	fs.StringVar(&opts.databaseURL, "database-url", os.Getenv("IDEM_DATABASE_URL"), "the PostgreSQL `URL` of -backend sql; defaults to $IDEM_DATABASE_URL")
	fs.StringVar(&opts.schema, "schema", "idem_monolith", "the PostgreSQL `SCHEMA` of -backend sql: idem's, the modules' and the topics' tables")
	fs.StringVar(&opts.topicPrefix, "topic-prefix", "monolith", "`PREFIX` of the topic names")
	fs.BoolVar(&opts.verbose, "v", false, "print idem's and Watermill's logs on standard error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprintln(stdout, "usage: go run ./examples/monolith [flags]")
			fs.PrintDefaults()
			return opts, err
		}
		return opts, fmt.Errorf("%w (see -h)", err)
	}
	if fs.NArg() > 0 {
		return opts, fmt.Errorf("unexpected argument %q (see -h)", fs.Arg(0))
	}
	switch opts.backend {
	case "gochannel":
	case "sql":
		if opts.databaseURL == "" {
			return opts, errors.New("-backend sql needs a PostgreSQL URL: set IDEM_DATABASE_URL or -database-url")
		}
		if err := postgres.ValidateIdentifier("-schema", opts.schema); err != nil {
			return opts, err
		}
	default:
		return opts, fmt.Errorf("-backend must be gochannel or sql, got %q", opts.backend)
	}
	if !topicPrefixRE.MatchString(opts.topicPrefix) {
		return opts, fmt.Errorf("-topic-prefix must match %s, got %q", topicPrefixRE, opts.topicPrefix)
	}
	return opts, nil
}
