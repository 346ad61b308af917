package dlq

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// testErrorA and testErrorB carry the same message, so that only their types differ.
type testErrorA struct{ msg string }

func (e *testErrorA) Error() string { return e.msg }

type testErrorB struct{ msg string }

func (e *testErrorB) Error() string { return e.msg }

// testWrapper is a named wrapper: unlike fmt.Errorf's, it is part of the type chain.
type testWrapper struct{ err error }

func (e *testWrapper) Error() string { return "wrapped: " + e.err.Error() }
func (e *testWrapper) Unwrap() error { return e.err }

// testCycle unwraps to itself.
type testCycle struct{}

func (e *testCycle) Error() string { return "cycle" }
func (e *testCycle) Unwrap() error { return e }

func TestFingerprint(t *testing.T) {
	t.Parallel()

	t.Run("SameGroup", func(t *testing.T) {
		t.Parallel()

		tests := []struct {
			name string
			a, b error
		}{
			{"ID", errors.New("order ord_42 not found"), errors.New("order ord_9001 not found")},
			{"DashedID", errors.New("order order-123 not found"), errors.New("order order-7 not found")},
			{"Number", fmt.Errorf("got %d rows, want 1", 3), fmt.Errorf("got %d rows, want 1", 250)},
			{"Decimal", errors.New("amount -12.50 below limit"), errors.New("amount 3.75 below limit")},
			{"UUID", errors.New("customer 0b7f0a7e-3c1d-4a4e-9d1f-6c2b1e0f9a11 missing"), errors.New("customer 9F1C2D3E-4B5A-4C6D-8E7F-0A1B2C3D4E5F missing")},
			{"ULID", errors.New("event 01ARZ3NDEKTSV4RRFFQ69G5FAV rejected"), errors.New("event 01HZX4Y7QW2M9N3P5R6S8T0V1W rejected")},
			{"Hex", errors.New("hash deadbeefcafebabe0123 mismatch"), errors.New("hash 0123456789abcdef9876 mismatch")},
			{"DoubleQuoted", fmt.Errorf("unknown status %q", "shipped"), fmt.Errorf("unknown status %q", "lost \"in\" transit")},
			{"SingleQuoted", errors.New("column 'email' is null"), errors.New("column 'phone' is null")},
			{"BackQuoted", errors.New("bad field `a`"), errors.New("bad field `bb`")},
			{"Timestamp", errors.New("expired at 2024-05-01T10:00:00Z"), errors.New("expired at 2025-12-31T23:59:59.123456+02:00")},
			{"GoTime", errors.New("late: 2024-05-01 10:00:00.5 +0000 UTC"), errors.New("late: 2023-01-02 03:04:05 -0700 MST")},
			{"Whitespace", errors.New("connection  reset\n by peer"), errors.New("connection reset by peer ")},
			{"WrappedSameContext", fmt.Errorf("decode: %w", &testErrorA{"field 3 invalid"}), fmt.Errorf("decode: %w", &testErrorA{"field 17 invalid"})},
			{"Joined", errors.Join(&testErrorA{"a 1"}, &testErrorB{"b 1"}), errors.Join(&testErrorA{"a 2"}, &testErrorB{"b 2"})},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				require.Equal(t, Fingerprint("orders", tt.a), Fingerprint("orders", tt.b))
			})
		}
	})

	t.Run("DifferentGroup", func(t *testing.T) {
		t.Parallel()

		var v any
		syntaxErr := json.Unmarshal([]byte("{"), &v)
		var se *json.SyntaxError
		require.ErrorAs(t, syntaxErr, &se)
		_, numErr := strconv.Atoi("x")
		var ne *strconv.NumError
		require.ErrorAs(t, numErr, &ne)

		tests := []struct {
			name string
			a, b error
		}{
			{name: "JSONSyntaxVsNumError", a: syntaxErr, b: numErr},
			{name: "TypeOnly", a: &testErrorA{"boom"}, b: &testErrorB{"boom"}},
			{name: "WrappedTypeOnly", a: fmt.Errorf("decode: %w", &testErrorA{"boom"}), b: fmt.Errorf("decode: %w", &testErrorB{"boom"})},
			{name: "JoinedTypeOrder", a: errors.Join(&testErrorA{"boom"}, &testErrorB{"boom"}), b: errors.Join(&testErrorB{"boom"}, &testErrorA{"boom"})},
			{name: "Wording", a: errors.New("order not found"), b: errors.New("order not paid")},
			{name: "NamedWrapper", a: &testErrorA{"wrapped: boom"}, b: &testWrapper{&testErrorA{"boom"}}},
			{name: "NilVsEmpty", a: nil, b: errors.New("")},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				require.NotEqual(t, Fingerprint("orders", tt.a), Fingerprint("orders", tt.b))
			})
		}
	})

	t.Run("DifferentConsumer", func(t *testing.T) {
		t.Parallel()
		err := errors.New("order 42 not found")
		require.NotEqual(t, Fingerprint("orders", err), Fingerprint("billing", err))
		require.NotEqual(t, Fingerprint("orders", nil), Fingerprint("billing", nil))
		// The consumer and the message are separate fields, not one concatenated string.
		require.NotEqual(t, Fingerprint("ab", errors.New("c")), Fingerprint("a", errors.New("bc")))
	})

	t.Run("StableAndShort", func(t *testing.T) {
		t.Parallel()
		for _, err := range []error{nil, errors.New("boom"), fmt.Errorf("x: %w", &testErrorA{"y 1"})} {
			fp := Fingerprint("orders", err)
			require.Len(t, fp, 16)
			_, decodeErr := hex.DecodeString(fp)
			require.NoError(t, decodeErr)
			for range 3 {
				require.Equal(t, fp, Fingerprint("orders", err))
			}
		}
	})

	t.Run("CyclicUnwrapEnds", func(t *testing.T) {
		t.Parallel()
		require.Len(t, Fingerprint("orders", &testCycle{}), 16)
		require.Len(t, errorTypes(&testCycle{}), maxErrorChain)
	})
}

