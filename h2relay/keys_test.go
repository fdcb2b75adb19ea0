package h2relay

import (
	"net/http"
	"strings"
	"testing"
)

// The table's conversions are the ones it stands for, and names outside
// it convert as before.
func TestKeyConversionsMatchTheStandardOnes(t *testing.T) {
	for l, k := range canonicalOf {
		if http.CanonicalHeaderKey(l) != k || strings.ToLower(k) != l || lowerOf[k] != l {
			t.Errorf("%q <-> %q is not the standard conversion", l, k)
		}
	}
	for _, l := range []string{"x-custom-thing", "grpc-trace-bin", "a"} {
		if canonicalKey(l) != http.CanonicalHeaderKey(l) || lowerKey(http.CanonicalHeaderKey(l)) != l {
			t.Errorf("%q converts differently outside the table", l)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = canonicalKey("grpc-timeout"), lowerKey("Content-Type") }); n != 0 {
		t.Errorf("converting names in the table allocates %v times", n)
	}
}
