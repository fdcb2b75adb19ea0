package h2relay

import (
	"bytes"
	"encoding/binary"
	"net/http"
	"testing"

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
