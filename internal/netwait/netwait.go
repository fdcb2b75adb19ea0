// Package netwait has a connection whose reads tell their caller, on the
// reading goroutine, when no data is there and the read is about to wait
// for the network. The frame relay flushes what it wrote for a batch of
// frames at that moment: after the last of the frames that had already
// arrived, not after each read. A TLS connection returns one record per
// read, so "my read buffer is empty" says little about whether more
// frames are waiting in the socket; "the socket is empty" does.
package netwait

import (
	"crypto/tls"
	"io"
	"net"
)

// Conn reads what it was given first (the bytes a listener peeked), then
// its connection. Where the connection exposes its file descriptor,
// reads and writes go to the descriptor (see Wrap), and with a hook set a
// read that finds no data calls the hook once before it waits. Deadlines
// and Close are the connection's, and bind those reads and writes as they
// bind the connection's own.
type Conn struct {
	net.Conn
	prefix []byte
	r      *rawFD    // nil: reads and writes go to the connection's
	hook   func()    // read and written by the reading goroutine only
	rec    io.Writer // as hook
}

// Wrap returns c with prefix served first. Wrap must be given the
// connection before any reader (a TLS layer) is put on top of it. When c
// exposes its descriptor (syscall.Conn), reads and writes go to the
// descriptor and not through c.Read and c.Write: a wrapper whose Read or
// Write does more than read or write (counts, times) must not expose one.
// A Conn given again without a prefix is returned as it is.
func Wrap(c net.Conn, prefix []byte) *Conn {
	if wc, ok := c.(*Conn); ok && len(prefix) == 0 {
		return wc
	}
	return &Conn{Conn: c, prefix: prefix, r: newRawFD(c)}
}

// Find returns the Conn under c (c itself, or the connection under a TLS
// connection) if its reads can call a hook: its connection exposes its
// file descriptor. Otherwise it returns nil.
func Find(c net.Conn) *Conn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if wc, ok := c.(*Conn); ok && wc.r != nil {
		return wc
	}
	return nil
}

// SetHook sets the function a read calls before it waits (nil: none). It
// runs on the reading goroutine, inside Read, so it must not read c; it
// may write to or close c. Only the goroutine that reads c may call
// SetHook.
func (c *Conn) SetHook(f func()) { c.hook = f }

// CloseWrite closes the write side of a TCP connection (the relay's
// graceful close after GOAWAY); elsewhere it does nothing.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// SetRecorder makes every read write what it returns to w as well, until
// it is called with nil; a forward listener keeps the last bytes of a TLS
// handshake with it, to read an alert the TLS layer could not. Only the
// goroutine that reads c may call SetRecorder.
func (c *Conn) SetRecorder(w io.Writer) { c.rec = w }

func (c *Conn) Read(p []byte) (n int, err error) {
	switch {
	case len(c.prefix) > 0:
		n = copy(p, c.prefix)
		c.prefix = c.prefix[n:]
	case c.r == nil || len(p) == 0:
		n, err = c.Conn.Read(p)
	default:
		n, err = c.r.read(p, c.hook)
	}
	if c.rec != nil && n > 0 {
		_, _ = c.rec.Write(p[:n])
	}
	return n, err
}

// Write writes to the descriptor where the connection exposes one (as
// Read reads it), and through the connection elsewhere.
func (c *Conn) Write(p []byte) (int, error) {
	if c.r == nil {
		return c.Conn.Write(p)
	}
	return c.r.writeAll(p)
}

// Waiting reports whether anything waits to be read on c without reading
// it or waiting: bytes it was given first, bytes in the socket's receive
// queue, or the peer's end of stream. known is false where c does not
// expose its descriptor, and the caller cannot tell. Only the goroutine
// that reads c may call Waiting.
func (c *Conn) Waiting() (waiting, known bool) {
	if len(c.prefix) > 0 {
		return true, true
	}
	if c.r == nil {
		return false, false
	}
	return c.r.waiting()
}
