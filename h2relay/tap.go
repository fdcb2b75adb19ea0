package h2relay

import (
	"encoding/binary"
	"net/http"

	"github.com/authproxy/authproxy/grpcframe"
)

// tapState re-frames one response's gRPC messages for its Tap: it holds
// the frame header and message being read, never more than MaxTapMessage
// bytes of message; a larger message passes through unread.
type tapState struct {
	t    *Tap
	hdr  [5]byte
	nh   int    // header bytes read
	msg  []byte // the message so far, once its header is complete
	need int    // its length
	raw  int    // bytes of an oversized message still to pass
}

// held is how many received bytes the tap holds back.
func (ts *tapState) held() int { return ts.nh + len(ts.msg) }

// feed takes response data and returns what goes to the client now.
func (ts *tapState) feed(data []byte) []byte {
	if ts.t.Message == nil { // the tap waits only for the end
		return data
	}
	var out []byte
	for {
		if ts.raw > 0 {
			n := min(len(data), ts.raw)
			out = append(out, data[:n]...)
			ts.raw -= n
			data = data[n:]
		}
		if ts.nh == len(ts.hdr) && len(ts.msg) == ts.need { // a complete message
			m := ts.t.Message(ts.hdr[0]&1 == 1, ts.msg)
			out = grpcframe.Append(out, ts.hdr[0], m)
			ts.nh, ts.msg, ts.need = 0, nil, 0
		}
		if len(data) == 0 {
			return out
		}
		if ts.nh < len(ts.hdr) {
			n := copy(ts.hdr[ts.nh:], data)
			ts.nh += n
			data = data[n:]
			if ts.nh < len(ts.hdr) {
				return out
			}
			size := binary.BigEndian.Uint32(ts.hdr[1:])
			if size > MaxTapMessage {
				out = append(out, ts.hdr[:]...)
				ts.nh, ts.raw = 0, int(size)
				continue
			}
			ts.need, ts.msg = int(size), make([]byte, 0, size)
			continue
		}
		n := min(len(data), ts.need-len(ts.msg))
		ts.msg = append(ts.msg, data[:n]...)
		data = data[n:]
	}
}

// flush gives back what the tap holds of an unfinished message, as it
// came, for a response that ends inside one.
func (ts *tapState) flush() []byte {
	if ts.held() == 0 {
		return nil
	}
	out := append(append([]byte(nil), ts.hdr[:ts.nh]...), ts.msg...)
	ts.nh, ts.msg, ts.need = 0, nil, 0
	return out
}

// end calls the Tap's End, once.
func (ts *tapState) end(trailer http.Header) {
	if ts.t.End != nil {
		ts.t.End(trailer)
		ts.t.End = nil
	}
}
