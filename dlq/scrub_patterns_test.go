package dlq

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// scrubIgnoringHints is ScrubError running every pattern, whatever the hints say.
func scrubIgnoringHints(s string, max int) string {
	if max <= 0 {
		max = DefaultMaxErrorLength
	}
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
	for _, p := range scrubPatterns {
		p.hints = nil
		s = p.scrub(s, "")
	}
	return truncate(s, max)
}

func TestScrubPatterns(t *testing.T) {
	t.Parallel()

	t.Run("NamesAreUnique", func(t *testing.T) {
		t.Parallel()
		seen := make(map[string]bool)
		for _, p := range scrubPatterns {
			require.NotEmpty(t, p.name)
			require.False(t, seen[p.name], p.name)
			seen[p.name] = true
			require.True(t, (p.re == nil) != (p.redact == nil), "%s: re or redact, not both", p.name)
		}
	})

	t.Run("EachHasASecretsRow", func(t *testing.T) {
		t.Parallel()
		for _, p := range scrubPatterns {
			found := false
			for _, tt := range scrubSecretTests {
				if p.scrub(tt.in, foldCase(tt.in)) != tt.in {
					found = true
					break
				}
			}
			require.True(t, found, "no row of scrubSecretTests exercises %s", p.name)
		}
	})

	t.Run("HintsAreLowerCase", func(t *testing.T) {
		t.Parallel()
		for _, p := range scrubPatterns {
			for _, h := range p.hints {
				require.Equal(t, foldCase(h), h, p.name)
			}
		}
	})

	t.Run("SecretParamHintsCoverSecretKeys", func(t *testing.T) {
		t.Parallel()
		// isSecretParam reports these keys and the keys that contain them.
		keys := append([]string{"pwd", "passphrase", "pass", "sig", "x_sig"}, secretKeyParts...)
		for _, k := range keys {
			require.True(t, isSecretParam(k), k)
			require.True(t, containsAny(foldCase(k), secretParamHints), k)
		}
	})

	t.Run("EachRedactedMatchHoldsAHint", func(t *testing.T) {
		t.Parallel()
		for _, in := range scrubTexts() {
			for _, p := range scrubPatterns {
				if p.re == nil || p.hints == nil {
					continue
				}
				for _, m := range p.re.FindAllStringSubmatchIndex(in, -1) {
					if m[2*p.group] < 0 || (p.keep != nil && !p.keep(in, m)) {
						continue
					}
					require.True(t, containsAny(foldCase(in[m[0]:m[1]]), p.hints), "%s in %q", p.name, in)
				}
			}
		}
	})

	t.Run("HintsChangeNoResult", func(t *testing.T) {
		t.Parallel()
		for _, in := range scrubTexts() {
			require.Equal(t, scrubIgnoringHints(in, 0), ScrubError(in, 0), "%q", in)
		}
	})

	t.Run("FoldCase", func(t *testing.T) {
		t.Parallel()
		// (?i) matches the Kelvin sign for k and the long s for s.
		require.Equal(t, "cookie: basic", foldCase("COO\u212aIE: BA\u017fIC"))
		require.Equal(t, "Coo\u212aie: REDACTED", ScrubError("Coo\u212aie: c00kie", 0))
		require.Equal(t, "ba\u017fic REDACTED", ScrubError("ba\u017fic dXNlcjpwYXNz", 0))
	})
}

// pairKeyRE is the regexp that nextPair implements, searched for in s[pos:] so that ^
// stands for the separator or terminator before pos: group 1 is the key.
var pairKeyRE = regexp.MustCompile(`(?i)(?:^|[^a-z0-9_.\-])([a-z0-9_.\-]+)(?:\s*=\s*|:[ \t]*)`)

// checkNextPair checks that nextPair finds in s what pairKeyRE does, from every
// position.
func checkNextPair(t *testing.T, s string) {
	t.Helper()
	for pos := 0; pos <= len(s); pos++ {
		keyAt, keyEnd, valueAt, ok := nextPair(s, pos)
		m := pairKeyRE.FindStringSubmatchIndex(s[pos:])
		require.Equal(t, m != nil, ok, "%q from %d", s, pos)
		if ok {
			require.Equal(t, []int{pos + m[2], pos + m[3], pos + m[1]}, []int{keyAt, keyEnd, valueAt}, "%q from %d", s, pos)
		}
	}
}

