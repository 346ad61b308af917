package dlq

import (
	"math"
	"slices"
	"strings"
)

const (
	// DefaultMaxErrorLength is the length, in bytes, to which ScrubError truncates
	// error text when given no maximum.
	DefaultMaxErrorLength = 4096
	// DefaultMaxMetadataValueLength is the length, in bytes, to which SanitizeMetadata
	// truncates each metadata value.
	DefaultMaxMetadataValueLength = 1024
	// DefaultMaxMetadataEntries is how many metadata entries SanitizeMetadata keeps.
	DefaultMaxMetadataEntries = 100
	// DefaultMaxMetadataKeyLength is the longest metadata key, in bytes, that
	// SanitizeMetadata keeps; longer keys are dropped.
	DefaultMaxMetadataKeyLength = 256
)

const (
	// redacted replaces every secret.
	redacted = "REDACTED"
	// truncatedMarker ends text that ScrubError cut short.
	truncatedMarker = "…(truncated)"
)

// ScrubError returns the error text s with secrets replaced by the word REDACTED,
// truncated to at most max bytes; max <= 0 means DefaultMaxErrorLength. It redacts
//
//   - passwords in URLs and DSNs of any scheme: postgres://user:secret@host becomes
//     postgres://user:REDACTED@host, and so does the MySQL driver's user:secret@tcp(host)/db;
//     a URL's userinfo without a password is taken to be a token: nats://t0k@host and
//     https://ghp_…@github.com become nats://REDACTED@host and https://REDACTED@github.com
//     (user@host without a scheme is an e-mail address and stays);
//   - key=value passwords and secrets, quoted or not, in any case: password=, passwd=,
//     pwd=, pass=, and any key that [IsSecretKey] reports, such as token=, access_token=,
//     api_key=, apikey=, secret=, client_secret=, signature=, AWS_SECRET_ACCESS_KEY=,
//     AWS_SESSION_TOKEN=, DB_PASSWORD=, as well as sig=; likewise "key": "value" JSON
//     members and Key:value fields as %+v prints them;
//   - YAML's key: value, for a key that looks secret as above and ends in password,
//     passwd, passphrase, pwd, pass, secret, token, key, credential(s), signature or
//     sig (password:, client_secret:, access_token:, api_key:, but not tokens: or
//     token_count:), where YAML puts a key: at the start of a line, after indentation
//     or a list's "- " (the value is then the rest of the line), after { or , (it ends
//     at , } or ]), or after ": " as an error chain nests it (it is one word);
//   - Authorization and Proxy-Authorization header values (Authorization: Basic xyz
//     becomes Authorization: Basic REDACTED), Bearer and Basic credentials anywhere
//     (Bearer abc.def becomes Bearer REDACTED; a plain word after Basic or a
//     lower-case bearer is prose and stays, as in "bearer token expired"), Cookie
//     header values, other credential headers, Name: value with a hyphenated name that
//     looks secret as above (X-Api-Key, Api-Key, X-Auth-Token, X-Amz-Security-Token,
//     Private-Token, X-Vault-Token), and environment variables written the same way
//     (AWS_SECRET_ACCESS_KEY: value);
//   - PEM private key blocks of every kind (RSA, EC, DSA, OPENSSH, ENCRYPTED, PGP, or
//     plain PRIVATE KEY), to the end of the text when the block was cut short;
//   - tokens by their shape: JSON Web Tokens, AWS access key IDs (AKIA…, ASIA…),
//     GitHub tokens (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_), GitLab personal access
//     tokens (glpat-), Slack tokens (xoxb-, xoxp-, xoxa-, xoxr-, xoxs-) and the path of
//     Slack webhook URLs (https://hooks.slack.com/services/REDACTED), Stripe secret and
//     restricted keys (sk_live_, sk_test_, rk_live_, rk_test_), Google API keys (AIza…)
//     and npm tokens (npm_). Stripe publishable keys (pk_live_, pk_test_) are public
//     by design and stay.
//
// Scrubbing is best-effort: it catches the forms above, not every secret a message
// could hold. Where a form is ambiguous it redacts more than the secret rather than
// less: a line such as "password: must be 8 characters" loses its message. Invalid
// UTF-8 and NUL bytes are replaced by U+FFFD, so that the result can be stored as is
// in a PostgreSQL text column. Only the first 16 × max bytes of s (at least 64 KiB)
// are read, so that a huge error costs no more than that. Secrets are redacted before
// truncation, which never
// splits a UTF-8 sequence and ends the text with "…(truncated)" within max bytes (or
// cuts without the marker when max is shorter than it). Stacks do not belong in s:
// they stay in logs and spans.
//
// ScrubError is safe for concurrent use.
func ScrubError(s string, max int) string {
	if max <= 0 {
		max = DefaultMaxErrorLength
	}
	if window := scrubWindow(max); len(s) > window {
		// Text far past what is kept is never read: a megabyte of error must cost
		// no more than the window.
		s = s[:window]
	}
	s = validText(s)
	folded := foldCase(s)
	for i := range scrubPatterns {
		if r := scrubPatterns[i].scrub(s, folded); r != s {
			s, folded = r, foldCase(r)
		}
	}
	return truncate(s, max)
}

