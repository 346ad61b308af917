package dlq

import (
	"regexp"
	"strings"
)

// A scrubPattern is one form of secret that ScrubError redacts.
type scrubPattern struct {
	// name names the form, in tests and when reading the table.
	name string
	// hints are lower-case strings, one of which every redacted match contains
	// (in any case). ScrubError skips the pattern when the text holds none of them,
	// which saves running re over most error text. Nil means the pattern always runs.
	hints []string
	// re finds the form.
	re *regexp.Regexp
	// anchor, when not empty, is a string that every match of re contains, and
	// white space (as \s means it) is in no match but as its first byte, where ^
	// can stand for it: re then runs only on the words of the text that hold
	// anchor, which is much faster than on the whole text.
	anchor string
	// group is the submatch replaced by REDACTED; 0 is the whole match.
	group int
	// keep, when not nil, reports whether match m of re in s (as
	// FindAllStringSubmatchIndex returns it) is a secret; the other matches are left
	// as they are.
	keep func(s string, m []int) bool
	// redact, when not nil, replaces re, group and keep: it returns s with the
	// secrets of this form redacted.
	redact func(s string) string
}

// secretParamHints are the hints of the forms whose key must satisfy isSecretParam:
// every such key contains one of them.
var secretParamHints = []string{
	"authorization", "cookie", "pass", "pwd", "secret", "token", "api-key", "api_key",
	"apikey", "credential", "session", "sig", "private-key",
}

