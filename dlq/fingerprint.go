package dlq

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"regexp"
	"strings"
)

// maxErrorChain bounds how many errors of a chain or tree Fingerprint visits, so that
// a cyclic or huge Unwrap graph cannot stall the caller.
const maxErrorChain = 64

// wrapperTypes are the anonymous wrappers of fmt.Errorf and errors.Join. They add no
// cause of their own, so Fingerprint leaves them out of the type chain.
var wrapperTypes = map[string]bool{
	"*fmt.wrapError":    true,
	"*fmt.wrapErrors":   true,
	"*errors.joinError": true,
}

// Fingerprint returns the failure-group fingerprint of err raised in consumer: the first
// 16 lowercase hex characters of a SHA-256 over
//
//   - the consumer;
//   - the chain of Go error types, found by walking Unwrap() error and Unwrap() []error
//     depth-first and recording each error's dynamic type (as %T prints it), except the
//     anonymous wrappers of fmt.Errorf and errors.Join;
//   - err.Error() normalised by [NormalizeMessage].
//
// Errors that differ only in IDs, numbers, UUIDs, timestamps or quoted values therefore
// share a fingerprint, while errors of different types, in different consumers, or
// worded differently do not. Reports group dead letters by it and alerts aggregate by
// it. A nil err yields the fingerprint of the consumer alone. The result is stable
// across processes and releases of the same message text.
//
// Fingerprint is safe for concurrent use.
func Fingerprint(consumer string, err error) string {
	h := sha256.New()
	writeField(h, consumer)
	if err != nil {
		types := errorTypes(err)
		writeUvarint(h, uint64(len(types)))
		for _, t := range types {
			writeField(h, t)
		}
		writeField(h, NormalizeMessage(err.Error()))
	}
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0])[:8])
}

// errorTypes lists the dynamic types of err and of the errors it wraps, depth-first,
// without the anonymous wrappers in wrapperTypes.
func errorTypes(err error) []string {
	var (
		types   []string
		visited int
		walk    func(error)
	)
	walk = func(e error) {
		if e == nil || visited >= maxErrorChain {
			return
		}
		visited++
		if t := fmt.Sprintf("%T", e); !wrapperTypes[t] {
			types = append(types, t)
		}
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		case interface{ Unwrap() []error }:
			for _, c := range u.Unwrap() {
				walk(c)
			}
		}
	}
	walk(err)
	return types
}

// writeField writes s to h prefixed by its length, so that no two field lists hash
// the same input.
func writeField(h hash.Hash, s string) {
	writeUvarint(h, uint64(len(s)))
	h.Write([]byte(s))
}

func writeUvarint(h hash.Hash, n uint64) {
	var buf [binary.MaxVarintLen64]byte
	h.Write(binary.AppendUvarint(buf[:0], n))
}

var (
	// quotedRE matches "double" (with backslash escapes, as %q prints), `back` and
	// 'single' quoted values. A single quote only opens a value at the start or after a
	// character that is not a letter, digit or underscore, so that apostrophes
	// ("can't") are left alone; group 1 keeps that preceding character.
	quotedRE = regexp.MustCompile(`"(?:[^"\\\n]|\\.)*"|` + "`[^`]*`" + `|(^|[^\p{L}\p{N}_])'[^'\n]*'`)

	// timeRE matches ISO 8601 dates and date-times, RFC 3339 among them, and Go's
	// time.Time.String layout ("2006-01-02 15:04:05.999 -0700 MST").
	timeRE = regexp.MustCompile(`\d{4}-\d{2}-\d{2}` +
		`(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?` +
		`(?:[Zz]|[+-]\d{2}(?::?\d{2})?|\s[+-]\d{4}(?:\s(?:[A-Z]{2,5}|[+-]\d{2,4})\b)?)?)?`)

	// uuidRE matches UUIDs in their 8-4-4-4-12 hex form, in any case.
	uuidRE = regexp.MustCompile(`[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}`)

	// alnumRunRE matches the runs of ASCII letters and digits that ulidRE and hexRE
	// must match whole.
	alnumRunRE = regexp.MustCompile(`[0-9A-Za-z]+`)
	// ulidRE matches a ULID: 26 Crockford base32 characters, the first at most 7.
	ulidRE = regexp.MustCompile(`^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$`)
	// hexRE matches a 0x-prefixed hex number or a hex string of 16 or more characters.
	hexRE = regexp.MustCompile(`^(?:0[xX][0-9a-fA-F]+|[0-9a-fA-F]{16,})$`)
	// digitsRE matches a run made of decimal digits only.
	digitsRE = regexp.MustCompile(`^[0-9]+$`)

	// numberRE matches integers and decimals with an optional sign and exponent.
	numberRE = regexp.MustCompile(`[+-]?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?`)
)

// NormalizeMessage returns s with the parts that vary from one occurrence of an error
// to the next replaced by placeholders, so that messages of the same failure compare
// equal. It replaces, in this order:
//
//   - quoted values ("…", '…', `…`) by ?;
//   - ISO 8601 and RFC 3339 dates and timestamps by <time>;
//   - UUIDs (8-4-4-4-12 hex digits, any case) by <uuid>;
//   - ULIDs (26 Crockford base32 characters) by <id>;
//   - hex strings of 16 or more characters, and 0x-prefixed hex numbers, by <hex>
//     (a run of decimal digits alone is a number, not a hex string);
//   - numbers (integers and decimals, with an optional sign and exponent), including
//     digits inside identifiers, by <n>: "order-123" becomes "order-<n>" and "ord_42"
//     becomes "ord_<n>";
//
// and finally collapses each run of white space into one space and trims both ends.
// For example,
//
//	order "A-17" not found after 3 attempts at 2024-05-01T10:00:00Z (id 0b7f0a7e-3c1d-4a4e-9d1f-6c2b1e0f9a11)
//
// becomes
//
//	order ? not found after <n> attempts at <time> (id <uuid>)
//
// NormalizeMessage is safe for concurrent use.
func NormalizeMessage(s string) string {
	s = quotedRE.ReplaceAllString(s, "${1}?")
	s = timeRE.ReplaceAllLiteralString(s, "<time>")
	s = uuidRE.ReplaceAllLiteralString(s, "<uuid>")
	s = alnumRunRE.ReplaceAllStringFunc(s, func(run string) string {
		switch {
		case ulidRE.MatchString(run):
			return "<id>"
		case hexRE.MatchString(run) && !digitsRE.MatchString(run):
			return "<hex>"
		}
		return run
	})
	s = replaceNumbers(s)
	return strings.Join(strings.Fields(s), " ")
}

// replaceNumbers replaces each number in s by <n>. A sign belongs to the number only
// when it does not follow a word character: "x=-5" becomes "x=<n>" but "order-123"
// becomes "order-<n>".
func replaceNumbers(s string) string {
	locs := numberRE.FindAllStringIndex(s, -1)
	if locs == nil {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	last := 0
	for _, loc := range locs {
		start := loc[0]
		if c := s[start]; (c == '+' || c == '-') && start > 0 && isWordByte(s[start-1]) {
			start++
		}
		b.WriteString(s[last:start])
		b.WriteString("<n>")
		last = loc[1]
	}
	b.WriteString(s[last:])
	return b.String()
}

// isWordByte reports whether c is an ASCII letter, digit or underscore, or a byte of a
// multi-byte UTF-8 sequence (most of which are letters).
func isWordByte(c byte) bool {
	return c == '_' || c >= 0x80 ||
		'0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}