// scrubWindow is how much of a text ScrubError reads to return at most max bytes:
// sixteen times max, and at least 64 KiB, so that redactions that shorten the text
// (a long key replaced by REDACTED) still leave max bytes to keep.
func scrubWindow(limit int) int {
	if limit > math.MaxInt/16 {
		return math.MaxInt
	}
	return max(16*limit, 64<<10)
}

// credentialAfterScheme reports whether a bearerRE match is a credential. After
// "Bearer" with a capital, as in a header, it always is. Otherwise it is unless it is
// a plain word, as in prose ("bearer token expired", "Basic Auth failed").
func credentialAfterScheme(s string, m []int) bool {
	if scheme := s[m[2]:m[3]]; scheme[0] == 'B' && strings.EqualFold(scheme, "bearer") {
		return true
	}
	cred := s[m[4]:m[5]]
	// A plain word is letters only, lower case after the first.
	return strings.TrimLeft(cred[1:], "abcdefghijklmnopqrstuvwxyz") != "" || !isASCIILetter(cred[0])
}

func isASCIILetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

// redactPairs redacts the values of the key=value, Key:value and key: value pairs in
// s whose key looks secret. A value is double-quoted, single-quoted (to the end of s
// when its closing quote is missing, as in text cut short) or bare: up to white space,
// &, a quote or an angle bracket, without trailing colons, commas and semicolons, so
// that "url?api_key=x: 403" and "Pwd=x;" keep their punctuation. key: value, with
// white space after the colon, is read as YAML only where yamlValue finds YAML, so
// that "invalid password: connection refused" stays. Pairs are searched for again
// from the start of each value whose key is not secret, so that msg="token=x" and
// err:token=x are redacted too.
func redactPairs(s string) string {
	var b strings.Builder
	pos, last := 0, 0
	for pos < len(s) {
		keyAt, keyEnd, valueAt, ok := nextPair(s, pos)
		if !ok {
			break
		}
		key := s[keyAt:keyEnd]
		if !isSecretParam(key) {
			pos = valueAt
			continue
		}
		var vs, ve, next int
		if s[keyEnd] == ':' && valueAt > keyEnd+1 {
			var ok bool
			if vs, ve, next, ok = yamlValue(s, key, keyAt, valueAt); !ok {
				pos = valueAt
				continue
			}
		} else {
			vs, ve, next = pairValue(s, valueAt)
		}
		pos = next
		if v := s[vs:ve]; v == "" || v == redacted || strings.HasPrefix(v, redacted+"@") {
			// Nothing to redact, or already redacted, as the password of
			// token:secret@host was: keep the host.
			continue
		}
		b.WriteString(s[last:vs])
		b.WriteString(redacted)
		last = ve
	}
	if last == 0 && b.Len() == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

// nextPair finds the first pair at or after pos in s: a key, a run of ASCII letters,
// digits, _, . and - (or of the Kelvin sign and the long s, which match k and s in
// any case) that starts at pos or after another byte, followed by = (with white space
// allowed around it) or by : (with spaces and tabs allowed after it). It returns the
// bounds of the key and where its value starts. A byte loop rather than a regexp:
// redactPairs calls it once per key.
func nextPair(s string, pos int) (keyAt, keyEnd, valueAt int, ok bool) {
	for j := pos; j < len(s); j++ {
		i := strings.IndexAny(s[j:], "=:")
		if i < 0 {
			break
		}
		j += i
		keyEnd = j
		if s[j] == '=' {
			for keyEnd > pos && isRegexpSpace(s[keyEnd-1]) {
				keyEnd--
			}
		}
		if keyAt = pairKeyStart(s, pos, keyEnd); keyAt == keyEnd {
			continue
		}
		valueAt = j + 1
		if s[j] == '=' {
			for valueAt < len(s) && isRegexpSpace(s[valueAt]) {
				valueAt++
			}
		} else {
			for valueAt < len(s) && (s[valueAt] == ' ' || s[valueAt] == '\t') {
				valueAt++
			}
		}
		return keyAt, keyEnd, valueAt, true
	}
	return 0, 0, 0, false
}

// pairKeyStart returns where the key that ends at end in s starts, at pos at the
// earliest.
func pairKeyStart(s string, pos, end int) int {
	for end > pos {
		switch {
		case isPairKeyByte(s[end-1]):
			end--
		case strings.HasSuffix(s[pos:end], "\u212a"):
			end -= len("\u212a")
		case strings.HasSuffix(s[pos:end], "\u017f"):
			end -= len("\u017f")
		default:
			return end
		}
	}
	return end
}

// isPairKeyByte reports whether c is an ASCII byte of a key, as nextPair reads it.
func isPairKeyByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-'
}

