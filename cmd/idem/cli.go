package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
	"github.com/idemkit/idem/sqlite"
)

// Exit codes; doc.go and the usage text document them.
const (
	exitOK          = 0 // the command succeeded
	exitFailure     = 1 // the command ran and failed
	exitUsage       = 2 // unknown command or flag, bad value, no database URL
	exitUnreachable = 3 // cannot connect, authenticate, or find a migrated schema
)

// envDatabaseURL names the environment variable --database-url defaults to.
const envDatabaseURL = "IDEM_DATABASE_URL"

// defaultConnectTimeout bounds connecting to the database, unless the URL sets
// connect_timeout.
const defaultConnectTimeout = 5 * time.Second

// cli is one run of the command: where it writes and what it reads from outside.
type cli struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	connectTimeout time.Duration
	secrets        []string // credentials scrubbed from every message, see redact
	// terminal says standard output is a terminal: long runs show their progress.
	terminal bool
}

// command is one idem command.
type command struct {
	name    string // "migrate", or "group sub" for a subcommand: "dedup prune"
	args    string // synopsis of its positional arguments; "" when it takes none
	summary string // one line for the list of commands
	help    string // what `idem <name> -h` says after the synopsis
	noStore bool   // it does not use the database: no --database-url, no --schema
	// setup declares the command's own flags on fs, and returns what runs once they
	// are parsed.
	setup func(fs *flag.FlagSet) action
}

// action runs a command whose flags have been parsed.
type action func(ctx context.Context, e *env) error

// env is what an action works with.
type env struct {
	cli    *cli
	cmd    string // the command's name
	stdout io.Writer
	args   []string // positional arguments
	// Set for commands that use the database.
	dbURL      string // as given: never print it, print shownURL
	shownURL   string // dbURL as redactURL prints it
	schema     string
	sqlitePath string // the SQLite database file, when dbURL names one
	schemaSet  bool   // --schema was given
}

// exitError carries the exit code of a failure. A nil err prints nothing.
type exitError struct {
	code  int
	err   error
	usage string // for exitUsage: the command whose -h to suggest; "" for idem help
}

func (e *exitError) Error() string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

func usageErrorf(cmd, format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...), usage: cmd}
}

func unreachable(err error) error { return &exitError{code: exitUnreachable, err: err} }

// exit reports err on stderr and returns the exit code it stands for.
func (c *cli) exit(err error) int {
	if err == nil {
		return exitOK
	}
	code, hint := exitFailure, ""
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		code = ee.code
		if code == exitUsage {
			hint = "run 'idem help' for usage"
			if ee.usage != "" {
				hint = "run 'idem " + ee.usage + " -h' for usage"
			}
		}
	case errors.Is(err, postgres.ErrNotMigrated), postgres.Classify(err) == retry.ClassInfrastructure,
		errors.Is(err, sqlite.ErrNotMigrated), sqlite.Classify(err) == retry.ClassInfrastructure:
		// The schema is missing or old, or the connection broke after it was made.
		code = exitUnreachable
	}
	if msg := err.Error(); msg != "" {
		fmt.Fprintln(c.stderr, "idem: "+inertMessage(c.redact(msg)))
	}
	if hint != "" {
		fmt.Fprintln(c.stderr, "idem: "+hint)
	}
	return code
}

// redact hides the credentials of URLs in the message s: every URL in it goes through
// redactURL, and the credentials of the database and publish URLs are replaced
// wherever else they appear (a driver's error may quote them).
func (c *cli) redact(s string) string {
	s = redactURLs(s)
	for _, secret := range c.secrets {
		s = strings.ReplaceAll(s, secret, redacted)
	}
	return s
}

// runCommand parses cmd's flags from args and runs it.
func (c *cli) runCommand(ctx context.Context, cmd *command, args []string) error {
	fs, db, act := cmd.flagSet()
	pos, err := parseFlags(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		c.commandUsage(c.stdout, cmd)
		return nil
	}
	if name, ok := strings.CutPrefix(fmt.Sprint(err), "flag provided but not defined: -"); ok && cmd.args != "" && isNumber(name) {
		// A negative number among the arguments: flag reads it as a flag.
		return usageErrorf(cmd.name, "%q is not a dead-letter ID: IDs are positive whole numbers, as report and list show them", "-"+name)
	}
	if err != nil {
		return usageErrorf(cmd.name, "%s: %v", cmd.name, err)
	}
	if len(pos) > 0 && cmd.args == "" {
		return usageErrorf(cmd.name, "%s takes no arguments, got %q", cmd.name, strings.Join(pos, " "))
	}
	e := &env{cli: c, cmd: cmd.name, stdout: c.stdout, args: pos}
	if db != nil {
		fs.Visit(func(f *flag.Flag) { e.schemaSet = e.schemaSet || f.Name == "schema" })
		if err := e.setDatabase(db.url, db.schema); err != nil {
			return err
		}
	}
	return act(ctx, e)
}