func TestNextPair(t *testing.T) {
	t.Parallel()
	for _, s := range append(scrubTexts(),
		"a=b=c", "a =:b", "a:=b", " = x", "k \t\n= \f\r v", "k:\t v", "k :v", "é=x", "\u212aey=1 \u017fig=2",
		"x\u212a=1", "\u212a", "=", ":", "a:", "-=.", "k\v=v",
	) {
		checkNextPair(t, s)
	}
}

// randomScrubTexts returns n texts made of fragments of the forms ScrubError
// redacts, the same texts on every run.
func randomScrubTexts(n int) []string {
	fragments := []string{
		"password", "token", "Key", "X-Api-Key", "AWS_SECRET_ACCESS_KEY", "sig", "user", "a", "7",
		"=", ":", ": ", " = ", " ", "\t", "\n", "\r\n", "- ", "{", "}", ",", ", ", ";", "&", "?", "#",
		"\"", "'", "(", ")", "/", "://", "@", "tcp(", "postgres", "Bearer ", "basic ", "Cookie", "authorization",
		"eyJ", ".", "AKIA", "ghp_", "xoxb-", "sk_live_", "npm_", "glpat-", "AIza", "hooks.slack.com/services/",
		fakeTokenBody36, "-----BEGIN EC PRIVATE KEY-----", "-----END EC PRIVATE KEY-----",
		"\u212a", "\u017f", "é", "REDACTED", "\x00",
	}
	rng := rand.New(rand.NewPCG(1, 2))
	texts := make([]string, n)
	for i := range texts {
		var b strings.Builder
		for range rng.IntN(12) {
			b.WriteString(fragments[rng.IntN(len(fragments))])
		}
		texts[i] = b.String()
	}
	return texts
}

func TestScrubRandomTexts(t *testing.T) {
	t.Parallel()
	for _, s := range randomScrubTexts(300) {
		got := ScrubError(s, 0)
		require.True(t, utf8.ValidString(got), "%q", s)
		require.Equal(t, scrubIgnoringHints(s, 0), got, "%q", s)
		require.Equal(t, got, ScrubError(got, 0), "scrubbing %q twice changes nothing", s)
		if utf8.ValidString(s) {
			checkNextPair(t, s)
		}
		u := RedactURL(s)
		require.Equal(t, u, RedactURL(u), "redacting %q twice changes nothing", s)
	}
}

// scrubTexts are the inputs of the ScrubError tests.
func scrubTexts() []string {
	texts := append([]string(nil), scrubNoFalsePositives...)
	for _, tt := range scrubSecretTests {
		texts = append(texts, tt.in)
	}
	return texts
}

func FuzzNextPair(f *testing.F) {
	for _, in := range scrubTexts() {
		f.Add(in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			t.Skip("ScrubError makes its text valid UTF-8 first")
		}
		checkNextPair(t, s)
	})
}

func FuzzScrubPatternHints(f *testing.F) {
	for _, in := range scrubTexts() {
		f.Add(in)
	}
	f.Add("Ba\u017fic dXNlcjpwYXNz")
	f.Fuzz(func(t *testing.T, s string) {
		got := ScrubError(s, 0)
		require.True(t, utf8.ValidString(got))
		require.Equal(t, scrubIgnoringHints(s, 0), got)
	})
}

func TestScrubPatternAnchors(t *testing.T) {
	t.Parallel()
	texts := append(scrubTexts(), randomScrubTexts(300)...)
	for _, p := range scrubPatterns {
		if p.anchor == "" {
			continue
		}
		require.NotContains(t, p.anchor, " ", p.name)
		for _, s := range texts {
			want := p.re.FindAllStringSubmatchIndex(s, -1)
			for _, m := range want {
				if isRegexpSpace(s[m[0]]) {
					m[0]++ // in a word, ^ stands for the white space before it
				}
			}
			require.Equal(t, want, p.matches(s), "%s in %q", p.name, s)
		}
	}
}
