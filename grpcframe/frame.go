// Package grpcframe reads gRPC's length-prefixed message framing (a flag
// byte, a big-endian 4-byte length, the message) as it streams past, so a
// proxy can watch — and, if it must, rewrite — messages without buffering
// a stream. It holds at most one message at a time and releases each as
// soon as it is complete.
package grpcframe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// DefaultMaxMessage is the largest message handed to the callback; larger
// ones pass through unseen.
const DefaultMaxMessage = 4 << 20

// Func sees one message. compressed is the frame's flag (the message is
// then compressed with the stream's grpc-encoding). It returns the message
// to send on: msg itself, or a replacement (re-framed with its length).
type Func func(compressed bool, msg []byte) []byte

// Reader passes a gRPC message stream through, calling Func per message.
// It is not safe for concurrent use (an http.Response body never is).
type Reader struct {
	src io.ReadCloser
	fn  Func
	max int

	hdr  [5]byte
	out  []byte // framed bytes ready to be read
	raw  uint32 // bytes of an oversized message still to pass through
	err  error
	msgs int
}

// NewReader wraps src. max <= 0 means DefaultMaxMessage.
func NewReader(src io.ReadCloser, max int, fn Func) *Reader {
	if max <= 0 {
		max = DefaultMaxMessage
	}
	return &Reader{src: src, fn: fn, max: max}
}

// Messages reports how many messages were handed to Func.
func (r *Reader) Messages() int { return r.msgs }

// ErrTruncated is returned when the stream ends inside a frame.
var ErrTruncated = errors.New("grpcframe: stream ends inside a message")

func (r *Reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if r.raw > 0 { // an oversized message streams through unseen
		if uint32(len(p)) > r.raw {
			p = p[:r.raw]
		}
		n, err := r.src.Read(p)
		r.raw -= uint32(n)
		if err == io.EOF && r.raw > 0 {
			err = ErrTruncated
		}
		if err == io.EOF {
			err = nil
		}
		return n, err
	}
	for len(r.out) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		r.next()
	}
	n := copy(p, r.out)
	r.out = r.out[n:]
	return n, nil
}

// next reads one frame header and, unless oversized, its message.
func (r *Reader) next() {
	if _, err := io.ReadFull(r.src, r.hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			err = ErrTruncated
		}
		r.err = err
		return
	}
	n := binary.BigEndian.Uint32(r.hdr[1:])
	if n > uint32(r.max) {
		r.out = append([]byte(nil), r.hdr[:]...)
		r.raw = n
		if n == 0 {
			r.raw = 0
		}
		return
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r.src, msg); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			err = ErrTruncated
		}
		r.err = err
		return
	}
	r.msgs++
	msg = r.fn(r.hdr[0]&1 == 1, msg)
	r.out = Append(make([]byte, 0, 5+len(msg)), r.hdr[0], msg)
}

// Close closes the source.
func (r *Reader) Close() error { return r.src.Close() }

// Append appends msg framed with flag to b.
func Append(b []byte, flag byte, msg []byte) []byte {
	var h [5]byte
	h[0] = flag
	binary.BigEndian.PutUint32(h[1:], uint32(len(msg)))
	return append(append(b, h[:]...), msg...)
}

// Split parses a whole buffer of frames (for tests and small bodies).
func Split(b []byte) ([][]byte, error) {
	var out [][]byte
	for len(b) > 0 {
		if len(b) < 5 {
			return out, ErrTruncated
		}
		n := binary.BigEndian.Uint32(b[1:5])
		if uint64(len(b)-5) < uint64(n) {
			return out, fmt.Errorf("%w (%d of %d bytes)", ErrTruncated, len(b)-5, n)
		}
		out = append(out, b[5:5+n])
		b = b[5+n:]
	}
	return out, nil
}
