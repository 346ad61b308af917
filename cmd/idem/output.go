package main

import (
	"bytes"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/idemkit/idem/dlq"
)

// The output formats. Everything a dead letter holds comes from production messages:
// every format neutralises what could act on a terminal or a spreadsheet.
const (
	formatTable    = "table"
	formatJSON     = "json"
	formatMarkdown = "markdown"
	formatCSV      = "csv"
)

var allFormats = []string{formatTable, formatJSON, formatMarkdown, formatCSV}

// checkFormat returns a usage error unless format is one of allowed.
func checkFormat(cmd, format string, allowed ...string) error {
	for _, f := range allowed {
		if format == f {
			return nil
		}
	}
	return usageErrorf(cmd, "--format must be %s, got %q", orList(allowed), format)
}

func orList(s []string) string {
	if len(s) < 2 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

// inert returns s fit to print on a terminal: control characters (C0, DEL and C1,
// which start terminal escape sequences), Unicode bidirectional controls and line
// separators are written as escapes such as \x1b, \n or \u202e, and so are the bytes
// of invalid UTF-8. Everything else, printable Unicode included, stays.
func inert(s string) string {
	clean := utf8.ValidString(s)
	for _, r := range s {
		if needsEscape(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x80 && needsEscape(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		case needsEscape(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
		i += size
	}
	return b.String()
}

func needsEscape(r rune) bool {
	return unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) || r == '\u2028' || r == '\u2029'
}

// inertLines is inert for multi-line text: it keeps the line breaks and escapes the
// rest of each line.
func inertLines(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = inert(l)
	}
	return strings.Join(lines, "\n")
}

// inertMessage is inert for a message on standard error: it keeps its line breaks and
// tabs, as drivers' multi-line errors use them, and escapes the rest.
func inertMessage(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		cells := strings.Split(l, "\t")
		for j, c := range cells {
			cells[j] = inert(c)
		}
		lines[i] = strings.Join(cells, "\t")
	}
	return strings.Join(lines, "\n")
}

// csvCell returns s fit for a CSV cell opened by a spreadsheet: inert, and with a
// leading ' when it starts with = + - @ (or a tab or carriage return), which a
// spreadsheet would evaluate as a formula.
func csvCell(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		s = "'" + s
	}
	return inert(s)
}

