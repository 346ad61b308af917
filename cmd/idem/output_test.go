package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestInert(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"plain text, ünïcödé ✓":      "plain text, ünïcödé ✓",
		"\x1b[31mred\x1b[0m":         `\x1b[31mred\x1b[0m`,
		"bell\x07 del\x7f nul\x00":   `bell\x07 del\x7f nul\x00`,
		"line\r\nnext\ttab":          `line\r\nnext\ttab`,
		"c1 \u009b31m csi":           `c1 \u009b31m csi`,
		"bidi \u202eevil\u2066":      `bidi \u202eevil\u2066`,
		"sep \u2028 \u2029":          `sep \u2028 \u2029`,
		"bad \xff\xfe utf8":          `bad \xff\xfe utf8`,
		"real \ufffd replacement":    "real \ufffd replacement",
		"osc \x1b]8;;http://x\x1b\\": `osc \x1b]8;;http://x\x1b\`,
	} {
		require.Equal(t, want, inert(in), "%q", in)
	}
}

func TestCSVCell(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"=1+1":         "'=1+1",
		"+1":           "'+1",
		"-1":           "'-1",
		"@SUM(A1)":     "'@SUM(A1)",
		"\t=1":         `'\t=1`,
		"a=1":          "a=1",
		"":             "",
		"\x1b[2J=boom": `\x1b[2J=boom`,
	} {
		require.Equal(t, want, csvCell(in), "%q", in)
	}
}

func TestRedactJSON(t *testing.T) {
	t.Parallel()
	r := redactor{extra: []string{"ssn"}}
	in := `{"b":1,"a":{"Password":"hunter2","nested":[{"api_key":{"x":1}},"Bearer abc.def"]},"user_ssn":"123-45","n":1.50e3,"ok":true,"z":null,"url":"https://u:pw@h/"}`
	got, err := r.redactJSON([]byte(in), "")
	require.NoError(t, err)
	require.Equal(t, `{"b":1,"a":{"Password":"REDACTED","nested":[{"api_key":"REDACTED"},"Bearer REDACTED"]},"user_ssn":"REDACTED","n":1.50e3,"ok":true,"z":null,"url":"https://u:REDACTED@h/"}`, got)

	got, err = r.redactJSON([]byte(`[]`), "  ")
	require.NoError(t, err)
	require.Equal(t, `[]`, got)
	got, err = r.redactJSON([]byte(`{"a":[1,{}]}`), "  ")
	require.NoError(t, err)
	require.Equal(t, "{\n  \"a\": [\n    1,\n    {}\n  ]\n}", got)

	format, shown := r.payload([]byte(`"<b>&"`), false)
	require.Equal(t, payloadJSON, format)
	require.Equal(t, `"<b>&"`, shown, "no HTML escaping")
	format, shown = r.payload([]byte("token=abc123 plain"), true)
	require.Equal(t, payloadText, format)
	require.Equal(t, "token=REDACTED plain", shown)
	format, shown = r.payload([]byte{0, 1, 2}, true)
	require.Equal(t, payloadBinary, format)
	require.Equal(t, "AAEC", shown)
	format, _ = r.payload(nil, true)
	require.Equal(t, payloadText, format)
}

func TestWriteJSONEscapesTerminalRunes(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	require.NoError(t, writeJSON(&b, map[string]string{"k": "\x1b[1m \u009b \u202e <&>"}))
	require.Equal(t, "{\n  \"k\": \"\\u001b[1m \\u009b \\u202e <&>\"\n}\n", b.String())
}

func TestParseTime(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 10, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"":                          {},
		"2026-01-09T10:00:00Z":      time.Date(2026, 1, 9, 10, 0, 0, 0, time.UTC),
		"2026-01-09T10:00:00+02:00": time.Date(2026, 1, 9, 8, 0, 0, 0, time.UTC),
		"2026-01-09":                time.Date(2026, 1, 9, 0, 0, 0, 0, time.UTC),
		"2026-01-09 10:30:00":       time.Date(2026, 1, 9, 10, 30, 0, 0, time.UTC),
		"36h":                       now.Add(-36 * time.Hour),
		"7d":                        now.Add(-7 * 24 * time.Hour),
		"1d12h":                     now.Add(-36 * time.Hour),
		"90m":                       now.Add(-90 * time.Minute),
		"0d":                        now,
	} {
		got, err := parseTime(in, now)
		require.NoError(t, err, in)
		require.True(t, want.Equal(got), "%s: got %s", in, got)
	}
	for _, in := range []string{"yesterday", "-1h", "7dd", "d"} {
		_, err := parseTime(in, now)
		require.Error(t, err, in)
	}
}

func TestAgeText(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		-time.Second:                    "0s",
		45 * time.Second:                "45s",
		12*time.Minute + 30*time.Second: "12m30s",
		5*time.Hour + 4*time.Minute:     "5h4m",
		47 * time.Hour:                  "47h0m",
		76 * time.Hour:                  "3d4h",
	} {
		require.Equal(t, want, ageText(d), d)
	}
}

func TestProgress(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	p := &progress{w: &b, on: true, total: 3, start: time.Now()}
	p.line("replayed 1")
	p.show(1)
	p.line("replayed 2")
	p.show(2)
	p.line("replayed 3")
	p.show(3) // done: no progress line left behind
	p.clear()
	out := b.String()
	require.True(t, strings.HasPrefix(out, "replayed 1\n\r\x1b[Kreplaying: 1 of 3, "), out)
	require.True(t, strings.HasSuffix(out, "\r\x1b[Kreplayed 3\n"), out)

	b.Reset()
	p = &progress{w: &b, on: false, total: 3}
	p.line("replayed 1")
	p.show(1)
	p.clear()
	require.Equal(t, "replayed 1\n", b.String(), "off a terminal: the lines only")
}

func TestPayloadFormat(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		`{"a":1}`:                   payloadJSON,
		`"text"`:                    payloadJSON,
		"plain text":                payloadText,
		"":                          payloadText,
		"nul\x00":                   payloadBinary,
		"\xff\xfe":                  payloadBinary,
		"{\"a\xff\":1,\"a\xfe\":2}": payloadBinary, // JSON to encoding/json, but its keys would print alike
		"{\"a\":\"\xff\"}":          payloadBinary,
	} {
		require.Equal(t, want, payloadFormat([]byte(in)), "%q", in)
	}
}

func TestMetadataKey(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"event_id":    "event_id",
		"ünïcödé":     "ünïcödé",
		"k\ufffd":     "k\ufffd",
		"k\xff":       "base64:a/8=",
		"nul\x00":     "base64:bnVsAA==",
		"base64:azk=": "base64:YmFzZTY0OmF6az0=",
		"esc\x1b":     "base64:ZXNjGw==",
		`esc\x1b`:     `esc\x1b`,
		"bidi\u202e":  "base64:YmlkaeKArg==",
		"line\nbreak": "base64:bGluZQpicmVhaw==",
	} {
		require.Equal(t, want, metadataKey(in), "%q", in)
	}
}

func TestExitMessageIsInert(t *testing.T) {
	t.Parallel()
	var stderr bytes.Buffer
	c := &cli{stderr: &stderr, secrets: []string{"s3cret"}}
	code := c.exit(errors.New("queue \"orders\x1b[2J\u202e\": not found in amqp://guest:s3cret@mq/:\n\tsee s3cret"))
	require.Equal(t, exitFailure, code)
	require.Equal(t, "idem: queue \"orders\\x1b[2J\\u202e\": not found in amqp://REDACTED@mq/:\n\tsee REDACTED\n", stderr.String())
}
