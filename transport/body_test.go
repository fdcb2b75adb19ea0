package transport

import (
	"io"
	"strings"
	"testing"
)

// OnEOF runs its function once, when the body ends, not before.
func TestOnEOF(t *testing.T) {
	calls := 0
	body := OnEOF(io.NopCloser(strings.NewReader("abcdef")), func() { calls++ })
	buf := make([]byte, 4)
	if n, err := body.Read(buf); n != 4 || err != nil || calls != 0 {
		t.Fatalf("first read: %d %v, %d calls", n, err, calls)
	}
	if b, err := io.ReadAll(body); string(b) != "ef" || err != nil {
		t.Fatalf("rest: %q %v", b, err)
	}
	if _, err := body.Read(buf); err != io.EOF {
		t.Fatalf("after the end: %v", err)
	}
	if calls != 1 {
		t.Fatalf("fn ran %d times, want 1", calls)
	}
}
