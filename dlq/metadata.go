package dlq

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// EncodeMetadata encodes message metadata as a JSON object that [DecodeMetadata] turns
// back into the same map, byte for byte. Values (and keys) that JSON text cannot hold
// exactly — invalid UTF-8 or NUL bytes — are written as {"base64": "…"} objects, and
// such keys as "base64:…". Stores use it so that a replayed message carries exactly the
// metadata of the original.
func EncodeMetadata(md map[string]string) ([]byte, error) {
	out := make(map[string]any, len(md))
	for k, v := range md {
		if !jsonSafe(k) {
			k = "base64:" + base64.StdEncoding.EncodeToString([]byte(k))
		}
		if jsonSafe(v) {
			out[k] = v
		} else {
			out[k] = map[string]string{"base64": base64.StdEncoding.EncodeToString([]byte(v))}
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("dlq: encode metadata: %w", err)
	}
	return b, nil
}

// DecodeMetadata decodes what [EncodeMetadata] wrote.
func DecodeMetadata(b []byte) (map[string]string, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("dlq: decode metadata: %w", err)
	}
	md := make(map[string]string, len(raw))
	for k, rv := range raw {
		if enc, ok := strings.CutPrefix(k, "base64:"); ok {
			dk, err := base64.StdEncoding.DecodeString(enc)
			if err != nil {
				return nil, fmt.Errorf("dlq: decode metadata key %q: %w", k, err)
			}
			k = string(dk)
		}
		var s string
		if err := json.Unmarshal(rv, &s); err == nil {
			md[k] = s
			continue
		}
		var obj struct {
			Base64 string `json:"base64"`
		}
		if err := json.Unmarshal(rv, &obj); err != nil {
			return nil, fmt.Errorf("dlq: decode metadata value of %q: %w", k, err)
		}
		v, err := base64.StdEncoding.DecodeString(obj.Base64)
		if err != nil {
			return nil, fmt.Errorf("dlq: decode metadata value of %q: %w", k, err)
		}
		md[k] = string(v)
	}
	return md, nil
}

func jsonSafe(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, 0) && !strings.HasPrefix(s, "base64:")
}
