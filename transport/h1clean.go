package transport

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"net/http"
	"os"
	"time"

	"github.com/authproxy/authproxy/internal/netwait"
)

// A connection of the HTTP/1.1 pool is reused only when it is clean:
// nothing is buffered past the answer it carried and nothing waits on its
// socket (http.Transport's persistConn drops a connection that "speaks
// unasked" for the same reason). An upstream that answers a HEAD with a
// body, a 204 or 304 with a body, one request with two answers, or a
// chunked answer whose Content-Length counts bytes past its last chunk
// leaves an answer queued; read as the next request's, it would hand one
// client's response to another.

// clean reports whether nothing is left to read on fc: in the response
// reader's buffer, in the TLS layer (a record it holds whole or in part),
// or on the socket. Any byte, an end of stream or a connection that
// cannot tell counts as not clean. It is called when an answer has been
// read to its end; quiet looks again before the idle connection is
// reused.
func (fc *fastConn) clean() bool {
	if fc.br.Buffered() > 0 {
		return false
	}
	if fc.rec != nil { // https: conn is the TLS layer
		if fc.rec.midRecord() { // part of a record the TLS layer keeps
			return false
		}
		// A read that cannot wait returns what the TLS layer holds
		// (decrypted bytes, or whole records read with an earlier one);
		// a record that is only a handshake message (a session ticket) is
		// consumed and yields nothing. The deadline has passed before the
		// read starts, so the socket is not read, and the timeout does not
		// stick to the TLS connection.
		_ = fc.conn.SetReadDeadline(aLongTimeAgo)
		n, err := fc.conn.Read(fc.probe[:])
		_ = fc.conn.SetReadDeadline(time.Time{})
		if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			return false
		}
	}
	return fc.quiet()
}

// quiet reports whether nothing waits on fc's socket. Nothing reads an
// idle connection, so what arrives while it sits in the pool can only be
// there: quiet is clean for a connection that was clean when it was put
// back.
func (fc *fastConn) quiet() bool {
	waiting, known := fc.raw.Waiting()
	return known && !waiting
}

// recordConn sits between a TLS client and its socket and follows the
// TLS record framing of what the client reads, so that clean can tell
// whether the TLS layer holds part of a record it has not yet been able to
// decrypt (a byte an upstream sent past its answer, waiting for the rest
// of its record).
type recordConn struct {
	*netwait.Conn
	hdr  [5]byte
	hn   int // bytes of the current record's header read
	left int // bytes of the current record's body still to come
}

func (c *recordConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.follow(p[:n])
	return n, err
}

func (c *recordConn) follow(b []byte) {
	for len(b) > 0 {
		if c.left > 0 {
			k := min(c.left, len(b))
			c.left -= k
			b = b[k:]
			continue
		}
		k := copy(c.hdr[c.hn:], b)
		c.hn += k
		b = b[k:]
		if c.hn == len(c.hdr) {
			c.hn, c.left = 0, int(binary.BigEndian.Uint16(c.hdr[3:]))
		}
	}
}

// midRecord: the bytes read so far end inside a record.
func (c *recordConn) midRecord() bool { return c.hn > 0 || c.left > 0 }

// headFraming is what a response head waiting in the reader says about
// its framing, before http.ReadResponse reads it: ReadResponse drops a
// Content-Length that chunked coding overrides, and a body that a HEAD,
// 1xx, 204 or 304 answer must not have is left unread.
type headFraming struct {
	seen          bool // the whole head was buffered and looked at
	contentLength bool // a Content-Length field
	nonZeroLength bool // a Content-Length field other than 0
	transferCode  bool // a Transfer-Encoding field
}

// peekHead looks at the head at the front of br without reading it. It
// waits for the first bytes, as ReadResponse would; an error is left for
// ReadResponse to return.
func peekHead(br *bufio.Reader) headFraming {
	if _, err := br.Peek(1); err != nil {
		return headFraming{}
	}
	buf, _ := br.Peek(br.Buffered())
	end := bytes.Index(buf, []byte("\n\r\n"))
	if alt := bytes.Index(buf, []byte("\n\n")); alt >= 0 && (end < 0 || alt < end) {
		end = alt
	}
	if end < 0 {
		return headFraming{}
	}
	h := headFraming{seen: true}
	lines := buf[:end+1]
	for len(lines) > 0 {
		i := bytes.IndexByte(lines, '\n')
		line := lines[:i]
		lines = lines[i+1:]
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			h.contentLength = true
			if v := bytes.TrimSpace(value); !bytes.Equal(v, []byte("0")) {
				h.nonZeroLength = true
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			h.transferCode = true
		}
	}
	return h
}

// reusable reports whether the connection may carry another request after
// resp, as far as its head's framing goes. Where the head could not be
// looked at, it may have held anything.
func (h headFraming) reusable(resp *http.Response) bool {
	if !h.seen {
		h = headFraming{seen: true, contentLength: true, nonZeroLength: true, transferCode: true}
	}
	chunked := len(resp.TransferEncoding) > 0
	switch {
	case chunked && h.contentLength: // RFC 9112 §6.3: smuggling or splitting
		return false
	case resp.StatusCode < 200 || resp.StatusCode == http.StatusNoContent:
		return !h.transferCode && !h.nonZeroLength // RFC 9110 §8.6, RFC 9112 §6.1
	case resp.StatusCode == http.StatusNotModified:
		return !h.transferCode
	}
	return true
}
