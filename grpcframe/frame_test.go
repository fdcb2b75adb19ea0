package grpcframe

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

func frames(msgs ...string) []byte {
	var b []byte
	for _, m := range msgs {
		b = Append(b, 0, []byte(m))
	}
	return b
}

func TestPassThroughAndRewrite(t *testing.T) {
	in := frames("hello", "", "grpc.example.com:443", "world")
	// Identity: byte for byte, even read one byte at a time.
	var seen []string
	r := NewReader(io.NopCloser(iotest.OneByteReader(bytes.NewReader(in))), 0, func(_ bool, m []byte) []byte {
		seen = append(seen, string(m))
		return m
	})
	out, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(out, in) || len(seen) != 4 || seen[2] != "grpc.example.com:443" {
		t.Fatalf("identity: err %v, equal %v, seen %q", err, bytes.Equal(out, in), seen)
	}
	// Rewrite: lengths are re-framed.
	r = NewReader(io.NopCloser(bytes.NewReader(in)), 0, func(_ bool, m []byte) []byte {
		return bytes.ReplaceAll(m, []byte("grpc.example.com:443"), []byte("127.0.0.1:15001"))
	})
	out, _ = io.ReadAll(r)
	msgs, err := Split(out)
	if err != nil || len(msgs) != 4 || string(msgs[2]) != "127.0.0.1:15001" || string(msgs[3]) != "world" {
		t.Errorf("rewrite: %q %v", msgs, err)
	}
}

// TestEachMessageIsReleasedWhenComplete: a message is readable before the
// next one has even been written (nothing waits for the stream to end).
func TestEachMessageIsReleasedWhenComplete(t *testing.T) {
	pr, pw := io.Pipe()
	r := NewReader(pr, 0, func(_ bool, m []byte) []byte { return m })
	go pw.Write(frames("first"))
	buf := make([]byte, 64)
	n, err := io.ReadAtLeast(r, buf, 10)
	if err != nil || string(buf[5:n]) != "first" {
		t.Fatalf("first message: %q %v", buf[:n], err)
	}
	go func() { pw.Write(frames("second")); pw.Close() }()
	rest, _ := io.ReadAll(r)
	if msgs, _ := Split(rest); len(msgs) != 1 || string(msgs[0]) != "second" {
		t.Errorf("second: %q", rest)
	}
}

func TestOversizedAndTruncated(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 100)
	in := append(Append(nil, 0, big), frames("small")...)
	calls := 0
	r := NewReader(io.NopCloser(bytes.NewReader(in)), 50, func(_ bool, m []byte) []byte { calls++; return m })
	out, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(out, in) || calls != 1 {
		t.Errorf("oversized: err %v equal %v calls %d", err, bytes.Equal(out, in), calls)
	}
	for _, cut := range []int{3, 8, len(in) - 1} {
		r = NewReader(io.NopCloser(bytes.NewReader(in[:cut])), 50, func(_ bool, m []byte) []byte { return m })
		if _, err := io.ReadAll(r); !errors.Is(err, ErrTruncated) {
			t.Errorf("cut at %d: %v, want ErrTruncated", cut, err)
		}
	}
}

// FuzzReader: for any input, identity passes through exactly what Split
// accepts, and never panics.
func FuzzReader(f *testing.F) {
	f.Add(frames("a", "bc"), 4)
	f.Add([]byte{0, 0, 0, 0, 200, 1, 2}, 1)
	f.Add(append(Append(nil, 1, bytes.Repeat([]byte("z"), 64)), 0, 0), 16)
	f.Fuzz(func(t *testing.T, in []byte, max int) {
		if max < 0 || max > 1<<20 {
			max = 0
		}
		r := NewReader(io.NopCloser(bytes.NewReader(in)), max, func(_ bool, m []byte) []byte { return m })
		out, err := io.ReadAll(r)
		if _, serr := Split(in); serr == nil {
			if err != nil || !bytes.Equal(out, in) {
				t.Fatalf("well-formed input changed: err %v", err)
			}
		} else if err == nil && !bytes.Equal(out, in) {
			t.Fatalf("malformed input passed with changes")
		}
	})
}