func TestErrorTypes(t *testing.T) {
	t.Parallel()

	a, b := &testErrorA{"a"}, &testErrorB{"b"}
	tests := []struct {
		name string
		err  error
		want []string
	}{
		{"Plain", a, []string{"*dlq.testErrorA"}},
		{"ErrorsNew", errors.New("x"), []string{"*errors.errorString"}},
		{"ErrorfWrapSkipped", fmt.Errorf("ctx: %w", a), []string{"*dlq.testErrorA"}},
		{"ErrorfTwiceSkipped", fmt.Errorf("outer: %w", fmt.Errorf("inner: %w", a)), []string{"*dlq.testErrorA"}},
		{"ErrorfMultiSkipped", fmt.Errorf("%w and %w", a, b), []string{"*dlq.testErrorA", "*dlq.testErrorB"}},
		{"JoinSkipped", errors.Join(a, b), []string{"*dlq.testErrorA", "*dlq.testErrorB"}},
		{"NamedWrapperKept", &testWrapper{a}, []string{"*dlq.testWrapper", "*dlq.testErrorA"}},
		{"DepthFirst", errors.Join(&testWrapper{a}, b), []string{"*dlq.testWrapper", "*dlq.testErrorA", "*dlq.testErrorB"}},
		{"ErrorfNoWrap", fmt.Errorf("ctx: %v", a), []string{"*errors.errorString"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, errorTypes(tt.err))
		})
	}
}

func TestNormalizeMessage(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		in   string
		want string
	}{
		{"Empty", "", ""},
		{"Unchanged", "connection refused", "connection refused"},
		{"DoubleQuoted", `parsing "abc": invalid syntax`, "parsing ?: invalid syntax"},
		{"DoubleQuotedEscapes", `key "a\"b" missing`, "key ? missing"},
		{"SingleQuoted", "column 'email' is null", "column ? is null"},
		{"Apostrophe", "can't find user 'bob'", "can't find user ?"},
		{"BackQuoted", "field `a b` unknown", "field ? unknown"},
		{"RFC3339", "at 2024-05-01T10:00:00Z", "at <time>"},
		{"RFC3339Nano", "at 2024-05-01T10:00:00.123456789+02:00.", "at <time>."},
		{"GoTimeString", "at 2024-05-01 10:00:00.5 +0000 UTC m=+0.1", "at <time> m=<n>"},
		{"Date", "due 2024-05-01", "due <time>"},
		{"UUID", "id 0b7f0a7e-3c1d-4a4e-9d1f-6c2b1e0f9a11", "id <uuid>"},
		{"UUIDUpper", "id 0B7F0A7E-3C1D-4A4E-9D1F-6C2B1E0F9A11", "id <uuid>"},
		{"UUIDInIdentifier", "key evt_0b7f0a7e-3c1d-4a4e-9d1f-6c2b1e0f9a11", "key evt_<uuid>"},
		{"ULID", "event 01ARZ3NDEKTSV4RRFFQ69G5FAV", "event <id>"},
		{"ULIDInIdentifier", "key ord_01ARZ3NDEKTSV4RRFFQ69G5FAV", "key ord_<id>"},
		{"Hex", "sha deadbeefcafebabe0123", "sha <hex>"},
		{"HexPrefixed", "at 0xc000123456", "at <hex>"},
		{"LongDecimalIsNumber", "snowflake 1234567890123456789", "snowflake <n>"},
		{"Integer", "got 3 rows", "got <n> rows"},
		{"Signed", "x=-5 y=+7", "x=<n> y=<n>"},
		{"Decimal", "took 1.5s", "took <n>s"},
		{"Exponent", "ratio 1e-05", "ratio <n>"},
		{"DashedIdentifier", "order order-123 failed", "order order-<n> failed"},
		{"UnderscoredIdentifier", "order ord_42 failed", "order ord_<n> failed"},
		{"EmbeddedDigits", "shard7 down", "shard<n> down"},
		{"Whitespace", "  a \t b\n\nc  ", "a b c"},
		{"Combined", `order "A-17" not found after 3 attempts at 2024-05-01T10:00:00Z (id 0b7f0a7e-3c1d-4a4e-9d1f-6c2b1e0f9a11)`,
			"order ? not found after <n> attempts at <time> (id <uuid>)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, NormalizeMessage(tt.in))
			require.Equal(t, tt.want, NormalizeMessage(tt.want), "normalising twice changes nothing")
		})
	}
}