// isRegexpSpace reports whether c is one of regexpSpaces.
func isRegexpSpace(c byte) bool { return strings.IndexByte(regexpSpaces, c) >= 0 }

// yamlSecretEnds are the endings of the keys whose YAML values yamlValue reads:
// access_token and api_key, but not tokens or token_count.
var yamlSecretEnds = []string{
	"password", "passwd", "passphrase", "pwd", "pass", "secret", "token", "key",
	"credential", "credentials", "signature", "sig",
}

// yamlValue returns the bounds of the value of "key: value" in s, where the key
// starts at keyAt and the value at valueAt, and where to search for the next pair, as
// pairValue does; ok is false when the key is not a secret YAML key or does not stand
// where YAML puts one. A quoted value is read as pairValue reads it. A bare value is
// the rest of the line when the key starts a line (after indentation and a list's
// "- "), ends at a comma, closing brace or bracket when the key follows { or , as in
// {user: bob, password: x}, and is one word, as pairValue reads it, when the key
// follows ": " as in an error chain, config: password: x.
func yamlValue(s, key string, keyAt, valueAt int) (start, end, next int, ok bool) {
	k := strings.ToLower(key)
	if !slices.ContainsFunc(yamlSecretEnds, func(e string) bool { return strings.HasSuffix(k, e) }) {
		return 0, 0, 0, false
	}
	// Look back past the white space before the key, and a list's dash.
	i := keyAt
	for i > 0 && (s[i-1] == ' ' || s[i-1] == '\t') {
		i--
	}
	spaced := i < keyAt
	lineStart := func(i int) bool { return i == 0 || s[i-1] == '\n' || s[i-1] == '\r' }
	if spaced && i > 0 && s[i-1] == '-' {
		j := i - 1
		for j > 0 && (s[j-1] == ' ' || s[j-1] == '\t') {
			j--
		}
		if lineStart(j) {
			i = j
		}
	}
	var stops string
	switch {
	case lineStart(i):
		stops = "\r\n"
	case s[i-1] == '{' || s[i-1] == ',':
		stops = ",}]\r\n"
	case s[i-1] == ':' && spaced:
		start, end, next = pairValue(s, valueAt)
		return start, end, next, true
	default:
		return 0, 0, 0, false
	}
	if valueAt < len(s) && (s[valueAt] == '"' || s[valueAt] == '\'') {
		start, end, next = pairValue(s, valueAt)
		return start, end, next, true
	}
	end = valueAt
	for end < len(s) && strings.IndexByte(stops, s[end]) < 0 {
		end++
	}
	next = end
	for end > valueAt && (s[end-1] == ' ' || s[end-1] == '\t') {
		end--
	}
	return valueAt, end, next, true
}

