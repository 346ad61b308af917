package dlq

import (
	"math"
	"net/url"
	"slices"
	"strings"
)

// RedactURL returns raw, a URL, fit to be shown or logged: its userinfo, whether a
// user and password or a lone token, is replaced by REDACTED, and so are the values
// of its query parameters (and of fragment parameters, where OAuth puts tokens) whose
// names look secret as in [ScrubError] (password=, token=, access_token=, api_key=,
// sig=, X-Amz-Signature= and the like) or are key=, auth=, jwt= or nkey=, in any case,
// percent-encoded or not. The rest of the URL
// is kept byte for byte, but for the secrets in it that ScrubError finds by their
// shape, such as the path of a Slack webhook URL. A string that does not parse as a
// URL is passed through ScrubError. RedactURL never truncates.
//
// postgres://app:s3cret@db:5432/orders?sslmode=disable becomes
// postgres://REDACTED@db:5432/orders?sslmode=disable, nats://t0ken@nats:4222 becomes
// nats://REDACTED@nats:4222, and https://api.example.com/v1?page=2&access_token=t0k
// becomes https://api.example.com/v1?page=2&access_token=REDACTED.
//
// RedactURL is safe for concurrent use.
func RedactURL(raw string) string {
	// ScrubError first, so that a password holding an unescaped @ or /, which
	// url.Parse would split at the wrong place, is redacted whole.
	s := ScrubError(raw, math.MaxInt)
	u, err := url.Parse(s)
	if err != nil || u.Opaque != "" {
		return s
	}
	// Split s as url.Parse does: the fragment at the first #, the query at the
	// first ?, the authority after // up to the first /, its userinfo up to its
	// last @.
	rest, fragment, hasFragment := strings.Cut(s, "#")
	rest, query, hasQuery := strings.Cut(rest, "?")
	var b strings.Builder
	b.Grow(len(s))
	if u.User != nil {
		i := strings.Index(rest, "//") + len("//")
		authority := rest[i:]
		if j := strings.IndexByte(authority, '/'); j >= 0 {
			authority = authority[:j]
		}
		b.WriteString(rest[:i])
		b.WriteString(redacted)
		rest = rest[i+strings.LastIndexByte(authority, '@'):]
	}
	b.WriteString(rest)
	if hasQuery {
		b.WriteByte('?')
		b.WriteString(redactParams(query))
	}
	if hasFragment {
		b.WriteByte('#')
		b.WriteString(redactParams(fragment))
	}
	return b.String()
}

// urlSecretParams are the names of URL parameters that hold secrets besides those
// isSecretParam reports: API keys (as Google's key=), auth=, jwt= and NATS's nkey=.
// In error text at large, key= is as often an idempotency or cache key.
var urlSecretParams = []string{"key", "auth", "jwt", "nkey"}

// redactParams returns the query (or fragment) q with the values of its
// &-separated name=value parameters whose unescaped names look secret, to
// isSecretParam or urlSecretParams, replaced by REDACTED.
func redactParams(q string) string {
	params := strings.Split(q, "&")
	changed := false
	for i, p := range params {
		name, value, ok := strings.Cut(p, "=")
		if !ok || value == "" || value == redacted {
			continue
		}
		if n, err := url.QueryUnescape(name); err == nil {
			name = n
		}
		if isSecretParam(name) || slices.Contains(urlSecretParams, strings.ToLower(name)) {
			params[i] = p[:len(p)-len(value)] + redacted
			changed = true
		}
	}
	if !changed {
		return q
	}
	return strings.Join(params, "&")
}
