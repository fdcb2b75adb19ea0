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

// FuzzReadMessage reads frames one message at a time and frames them again
// through Framed: well-formed uncompressed input within the limit comes back
// byte for byte; anything else ends in an error, never a panic or a message
// past the limit.
func FuzzReadMessage(f *testing.F) {
	f.Add(frames("a", "bc"), 4)
	f.Add([]byte{0, 0, 0, 0, 200, 1, 2}, 1)
	f.Add([]byte{0, 0xff, 0xff, 0xff, 0xff}, 16)
	f.Add(append(Append(nil, 1, []byte("zz")), 0, 0), 16)
	f.Fuzz(func(t *testing.T, in []byte, max int) {
		if max < 0 || max > 1<<20 {
			max = 1 << 20
		}
		src := bytes.NewReader(in)
		msgs := &sliceMessages{}
		var err error
		for {
			var m []byte
			if m, err = ReadMessage(src, max); err != nil {
				break
			}
			if len(m) > max {
				t.Fatalf("a message of %d bytes passed the limit of %d", len(m), max)
			}
			msgs.msgs = append(msgs.msgs, m)
		}
		var framed Framed
		out, rerr := io.ReadAll(readerFunc(func(p []byte) (int, error) { return framed.Read(p, msgs) }))
		if rerr != nil {
			t.Fatal(rerr)
		}
		if err == io.EOF {
			if !bytes.Equal(out, in) {
				t.Fatal("well-formed input changed")
			}
			return
		}
		if wellFormedWithin(in, max) {
			t.Fatalf("well-formed input failed: %v", err)
		}
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// sliceMessages serves messages from a slice, then io.EOF.
type sliceMessages struct{ msgs [][]byte }

func (s *sliceMessages) ReadMessage() ([]byte, error) {
	if len(s.msgs) == 0 {
		return nil, io.EOF
	}
	m := s.msgs[0]
	s.msgs = s.msgs[1:]
	return m, nil
}

// wellFormedWithin reports whether b is whole uncompressed frames, each
// message at most max bytes.
func wellFormedWithin(b []byte, max int) bool {
	for len(b) > 0 {
		if len(b) < 5 || b[0] != 0 {
			return false
		}
		n := uint64(b[1])<<24 | uint64(b[2])<<16 | uint64(b[3])<<8 | uint64(b[4])
		if n > uint64(max) || uint64(len(b)-5) < n {
			return false
		}
		b = b[5+n:]
	}
	return true
}