// scrubPatterns are the forms ScrubError redacts, in the order it looks for them.
// Forms found by what surrounds the secret (a URL's userinfo, a header name, a key)
// come first, so that each secret is redacted whole, and forms found by the secret's
// own shape last. Each has a row in TestScrubError.
var scrubPatterns = []scrubPattern{
	{
		// A PEM private key block of any kind (RSA, EC, DSA, OPENSSH, ENCRYPTED, PGP's
		// KEY BLOCK, or plain), or its beginning when the text was cut before its end.
		// It comes first: its body may hold anything.
		name:  "PrivateKey",
		hints: []string{"private key"},
		re: regexp.MustCompile(`(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?` +
			`(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|$)`),
	},
	{
		// scheme://user:password@ of any scheme; group 1 is the password, up to the
		// last @ before white space or a quote, so that a password with an unescaped @
		// is redacted whole.
		name:   "URLPassword",
		hints:  []string{"://"},
		anchor: "://",
		re: regexp.MustCompile(`(?i)\b[a-z][a-z0-9+.\-]*://[^\s:/?#@"'<>` + "`" + `]*:` +
			`([^\s"'<>` + "`" + `]*)@`),
		group: 1,
	},
	{
		// scheme://token@, userinfo without a password, which is a token as often as a
		// user name (https://ghp_…@github.com, nats://token@host); group 1 is the
		// userinfo. Without a scheme, user@host is an e-mail address and stays.
		name:   "URLToken",
		hints:  []string{"://"},
		anchor: "://",
		re:     regexp.MustCompile(`(?i)\b[a-z][a-z0-9+.\-]*://([^\s:/?#@"'<>` + "`" + `]+)@`),
		group:  1,
	},
	{
		// The Go MySQL driver's DSN, user:password@tcp(host)/db or user:password@/db;
		// group 1 is the password.
		name:   "MySQLDSN",
		hints:  []string{"@"},
		anchor: "@",
		re:     regexp.MustCompile(`(?i)(?:^|[\s"'=(,;])[^\s:/@"'<>()]+:([^\s"'<>]*)@(?:[a-z0-9]*\(|/)`),
		group:  1,
	},
	{
		// An Authorization or Proxy-Authorization header with an optional scheme;
		// group 1 is the credential.
		name:  "AuthorizationHeader",
		hints: []string{"authorization"},
		re: regexp.MustCompile(`(?i)\b(?:proxy-)?authorization"?\s*[:=]\s*"?` +
			`(?:(?:bearer|basic|digest|token|negotiate|ntlm|apikey|dpop|aws4-hmac-sha256)\s+)?([^\s"',;]+)`),
		group: 1,
	},
	{
		// A credential header, Name: value, whose hyphenated name isSecretParam
		// reports (X-Api-Key, Api-Key, X-Auth-Token, X-Amz-Security-Token,
		// Private-Token, X-Vault-Token), or an environment variable written so
		// (AWS_SECRET_ACCESS_KEY: value); group 2 is the value, without a trailing
		// colon. Authorization and cookies have patterns of their own.
		name:  "CredentialHeader",
		hints: secretParamHints,
		re: regexp.MustCompile(`(?:^|[^A-Za-z0-9_\-])((?i:[a-z0-9]+(?:-[a-z0-9]+)+)|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)` +
			`"?[ \t]*:[ \t]*"?([^\s"',;]*[^\s"',;:])`),
		group: 2,
		keep: func(s string, m []int) bool {
			name := strings.ToLower(s[m[2]:m[3]])
			return isSecretParam(name) && !strings.Contains(name, "authorization") &&
				!strings.Contains(name, "cookie") && !strings.HasPrefix(s[m[4]:m[5]], redacted)
		},
	},
	{
		// "Bearer token" and "Basic credentials" anywhere; group 1 is the scheme and
		// group 2 the credential, = signs included, not only trailing ones.
		name:  "BearerOrBasic",
		hints: []string{"bearer", "basic"},
		re:    regexp.MustCompile(`(?i)\b(bearer|basic)\s+([a-z0-9\-._~+/][a-z0-9\-._~+/=]*)`),
		group: 2,
		keep:  credentialAfterScheme,
	},
	{
		// A Cookie or Set-Cookie header; group 1 is its value, to the end of the line
		// or a double quote.
		name:  "Cookie",
		hints: []string{"cookie"},
		re:    regexp.MustCompile(`(?i)\b(?:set-)?cookie"?\s*:\s*([^\r\n"]+)`),
		group: 1,
	},
	{
		// A JSON string member, "key": "value", whose key isSecretParam reports;
		// group 1 is the key and group 2 the value, to the end of the text when its
		// closing quote is missing.
		name:  "JSONMember",
		hints: secretParamHints,
		re:    regexp.MustCompile(`"([^"\\]{1,256})"\s*:\s*"((?:[^"\\]|\\.)*)"?`),
		group: 2,
		keep:  func(s string, m []int) bool { return isSecretParam(s[m[2]:m[3]]) },
	},
	{
		// key=value, Key:value and YAML's key: value, as redactPairs describes them.
		name:   "KeyValue",
		hints:  secretParamHints,
		redact: redactPairs,
	},
	{
		// A JSON Web Token.
		name:   "JWT",
		hints:  []string{"eyj"},
		anchor: "eyJ",
		re:     regexp.MustCompile(`\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*`),
	},
	{
		// An AWS access key ID, long-term (AKIA) or temporary (ASIA).
		name:  "AWSAccessKeyID",
		hints: []string{"akia", "asia"},
		re:    regexp.MustCompile(`(?:AKIA|ASIA)[0-9A-Z]{16}`),
	},
	{
		// A GitHub token: personal (ghp_), OAuth (gho_), user-to-server (ghu_),
		// server-to-server (ghs_) or refresh (ghr_).
		name:  "GitHubToken",
		hints: []string{"ghp_", "gho_", "ghu_", "ghs_", "ghr_"},
		re:    regexp.MustCompile(`\bgh[pousr]_[A-Za-z0-9]{36,}`),
	},
	{
		// A GitHub fine-grained personal access token.
		name:  "GitHubFineGrainedToken",
		hints: []string{"github_pat_"},
		re:    regexp.MustCompile(`\bgithub_pat_[A-Za-z0-9_]{22,}`),
	},
	{
		// A GitLab personal access token.
		name:  "GitLabToken",
		hints: []string{"glpat-"},
		re:    regexp.MustCompile(`\bglpat-[A-Za-z0-9_\-]{20,}`),
	},
	{
		// A Slack token: bot (xoxb-), user (xoxp-), workspace app (xoxa-), refresh
		// (xoxr-) or legacy (xoxs-).
		name:  "SlackToken",
		hints: []string{"xox"},
		re:    regexp.MustCompile(`\bxox[abprs]-[A-Za-z0-9\-]{10,}`),
	},
	{
		// A Slack webhook URL, whose path is its secret; group 1 is the path after
		// services/ (or workflows/, triggers/).
		name:  "SlackWebhook",
		hints: []string{"hooks.slack.com"},
		re:    regexp.MustCompile(`(?i)\bhooks\.slack\.com/(?:services|workflows|triggers)/([A-Za-z0-9_/\-]+)`),
		group: 1,
	},
	{
		// A Stripe secret (sk_) or restricted (rk_) key, live or test. Publishable keys
		// (pk_live_, pk_test_) are public by design, shipped to browsers, and stay.
		name:  "StripeSecretKey",
		hints: []string{"k_live_", "k_test_"},
		re:    regexp.MustCompile(`\b[rs]k_(?:live|test)_[A-Za-z0-9]{10,}`),
	},
	{
		// A Google API key.
		name:  "GoogleAPIKey",
		hints: []string{"aiza"},
		re:    regexp.MustCompile(`\bAIza[A-Za-z0-9_\-]{35}`),
	},
	{
		// An npm access token.
		name:  "NPMToken",
		hints: []string{"npm_"},
		re:    regexp.MustCompile(`\bnpm_[A-Za-z0-9]{36,}`),
	},
}