func isNumber(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

type dbFlags struct{ url, schema string }

// flagSet declares cmd's flags: its own, then the common ones. db is nil for a
// command that does not use the database.
func (cmd *command) flagSet() (fs *flag.FlagSet, db *dbFlags, act action) {
	fs = flag.NewFlagSet("idem "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by exit, usage by commandUsage
	fs.Usage = func() {}
	act = cmd.setup(fs)
	if !cmd.noStore {
		db = declareDBFlags(fs)
	}
	return fs, db, act
}

// declareDBFlags declares the flags of every command that uses the database.
func declareDBFlags(fs *flag.FlagSet) *dbFlags {
	db := &dbFlags{}
	fs.StringVar(&db.url, "database-url", "", "`URL` of the database: postgres://user:password@host:5432/dbname, or a SQLite file as sqlite:path/to/file.db, sqlite:///absolute/path.db or path/to/file.db (default $"+envDatabaseURL+")")
	fs.StringVar(&db.schema, "schema", postgres.DefaultSchema, "`NAME` of the PostgreSQL schema holding idem's tables")
	return db
}

var commonFlags = []string{"database-url", "schema"}

// parseFlags parses fs from args, letting flags and positional arguments mix, and
// returns the positional arguments. Everything after "--" is positional.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// setDatabase checks the database flags, before anything connects.
func (e *env) setDatabase(rawURL, schema string) error {
	rawURL = cmp.Or(rawURL, e.cli.getenv(envDatabaseURL))
	if rawURL == "" {
		return usageErrorf(e.cmd, "no database URL: set --database-url or the %s environment variable", envDatabaseURL)
	}
	if path, ok, err := sqlitePath(rawURL); ok {
		if err != nil {
			return &exitError{code: exitUsage, err: err, usage: e.cmd}
		}
		if e.schemaSet && schema != postgres.DefaultSchema {
			return usageErrorf(e.cmd, "--schema applies to PostgreSQL only: a SQLite database has no schemas")
		}
		e.dbURL, e.shownURL, e.sqlitePath, e.schema = rawURL, rawURL, path, "main"
		return nil
	}
	e.cli.secrets = append(e.cli.secrets, urlSecrets(rawURL)...)
	shown, err := checkDatabaseURL(rawURL)
	if err != nil {
		return &exitError{code: exitUsage, err: err, usage: e.cmd}
	}
	if err := postgres.ValidateIdentifier("--schema", schema); err != nil {
		return usageErrorf(e.cmd, "%s", strings.TrimPrefix(err.Error(), "postgres: "))
	}
	e.dbURL, e.shownURL, e.schema = rawURL, shown, schema
	return nil
}

// sqliteExtensions are the file name extensions that make a plain path a SQLite
// database.
var sqliteExtensions = []string{".db", ".sqlite", ".sqlite3"}

// sqlitePath reports whether raw names a SQLite database, and returns its file path:
//
//	sqlite:///absolute/path.db   an absolute path (percent-escapes decoded)
//	sqlite:relative/path.db      a path relative to the working directory, or absolute
//	                             as sqlite:/absolute/path.db (percent-escapes decoded)
//	path/to/file.db              a plain path ending in .db, .sqlite or .sqlite3
func sqlitePath(raw string) (path string, ok bool, err error) {
	rest, isURL := strings.CutPrefix(raw, "sqlite:")
	if strings.ContainsRune(raw, 0) && (isURL || slices.ContainsFunc(sqliteExtensions, func(ext string) bool { return strings.HasSuffix(raw, ext) })) {
		return "", true, fmt.Errorf("the SQLite database %q holds a NUL byte, which no file name does", raw)
	}
	if !isURL {
		if strings.Contains(raw, "://") || !slices.ContainsFunc(sqliteExtensions, func(ext string) bool { return strings.HasSuffix(raw, ext) }) {
			return "", false, nil
		}
		return raw, true, nil
	}
	const forms = "use sqlite:///absolute/path.db or sqlite:relative/path.db"
	if strings.ContainsAny(rest, "?#") {
		return "", true, fmt.Errorf("the SQLite URL %s has a query or fragment, which idem does not take: %s", raw, forms)
	}
	if after, ok := strings.CutPrefix(rest, "//"); ok {
		if !strings.HasPrefix(after, "/") {
			return "", true, fmt.Errorf("the SQLite URL %s names a host: %s", raw, forms)
		}
		rest = after
	}
	path, err = url.PathUnescape(rest)
	if err != nil {
		return "", true, fmt.Errorf("the SQLite URL %s does not decode: %v", raw, err)
	}
	if path == "" || strings.HasSuffix(path, "/") {
		return "", true, fmt.Errorf("the SQLite URL %s names no file: %s", raw, forms)
	}
	return path, true, nil
}

// checkDatabaseURL checks that raw is a PostgreSQL URL this build can connect to, and
// returns it as redactURL prints it. Its errors never hold a credential.
func checkDatabaseURL(raw string) (shown string, err error) {
	const supported = "use a postgres:// URL such as postgres://db.internal:5432/app, or a SQLite file as sqlite:path/to/file.db or path/to/file.db"
	if !strings.Contains(raw, "://") {
		return "", fmt.Errorf("the database URL is neither a postgres:// URL nor a SQLite file: %s", supported)
	}
	if _, err := url.Parse(raw); err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error holds the whole URL, password included
		}
		return "", fmt.Errorf("the database URL is not a valid URL: %v", err)
	}
	shown = redactURL(raw)
	scheme, _, _ := strings.Cut(raw, "://") // pgx wants it in lower case, as url.Parse does not
	if scheme != "postgres" && scheme != "postgresql" {
		return "", fmt.Errorf("unsupported database URL scheme %q in %s: %s", scheme, shown, supported)
	}
	return shown, nil
}

