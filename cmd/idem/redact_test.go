package main

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/internal/testdb"
)

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"postgres://idem:s3cret@db.internal:5432/app?sslmode=require": "postgres://REDACTED@db.internal:5432/app?sslmode=require",
		"postgres://idem@db.internal/app":                             "postgres://REDACTED@db.internal/app",
		"postgres://db.internal/app?user=idem&password=s3cret&x=1":    "postgres://db.internal/app?user=idem&password=REDACTED&x=1",
		"postgres://db/app?sslpassword=s3cret&sslmode=verify-full":    "postgres://db/app?sslpassword=REDACTED&sslmode=verify-full",
		"nats://T0KEN@127.0.0.1:4222":                                 "nats://REDACTED@127.0.0.1:4222",
		"tls://user:pw@nats.internal":                                 "tls://REDACTED@nats.internal",
		"amqp://guest:guest@127.0.0.1:5672/":                          "amqp://REDACTED@127.0.0.1:5672/",
		"amqps://u:p%40ss@mq/vhost?auth_mechanism=plain":              "amqps://REDACTED@mq/vhost?auth_mechanism=plain",
		"redis://:s3cret@127.0.0.1:6379/0":                            "redis://REDACTED@127.0.0.1:6379/0",
		"rediss://cache/0?token=abc&sig=def&Api-Key=ghi&pwd=jkl&db=1": "rediss://cache/0?token=REDACTED&sig=REDACTED&Api-Key=REDACTED&pwd=REDACTED&db=1",
		"redis://cache/0?pass%77ord=s3cret":                           "redis://cache/0?pass%77ord=REDACTED",
		"postgres://u:p@ss:w/rd@db:port/app":                          "postgres://REDACTED@db:port/app", // not a valid URL: still redacted
		"postgres://u:pa ss@db/app":                                   "postgres://REDACTED@db/app",
		"redis://127.0.0.1:6379":                                      "redis://127.0.0.1:6379",
		"postgres://REDACTED@db/app?password=REDACTED":                "postgres://REDACTED@db/app?password=REDACTED",
		"host=db password=s3cret":                                     "host=db password=REDACTED",
		"https://hooks.example/p?email=a@b.com&token=s3cret":          "https://hooks.example/p?email=a@b.com&token=REDACTED", // an @ in the query is no userinfo
	} {
		require.Equal(t, want, redactURL(in), in)
		require.Equal(t, want, redactURL(want), "redacting twice changes nothing: %s", in)
	}
}

// TestCredentialsAreNeverPrinted runs the command, through the built binary, with
// credentials in every place a broker or database URL holds them, and greps
// everything it prints for them: in messages, progress lines, errors and every output
// format, they are REDACTED.
func TestCredentialsAreNeverPrinted(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-T0ken"
	path := replaySeed(t, letterFor("orders", "evt-1"))
	requireHidden := func(t *testing.T, res result, args ...any) {
		t.Helper()
		out := res.stdout + res.stderr
		require.NotContains(t, out, secret, args...)
		require.NotContains(t, out, url.QueryEscape(secret), args...)
		if strings.Contains(out, "://") {
			require.Contains(t, out, "REDACTED", args...) // the URL, as printed
		}
	}

	// Replay, to brokers that cannot be reached: the URL shows in the dry run, the
	// JSON output, the error and the line that says replay stopped.
	for _, pub := range []string{
		"nats://" + secret + "@127.0.0.1:1",
		"tls://" + secret + "@127.0.0.1:1",
		"nats://ada:" + secret + "@127.0.0.1:1",
		"amqp://guest:" + secret + "@127.0.0.1:1/",
		"amqps://" + secret + "@127.0.0.1:1/",
		"redis://:" + secret + "@127.0.0.1:1/0",
		"redis://" + secret + "@127.0.0.1:1/0",
		"redis://127.0.0.1:1/0?password=" + secret,
		"postgres://postgres:" + secret + "@127.0.0.1:1/test",
		"postgres://postgres@127.0.0.1:1/test?sslmode=disable&password=" + secret,
		"postgres://postgres@127.0.0.1:1/test?sslmode=sometimes&password=" + secret,
		"postgresql://postgres:" + url.QueryEscape(secret+"/#?") + "@127.0.0.1:1/test",
		"nats://127.0.0.1:1?token=" + secret,
		"amqp://127.0.0.1:1/?sig=" + secret,
		"amqp://guest:" + secret + "@127.0.0.1:port/",
	} {
		for _, args := range [][]string{
			{"dlq", "replay", "1"},
			{"dlq", "replay", "1", "--format", "json"},
			{"dlq", "replay", "1", "--yes"},
			{"dlq", "replay", "1", "--yes", "--format", "json"},
		} {
			res := exe(t, "", nil, append(args, "--database-url", path, "--publish-url", pub)...)
			requireHidden(t, res, "%s %v", pub, args)
			res = exe(t, "", map[string]string{envPublishURL: pub}, append(args, "--database-url", path)...)
			requireHidden(t, res, "$%s=%s %v", envPublishURL, pub, args)
		}
		res := exe(t, "", nil, "dlq", "replay", "1", "--format", "json", "--database-url", path, "--publish-url", pub)
		if res.code == 0 {
			var out changeJSON
			require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
			require.Contains(t, *out.PublishURL, "REDACTED", pub)
		}
	}

	// Database URLs, in every command that connects: the store cannot be reached, or
	// is reached with a password the server ignores (trust authentication).
	testdb.Require(t)
	reachable, err := url.Parse(testdb.URL())
	require.NoError(t, err)
	reachable.User = url.UserPassword(reachable.User.Username(), secret)
	schema := testdb.Schema(t, testdb.Pool(t))
	for _, db := range []string{
		"postgres://postgres:" + secret + "@127.0.0.1:1/test",
		"postgres://postgres@127.0.0.1:1/test?password=" + secret,
		"postgres://postgres:" + secret + "@127.0.0.1:1/test?sslmode=sometimes",
		"postgres://postgres:" + secret + "@127.0.0.1:port/test",
		reachable.String(),
	} {
		for _, args := range [][]string{
			{"migrate", "--schema", "cli_never_" + strings.Repeat("x", 4)},
			{"dedup", "stats", "--schema", "cli_missing_schema"},
			{"dlq", "report", "--schema", "cli_missing_schema"},
			{"dlq", "show", "99", "--schema", schema},
			{"dlq", "replay", "99", "--schema", schema},
			{"dlq", "replay", "--all", "--format", "json", "--schema", schema, "--yes"},
			{"dlq", "check", "--format", "json", "--schema", "cli_missing_schema"},
		} {
			if db == reachable.String() && args[0] == "migrate" {
				continue // would create the schema
			}
			res := exe(t, "", nil, append(args, "--database-url", db)...)
			requireHidden(t, res, "%s %v", db, args)
			res = exe(t, "", map[string]string{envDatabaseURL: db}, args...)
			requireHidden(t, res, "$%s=%s %v", envDatabaseURL, db, args)
		}
	}
}