// pairValue returns the bounds of the value that starts at i in s, as redactPairs
// describes it, and where to search for the next pair: after the value's closing
// quote or at its end. next is always greater than i, unless i is the end of s.
func pairValue(s string, i int) (start, end, next int) {
	if i >= len(s) {
		return i, i, i + 1
	}
	if q := s[i]; q == '"' || q == '\'' {
		for j := i + 1; j < len(s); j++ {
			switch s[j] {
			case '\\':
				j++
			case q:
				return i + 1, j, j + 1
			}
		}
		return i + 1, len(s), len(s)
	}
	end = i
	for end < len(s) && !strings.ContainsRune(" \t\n\v\f\r&\"'<>", rune(s[end])) {
		end++
	}
	next = end
	for end-i > 1 && strings.IndexByte(":,;", s[end-1]) >= 0 {
		end--
	}
	if next == i {
		next++
	}
	return i, end, next
}

// isSecretParam reports whether a key in error text names a secret: IsSecretKey, or a
// password or signature abbreviation.
func isSecretParam(key string) bool {
	if IsSecretKey(key) {
		return true
	}
	k := strings.ToLower(key)
	return strings.Contains(k, "pwd") || strings.Contains(k, "passphrase") || k == "pass" ||
		k == "sig" || strings.HasSuffix(k, "_sig") || strings.HasSuffix(k, "-sig") || strings.HasSuffix(k, ".sig")
}

// truncate cuts s to at most max bytes on a UTF-8 boundary, ending it with
// truncatedMarker when max leaves room for it. s must be valid UTF-8.
func truncate(s string, max int) string {
	if len(s) <= max {
		return s
	}
	marker := truncatedMarker
	cut := max - len(marker)
	if cut < 0 {
		marker, cut = "", max
	}
	return s[:runeCut(s, cut)] + marker
}

// secretKeyParts are the substrings that make a metadata key look secret.
var secretKeyParts = []string{
	"authorization", "cookie", "password", "passwd", "secret", "token",
	"api-key", "api_key", "apikey", "credential", "session", "signature",
	"private-key", "x-api-key",
}

// IsSecretKey reports whether a metadata or header key looks like it holds a secret:
// whether it contains, in any case, one of authorization, cookie, password, passwd,
// secret, token, api-key, api_key, apikey, credential, session, signature,
// private-key or x-api-key.
//
// IsSecretKey is safe for concurrent use.
func IsSecretKey(key string) bool {
	k := strings.ToLower(key)
	for _, part := range secretKeyParts {
		if strings.Contains(k, part) {
			return true
		}
	}
	return false
}

// SanitizeMetadata returns a copy of md fit to be shown to an operator or sent in an
// alert: the values of keys that [IsSecretKey] reports are replaced by REDACTED, the
// other values are passed through [ScrubError] with DefaultMaxMetadataValueLength,
// keys longer than DefaultMaxMetadataKeyLength bytes are dropped, and of the rest only
// the first DefaultMaxMetadataEntries in sorted key order are kept. It returns nil for
// a nil md and never modifies md.
//
// SanitizeMetadata is for what is displayed, logged or alerted. A dead letter's stored
// Metadata is the original message's, byte for byte, only when the caller chooses to
// store it so, for a faithful replay; otherwise store what SanitizeMetadata returns.
//
// SanitizeMetadata is safe for concurrent use, provided md is not modified meanwhile.
func SanitizeMetadata(md map[string]string) map[string]string {
	if md == nil {
		return nil
	}
	keys := make([]string, 0, len(md))
	for k := range md {
		if len(k) <= DefaultMaxMetadataKeyLength {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	if len(keys) > DefaultMaxMetadataEntries {
		keys = keys[:DefaultMaxMetadataEntries]
	}
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		if IsSecretKey(k) {
			out[k] = redacted
		} else {
			out[k] = ScrubError(md[k], DefaultMaxMetadataValueLength)
		}
	}
	return out
}