// connect opens a pool on the database and checks that it answers, within the
// connect timeout.
func (e *env) connect(ctx context.Context) (*pgxpool.Pool, error) {
	return e.connectTo(ctx, "database", e.dbURL, e.shownURL)
}

// connectTo is connect to the PostgreSQL database at rawURL, shown in messages as
// shown; what names the URL in them ("database", "publish").
func (e *env) connectTo(ctx context.Context, what, rawURL, shown string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		return nil, usageErrorf(e.cmd, "bad %s URL %s: %v", what, shown, err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = e.cli.connectTimeout
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "idem"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, unreachable(fmt.Errorf("cannot connect to %s: %w", shown, err))
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.ConnConfig.ConnectTimeout)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, unreachable(fmt.Errorf("cannot connect to %s: %w", shown, err))
	}
	return pool, nil
}

const exitCodesText = `Exit codes:
  0  success
  1  the command ran and failed (for example, a check failed)
  2  usage error: unknown command or flag, bad value, no database URL
  3  cannot reach the store: connection or authentication failure, timeout
     (5s), or a schema that is missing or not migrated (run 'idem migrate')
`

// usage writes the help of idem itself.
func (c *cli) usage(w io.Writer) {
	fmt.Fprint(w, `idem is the operator command of idem: it migrates the database schema, reviews,
replays and discards dead letters, and keeps the deduplication tables in shape.

Usage:
  idem <command> [flags]

Commands:
`)
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	for _, cmd := range commands {
		fmt.Fprintf(tw, "  %s\t%s\n", cmd.synopsis(), cmd.summary)
	}
	fmt.Fprintf(tw, "  help [command]\tshow the help of idem or of a command\n")
	tw.Flush()
	fmt.Fprint(w, "\nCommon flags, taken by every command that uses the database:\n")
	fs := flag.NewFlagSet("idem", flag.ContinueOnError)
	declareDBFlags(fs)
	printFlags(w, fs, func(string) bool { return true })
	fmt.Fprint(w, "\nFlags come after the command; --flag and -flag are the same.\n"+
		"Run 'idem <command> -h' for the flags of a command.\n\n"+exitCodesText)
}

// groupUsage writes the help of a group of subcommands, such as `idem dedup`.
func (c *cli) groupUsage(w io.Writer, group string, cmds []*command) {
	fmt.Fprintf(w, "Usage:\n  idem %s <command> [flags]\n\nCommands:\n", group)
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	for _, cmd := range cmds {
		fmt.Fprintf(tw, "  %s\t%s\n", cmd.synopsis(), cmd.summary)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nRun 'idem %s <command> -h' for the flags of a command.\n", group)
}

// commandUsage writes the help of one command.
func (c *cli) commandUsage(w io.Writer, cmd *command) {
	fmt.Fprintf(w, "Usage:\n  idem %s\n\n%s\n", cmd.synopsis(), strings.TrimSpace(cmd.help))
	fs, _, _ := cmd.flagSet()
	if hasFlags(fs, func(name string) bool { return !slices.Contains(commonFlags, name) }) {
		fmt.Fprint(w, "\nFlags:\n")
		printFlags(w, fs, func(name string) bool { return !slices.Contains(commonFlags, name) })
	}
	if !cmd.noStore {
		fmt.Fprint(w, "\nCommon flags:\n")
		printFlags(w, fs, func(name string) bool { return slices.Contains(commonFlags, name) })
	}
	fmt.Fprint(w, "\n"+exitCodesText)
}

func (cmd *command) synopsis() string {
	s := cmd.name
	if fs, _, _ := cmd.flagSet(); hasFlags(fs, func(string) bool { return true }) {
		s += " [flags]"
	}
	if cmd.args != "" {
		s += " " + cmd.args
	}
	return s
}

func hasFlags(fs *flag.FlagSet, keep func(name string) bool) bool {
	found := false
	fs.VisitAll(func(f *flag.Flag) { found = found || keep(f.Name) })
	return found
}

// printFlags lists the flags of fs that keep keeps, with their defaults.
func printFlags(w io.Writer, fs *flag.FlagSet, keep func(name string) bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fs.VisitAll(func(f *flag.Flag) {
		if !keep(f.Name) {
			return
		}
		arg, usage := flag.UnquoteUsage(f)
		switch f.DefValue {
		case "", "0", "0s", "false":
		default:
			usage += " (default " + f.DefValue + ")"
		}
		name := "--" + f.Name
		if arg != "" {
			name += " " + arg
		}
		fmt.Fprintf(tw, "  %s\t%s\n", name, usage)
	})
	tw.Flush()
}
