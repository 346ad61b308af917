package main

import (
	"math"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/idemkit/idem/dlq"
)

// redacted replaces every credential the command would otherwise print.
const redacted = "REDACTED"

// urlRE matches a URL in text: a scheme, "://", and what follows up to white space, a
// quote or a backtick.
var urlRE = regexp.MustCompile("(?i)\\b[a-z][a-z0-9+.\\-]*://[^\\s\"'<>`]*")

// redactURL returns the URL raw fit to print: its userinfo, a user and a password or a
// lone token (nats://TOKEN@host), becomes REDACTED, and so do the values of its
// secret-looking query parameters (password=, token=, sig=, …; see secretParam). A
// URL that parses goes through dlq.RedactURL; one that does not is read as text, as
// url.Parse would split it, and where it is ambiguous redacted more, never less:
// everything before the last @ is userinfo. It never reformats the rest, and
// redacting twice changes nothing. Text that is not a URL, such as a key=value DSN,
// goes through dlq.ScrubError.
func redactURL(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return dlq.ScrubError(raw, math.MaxInt)
	}
	if u, err := url.Parse(raw); err == nil && u.Host != "" {
		return dlq.RedactURL(raw)
	}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		rest = redacted + rest[at:]
	}
	if i := strings.IndexAny(rest, "?#"); i >= 0 {
		rest = rest[:i+1] + redactParams(rest[i+1:])
	}
	return scheme + "://" + rest
}

// redactParams redacts the values of the secret-looking parameters of a URL's query
// and fragment, as written: a=1&password=x#token=y.
func redactParams(s string) string {
	var b strings.Builder
	for s != "" {
		end := strings.IndexAny(s, "&#")
		if end < 0 {
			end = len(s)
		}
		part := s[:end]
		if key, _, ok := strings.Cut(part, "="); ok && secretParam(unescapeParam(key)) {
			part = key + "=" + redacted
		}
		b.WriteString(part)
		if end < len(s) {
			b.WriteByte(s[end])
			end++
		}
		s = s[end:]
	}
	return b.String()
}

func unescapeParam(s string) string {
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	return s
}

// secretParams are URL parameter names that hold secrets besides those dlq.IsSecretKey
// reports.
var secretParams = []string{"pass", "pwd", "passphrase", "sig", "key", "auth", "jwt", "nkey"}

// secretParam reports whether the URL parameter key holds a secret.
func secretParam(key string) bool {
	k := strings.ToLower(key)
	return dlq.IsSecretKey(k) || slices.Contains(secretParams, k) || strings.Contains(k, "pwd") ||
		strings.HasSuffix(k, "_sig") || strings.HasSuffix(k, "-sig")
}

// redactURLs redacts, with redactURL, every URL in the text s: a message, an error
// from a driver. SQLite URLs name files and hold no credentials: they stay as they are.
func redactURLs(s string) string {
	return urlRE.ReplaceAllStringFunc(s, func(u string) string {
		if strings.HasPrefix(strings.ToLower(u), "sqlite:") {
			return u
		}
		return redactURL(u)
	})
}

// urlSecrets returns the credentials in raw, as written and decoded, even when raw
// does not parse, so that they can be scrubbed from messages that hold them outside a
// URL: the password of its userinfo, or its lone userinfo (a NATS token, for
// instance) unless the scheme is PostgreSQL's, where it is a user name; and the values
// of its secret-looking parameters, in a URL's query or in a key=value DSN.
// Credentials shorter than 4 bytes are left out: replacing them everywhere would
// garble messages.
func urlSecrets(raw string) []string {
	var out []string
	add := func(s string) {
		for _, v := range []string{s, unescapeParam(s)} {
			if len(v) >= 4 && v != redacted && !slices.Contains(out, v) {
				out = append(out, v)
			}
		}
	}
	params := raw
	if scheme, rest, ok := strings.Cut(raw, "://"); ok {
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			user, pw, hasPW := strings.Cut(rest[:at], ":")
			switch {
			case hasPW:
				add(pw)
			case !strings.EqualFold(scheme, "postgres") && !strings.EqualFold(scheme, "postgresql"):
				add(user)
			}
			rest = rest[at+1:]
		}
		params = ""
		if i := strings.IndexAny(rest, "?#"); i >= 0 {
			params = rest[i+1:]
		}
	}
	for _, part := range strings.FieldsFunc(params, func(r rune) bool { return r == '&' || r == '#' || r == ' ' }) {
		if key, v, ok := strings.Cut(part, "="); ok && secretParam(unescapeParam(key)) {
			add(strings.Trim(v, "'"))
		}
	}
	return out
}
