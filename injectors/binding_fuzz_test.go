package injectors

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
)

// certBinding reads an access token the issuer sent, unverified: whatever
// the token, it returns without panicking, and returns a binding only for
// a three-part token whose payload is JSON (naming cnf.x5t#S256).
func FuzzCertBinding(f *testing.F) {
	enc := base64.RawURLEncoding
	for _, payload := range []string{`{"cnf":{"x5t#S256":"abc"}}`, `{"cnf":"x"}`, `{"cnf":{"x5t#S256":1}}`, `[]`, `{}`, "\xff"} {
		f.Add("h." + enc.EncodeToString([]byte(payload)) + ".s")
	}
	f.Add("not a token")
	f.Add("a.b.c.d")
	f.Fuzz(func(t *testing.T, tok string) {
		got := certBinding(tok)
		if got == "" {
			return
		}
		parts := strings.Split(tok, ".")
		if len(parts) != 3 {
			t.Fatalf("a binding %q from a token of %d parts", got, len(parts))
		}
		payload, err := enc.DecodeString(parts[1])
		if err != nil || !json.Valid(payload) {
			t.Fatalf("a binding %q from payload %q", got, payload)
		}
	})
}