// markdownCell returns s fit for a Markdown table cell: inert, with the characters
// Markdown would act on escaped.
func markdownCell(s string) string {
	s = inert(s)
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune("\\`*_[]<>|#~!", r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// fence returns a Markdown code fence longer than any run of backticks in s.
func fence(s string) string {
	longest, run := 0, 0
	for _, r := range s {
		if r == '`' {
			run++
			longest = max(longest, run)
		} else {
			run = 0
		}
	}
	return strings.Repeat("`", max(3, longest+1))
}

// table is rows of text, written as an aligned table, Markdown or CSV.
type table struct {
	headers []string
	rows    [][]string
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) write(w io.Writer, format string) error {
	switch format {
	case formatMarkdown:
		var b strings.Builder
		row := func(cells []string) {
			b.WriteString("|")
			for _, c := range cells {
				b.WriteString(" " + markdownCell(c) + " |")
			}
			b.WriteString("\n")
		}
		b.WriteString("| " + strings.Join(t.headers, " | ") + " |\n")
		b.WriteString("|" + strings.Repeat(" --- |", len(t.headers)) + "\n")
		for _, r := range t.rows {
			row(r)
		}
		_, err := io.WriteString(w, b.String())
		return err
	case formatCSV:
		cw := csv.NewWriter(w)
		for _, r := range append([][]string{t.headers}, t.rows...) {
			cells := make([]string, len(r))
			for i, c := range r {
				cells[i] = csvCell(c)
			}
			if err := cw.Write(cells); err != nil {
				return err
			}
		}
		cw.Flush()
		return cw.Error()
	default:
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, r := range append([][]string{t.headers}, t.rows...) {
			cells := make([]string, len(r))
			for i, c := range r {
				cells[i] = inert(c)
			}
			fmt.Fprintln(tw, strings.Join(cells, "\t"))
		}
		return tw.Flush()
	}
}

// writeJSON writes v as indented JSON. Control characters are escaped by
// encoding/json; C1 controls, DEL and bidirectional controls, which it leaves as they
// are, are escaped too, so that the output is inert on a terminal.
func writeJSON(w io.Writer, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := io.WriteString(w, escapeJSONText(buf.String()))
	return err
}

// escapeJSONText escapes, in valid JSON text, the runes that encoding/json leaves raw
// but a terminal may act on. They can only occur inside strings, where \uXXXX is valid.
func escapeJSONText(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r != '\n' && needsEscape(r) {
			fmt.Fprintf(&b, `\u%04x`, r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// jsonString encodes s as a JSON string, without HTML escaping.
func jsonString(s string) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return strings.TrimSuffix(buf.String(), "\n")
}

// redactor decides which keys hold secrets: those dlq.IsSecretKey reports, and those
// containing one of the configured extra words (--redact-keys).
type redactor struct{ extra []string }

func (r redactor) secret(key string) bool {
	if dlq.IsSecretKey(key) {
		return true
	}
	k := strings.ToLower(key)
	for _, e := range r.extra {
		if strings.Contains(k, e) {
			return true
		}
	}
	return false
}

// metadata returns md as shown to an operator: dlq.SanitizeMetadata, then the
// configured keys redacted too.
func (r redactor) metadata(md map[string]string) map[string]string {
	out := dlq.SanitizeMetadata(md)
	for k := range out {
		if r.secret(k) {
			out[k] = "REDACTED"
		}
	}
	if out == nil {
		out = map[string]string{}
	}
	return out
}

// metadataJSON returns md as the JSON output holds it: as dlq.EncodeMetadata stores it,
// so that dlq.DecodeMetadata reads it back. A key that is not valid UTF-8, holds a NUL
// or starts with "base64:" is written "base64:<standard base64 of the key>", and such
// a value {"base64": "…"}: two keys never print alike, as encoding/json alone would
// print them once invalid bytes become U+FFFD.
func metadataJSON(md map[string]string) map[string]any {
	out := map[string]any{}
	b, err := dlq.EncodeMetadata(md)
	if err == nil {
		err = json.Unmarshal(b, &out)
	}
	if err != nil { // cannot happen: every string map encodes
		panic("idem: encode metadata: " + err.Error())
	}
	return out
}

// metadataKey returns the metadata key k as the table, Markdown and CSV formats show
// it: as the JSON output writes it when dlq.EncodeMetadata encodes it, and also as
// "base64:…" when inert would have to escape it (control characters), since an escape
// such as \x1b could not be told apart from a key holding those four characters.
func metadataKey(k string) string {
	for enc := range metadataJSON(map[string]string{k: ""}) {
		if enc != k {
			return enc
		}
	}
	if inert(k) != k {
		return "base64:" + base64Std([]byte(k))
	}
	return k
}

// shownMetadata returns the entries of md, sanitized by r, as the table, Markdown and
// CSV formats show them: keys by metadataKey, sorted.
func (r redactor) shownMetadata(md map[string]string) [][2]string {
	var out [][2]string
	for k, v := range r.metadata(md) {
		out = append(out, [2]string{metadataKey(k), v})
	}
	slices.SortFunc(out, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	return out
}

// The payload formats: what a payload is, and how the payload field holds it.
const (
	payloadJSON   = "json"   // JSON: the payload, secrets redacted
	payloadText   = "text"   // UTF-8 text: the payload, secrets scrubbed
	payloadBinary = "binary" // anything else: the payload's bytes, base64-encoded
)

// payloadFormat says what p is.
func payloadFormat(p []byte) string {
	switch {
	case len(p) > 0 && utf8.Valid(p) && json.Valid(p): // json.Valid takes invalid UTF-8
		return payloadJSON
	case utf8.Valid(p) && !bytes.ContainsRune(p, 0):
		return payloadText
	}
	return payloadBinary
}

// payload returns p as shown to an operator, in its format: JSON with the values of
// secret-looking keys replaced by REDACTED and secrets in other strings scrubbed
// (indented when pretty); text scrubbed with dlq.ScrubError; binary as base64. The
// result still needs inert (or JSON encoding) before it is printed.
func (r redactor) payload(p []byte, pretty bool) (format, shown string) {
	format = payloadFormat(p)
	switch format {
	case payloadJSON:
		indent := ""
		if pretty {
			indent = "  "
		}
		out, err := r.redactJSON(p, indent)
		if err == nil {
			return format, out
		}
		format = payloadText // cannot happen for valid JSON; show it as text
		fallthrough
	case payloadText:
		return format, dlq.ScrubError(string(p), math.MaxInt)
	}
	return format, base64Std(p)
}

// redactJSON re-encodes the JSON document data, keeping its key order, with the values
// of secret keys replaced by "REDACTED" and every other string scrubbed.
func (r redactor) redactJSON(data []byte, indent string) (string, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var b strings.Builder
	newline := func(depth int) {
		if indent != "" {
			b.WriteString("\n" + strings.Repeat(indent, depth))
		}
	}
	sep := ":"
	if indent != "" {
		sep = ": "
	}
	var value func(depth int, redact bool) error
	value = func(depth int, redact bool) error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		if redact {
			if d, ok := tok.(json.Delim); ok {
				if err := skip(dec, d); err != nil {
					return err
				}
			}
			b.WriteString(`"REDACTED"`)
			return nil
		}
		switch v := tok.(type) {
		case json.Delim:
			closing := "}"
			if v == '[' {
				closing = "]"
			}
			b.WriteString(string(v))
			n := 0
			for dec.More() {
				if n > 0 {
					b.WriteString(",")
				}
				newline(depth + 1)
				secret := false
				if v == '{' {
					kt, err := dec.Token()
					if err != nil {
						return err
					}
					key, _ := kt.(string)
					b.WriteString(jsonString(key) + sep)
					secret = r.secret(key)
				}
				if err := value(depth+1, secret); err != nil {
					return err
				}
				n++
			}
			if _, err := dec.Token(); err != nil { // the closing delimiter
				return err
			}
			if n > 0 {
				newline(depth)
			}
			b.WriteString(closing)
		case string:
			b.WriteString(jsonString(dlq.ScrubError(v, math.MaxInt)))
		case json.Number:
			b.WriteString(v.String())
		case bool:
			fmt.Fprint(&b, v)
		case nil:
			b.WriteString("null")
		}
		return nil
	}
	if err := value(0, false); err != nil {
		return "", err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("trailing data after the JSON document")
	}
	return b.String(), nil
}

// skip reads the rest of the array or object whose opening delimiter was read. A
// string or number was read whole already.
func skip(dec *json.Decoder, opened json.Delim) error {
	if opened != '{' && opened != '[' {
		return nil
	}
	depth := 1
	for depth > 0 {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		if d, ok := tok.(json.Delim); ok {
			if d == '{' || d == '[' {
				depth++
			} else {
				depth--
			}
		}
	}
	return nil
}

func base64Std(p []byte) string { return base64.StdEncoding.EncodeToString(p) }

// timeText formats t for tables: RFC 3339 in UTC, to the second; "-" for none.
func timeText(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// ageText formats a duration for people: 45s, 12m30s, 5h4m, 3d4h.
func ageText(d time.Duration) string {
	d = max(d, 0).Truncate(time.Second)
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd%dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	case d >= time.Hour:
		return fmt.Sprintf("%dh%dm", d/time.Hour, d%time.Hour/time.Minute)
	case d >= time.Minute:
		return fmt.Sprintf("%dm%ds", d/time.Minute, d%time.Minute/time.Second)
	}
	return fmt.Sprintf("%ds", d/time.Second)
}

// shortEventID shortens an event ID for a table column: a derived one to its first
// hex digits, any other to 40 characters. show, JSON, CSV and Markdown print it whole.
func shortEventID(id string) string {
	if strings.HasPrefix(id, dlq.DerivedEventIDPrefix) && len(id) > len(dlq.DerivedEventIDPrefix)+9 {
		return id[:len(dlq.DerivedEventIDPrefix)+8] + "…"
	}
	return shorten(id, 40)
}

// shorten cuts s to at most n runes, ending it with … when it was cut.
func shorten(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}
