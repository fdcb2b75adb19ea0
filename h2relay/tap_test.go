package h2relay

import (
	"bytes"
	"encoding/binary"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/authproxy/authproxy/grpcframe"
)

// The tap sees each message whole however the data is cut, sends its
// replacement re-framed, lets an oversized message pass unread, and gives
// back an unfinished one as it came.
func TestTapReframesMessagesHoweverTheyAreCut(t *testing.T) {
	big := bytes.Repeat([]byte("B"), MaxTapMessage+1)
	var in []byte
	in = grpcframe.Append(in, 0, []byte("one"))
	in = grpcframe.Append(in, 0, nil)
	in = grpcframe.Append(in, 1, []byte("two!"))
	in = grpcframe.Append(in, 0, big)
	in = grpcframe.Append(in, 0, []byte("three"))
	var want []byte
	want = grpcframe.Append(want, 0, []byte("ONE-longer"))
	want = grpcframe.Append(want, 0, []byte("-longer"))
	want = grpcframe.Append(want, 1, []byte("TWO!-longer"))
	want = grpcframe.Append(want, 0, big)
	want = grpcframe.Append(want, 0, []byte("THREE-longer"))

	for _, cut := range []int{1, 2, 5, 7, 4096, len(in)} {
		var seen []string
		ts := &tapState{t: &Tap{Message: func(compressed bool, msg []byte) []byte {
			seen = append(seen, string(msg))
			return append(bytes.ToUpper(msg), "-longer"...)
		}}}
		var out []byte
		maxHeld := 0
		for rest := in; len(rest) > 0; {
			n := min(cut, len(rest))
			out = append(out, ts.feed(rest[:n])...)
			rest = rest[n:]
			maxHeld = max(maxHeld, ts.held())
		}
		if !bytes.Equal(out, want) {
			t.Errorf("cut %d: %d bytes out, want %d", cut, len(out), len(want))
		}
		if len(seen) != 4 || seen[0] != "one" || seen[1] != "" || seen[2] != "two!" || seen[3] != "three" {
			t.Errorf("cut %d: the tap saw %d messages, starting %.20q", cut, len(seen), seen)
		}
		if maxHeld > 5+len("three") {
			t.Errorf("cut %d: held %d bytes at once; an oversized message must pass, not be held", cut, maxHeld)
		}
	}

	ts := &tapState{t: &Tap{Message: func(_ bool, msg []byte) []byte { return msg }}}
	part := grpcframe.Append(nil, 0, []byte("unfinished"))[:9]
	if out := ts.feed(part); len(out) != 0 || ts.held() != 9 {
		t.Fatalf("an unfinished message: %d out, %d held", len(out), ts.held())
	}
	if out := ts.flush(); !bytes.Equal(out, part) || ts.held() != 0 {
		t.Errorf("flush gave %q", out)
	}
	var hdr [5]byte
	binary.BigEndian.PutUint32(hdr[1:], 3)
	ts.feed(hdr[:2])
	if got := ts.flush(); !bytes.Equal(got, hdr[:2]) {
		t.Errorf("a cut frame header comes back as sent: %q", got)
	}

	var trailer http.Header
	calls := 0
	endOnly := &tapState{t: &Tap{End: func(tr http.Header) { trailer = tr; calls++ }}}
	if out := endOnly.feed(in); !bytes.Equal(out, in) || endOnly.held() != 0 {
		t.Error("a tap without Message holds or changes data")
	}
	endOnly.end(http.Header{"Grpc-Status": {"0"}})
	endOnly.end(nil)
	if calls != 1 || trailer.Get("Grpc-Status") != "0" {
		t.Errorf("End called %d times with %v, want once with the trailers", calls, trailer)
	}
}

// tapping is a Handler whose streams go to an h2c upstream with a Tap that
// rewrites every message with fn, counting the messages and the end.
type tapping struct {
	addr  string
	fn    func([]byte) []byte
	seen  *atomic.Int64
	ended *atomic.Int64
}

func (h tapping) Open(*Request) (*Target, error) {
	return &Target{Scheme: "http", Addr: h.addr, Method: "POST", Authority: "up.test", Path: "/x", Header: http.Header{},
		Tap: func(int, http.Header) *Tap {
			return &Tap{
				Message: func(_ bool, msg []byte) []byte { h.seen.Add(1); return h.fn(msg) },
				End:     func(tr http.Header) { h.ended.Add(1) },
			}
		}}, nil
}

func (tapping) Reply(*Request, *Target, error) Reply { return Reply{Status: http.StatusBadGateway} }

// A long tapped response whose messages a rewrite makes longer, or
// shorter, crosses the relay whole to a client that reads slowly: flow
// control holds on both hops (no FLOW_CONTROL error, no stall), whatever
// the rewrite does to the byte count.
func TestTapKeepsFlowControlOnBothHops(t *testing.T) {
	const messages, size = 4000, 200 // 800 KiB: past every window
	addr := h2cUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status")
		msg := bytes.Repeat([]byte("m"), size)
		for i := 0; i < messages; i++ {
			if _, err := w.Write(grpcframe.Append(nil, 0, msg)); err != nil {
				return
			}
		}
		w.Header().Set("Grpc-Status", "0")
	})
	for _, tc := range []struct {
		name string
		fn   func([]byte) []byte
		out  int // bytes of each message as the client gets it
	}{
		{"longer", func(m []byte) []byte { return append(append([]byte(nil), m...), "-rewritten-longer"...) }, size + 17},
		{"shorter", func(m []byte) []byte { return m[:size/4] }, size / 4},
		{"unchanged", func(m []byte) []byte { return m }, size},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var seen, ended atomic.Int64
			r := &Relay{Handler: tapping{addr: addr, fn: tc.fn, seen: &seen, ended: &ended}, Dial: dialTCP}
			c := dialRelay(t, r)
			c.headers(1, true)
			var body int
			for done := false; !done; {
				f := c.next(func(http2.Frame) bool { return true })
				switch f := f.(type) {
				case *http2.DataFrame:
					body += len(f.Data())
					time.Sleep(20 * time.Microsecond) // a slow reader
					if n := len(f.Data()); n > 0 {
						_ = c.fr.WriteWindowUpdate(0, uint32(n))
						_ = c.fr.WriteWindowUpdate(1, uint32(n))
						c.flush()
					}
					done = f.StreamEnded()
				case *http2.MetaHeadersFrame:
					done = f.StreamEnded()
				case *http2.RSTStreamFrame:
					t.Fatalf("stream reset: %v", f.ErrCode)
				case *http2.GoAwayFrame:
					t.Fatalf("GOAWAY %v", f.ErrCode)
				}
			}
			if want := messages * (5 + tc.out); body != want {
				t.Errorf("the client got %d bytes, want %d", body, want)
			}
			if seen.Load() != messages || ended.Load() != 1 {
				t.Errorf("the tap saw %d messages and %d ends, want %d and 1", seen.Load(), ended.Load(), messages)
			}
			// Every byte the upstream sent has been given back, once: what it
			// may still send and what is due to be granted add up to the
			// relay's window exactly (a rewrite's extra bytes credited would
			// push it over, dropped ones under).
			r.mu.Lock()
			for _, p := range r.pools {
				p.mu.Lock()
				for _, uc := range p.conns {
					uc.mu.Lock()
					if got := uc.recvWin + uc.unacked; got != connWindow {
						t.Errorf("the upstream's window and the credit due add up to %d, want %d", got, connWindow)
					}
					uc.mu.Unlock()
				}
				p.mu.Unlock()
			}
			r.mu.Unlock()
		})
	}
}