// scrub redacts the secrets of p in s. folded is foldCase(s): p is skipped when it
// holds none of p's hints.
func (p *scrubPattern) scrub(s, folded string) string {
	if p.hints != nil && !containsAny(folded, p.hints) {
		return s
	}
	if p.redact != nil {
		return p.redact(s)
	}
	var b strings.Builder
	last := 0
	for _, m := range p.matches(s) {
		start, end := m[2*p.group], m[2*p.group+1]
		if start < 0 || (p.keep != nil && !p.keep(s, m)) {
			continue
		}
		b.WriteString(s[last:start])
		b.WriteString(redacted)
		last = end
	}
	if last == 0 && b.Len() == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

// matches returns the matches of p.re in s, as FindAllStringSubmatchIndex does.
func (p *scrubPattern) matches(s string) [][]int {
	if p.anchor == "" {
		return p.re.FindAllStringSubmatchIndex(s, -1)
	}
	var all [][]int
	for end := 0; ; {
		i := strings.Index(s[end:], p.anchor)
		if i < 0 {
			return all
		}
		i += end
		start := strings.LastIndexAny(s[:i], regexpSpaces) + 1
		end = i + len(p.anchor)
		if j := strings.IndexAny(s[end:], regexpSpaces); j >= 0 {
			end += j
		} else {
			end = len(s)
		}
		for _, m := range p.re.FindAllStringSubmatchIndex(s[start:end], -1) {
			for k := range m {
				if m[k] >= 0 {
					m[k] += start
				}
			}
			all = append(all, m)
		}
	}
}

// regexpSpaces are the bytes that \s matches in a regexp.
const regexpSpaces = " \t\n\f\r"

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// foldCase returns s in lower case, with the long s (U+017F) as s: (?i) in a regexp
// matches K, k and the Kelvin sign (U+212A), which strings.ToLower maps to k, and S,
// s and the long s, which it keeps. A hint in any case in s is then in foldCase(s).
func foldCase(s string) string {
	s = strings.ToLower(s)
	if strings.Contains(s, "\u017f") {
		s = strings.ReplaceAll(s, "\u017f", "s")
	}
	return s
}
