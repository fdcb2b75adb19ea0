package h2relay

import (
	"bufio"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// A connection's read and write buffers (8 KiB each) come from pools and
// are held only while in use: the write buffer from a frame's write to the
// flush that sends it, the read buffer while the connection has streams
// or bytes buffered. An idle connection holds neither, so it costs its
// goroutine, its HPACK tables and its socket, not 16 KiB of buffers.
const ioBufSize = 8 << 10

var (
	readBufs  = sync.Pool{New: func() any { b := make([]byte, ioBufSize); return &b }}
	writeBufs = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, ioBufSize) }}
)

// connReader buffers a connection's reads. When its buffer is empty and
// the connection has no stream (idle reports so), it gives the buffer
// back and reads only what the framer asks for (a frame header, then its
// payload) until a stream opens. A read that waits with the buffer when
// the connection falls idle (its last stream ended on another goroutine)
// is woken by kick, gives the buffer back, and waits again without it.
type connReader struct {
	nc      net.Conn
	idle    func() bool
	rearm   func() // sets the read deadline a kick's wake-up replaced
	buf     *[]byte
	r, w    int
	err     error
	holding atomic.Bool // a read waits with the buffer
	kicked  atomic.Bool
	has     atomic.Bool // buf is set (for tests)
}

func (cr *connReader) Read(p []byte) (int, error) {
	for cr.r == cr.w {
		if cr.err != nil {
			return 0, cr.err
		}
		if cr.buf != nil && cr.idle() {
			cr.release()
		}
		if cr.buf == nil {
			if len(p) >= ioBufSize || cr.idle() {
				n, err := cr.nc.Read(p)
				if n == 0 && cr.woken(err) {
					continue
				}
				return n, err
			}
			cr.buf = readBufs.Get().(*[]byte)
			cr.has.Store(true)
		}
		cr.holding.Store(true)
		n, err := cr.nc.Read(*cr.buf)
		cr.holding.Store(false)
		if n == 0 && cr.woken(err) {
			continue
		}
		cr.r, cr.w, cr.err = 0, n, err
		if n == 0 {
			return 0, err
		}
	}
	n := copy(p, (*cr.buf)[cr.r:cr.w])
	cr.r += n
	return n, nil
}

// kick wakes a read that waits with the buffer (from any goroutine).
func (cr *connReader) kick() {
	if cr.holding.Load() {
		cr.kicked.Store(true)
		_ = cr.nc.SetReadDeadline(time.Unix(1, 0))
	}
}

// woken reports whether err is a kick's wake-up, and if so undoes it.
func (cr *connReader) woken(err error) bool {
	var ne net.Error
	if err == nil || !errors.As(err, &ne) || !ne.Timeout() || !cr.kicked.Swap(false) {
		return false
	}
	cr.rearm()
	return true
}

// Buffered reports how many bytes are read and not yet taken.
func (cr *connReader) Buffered() int { return cr.w - cr.r }

// release gives the buffer back (it is empty, or the connection is over).
func (cr *connReader) release() {
	if cr.buf != nil {
		readBufs.Put(cr.buf)
		cr.buf, cr.r, cr.w = nil, 0, 0
		cr.has.Store(false)
	}
}

// connWriter buffers a connection's writes between flushes, in a pooled
// bufio.Writer taken at the first write and given back by the flush that
// empties it. Its user serialises calls (conn.wmu).
type connWriter struct {
	nc net.Conn
	bw *bufio.Writer
}

func (cw *connWriter) Write(p []byte) (int, error) {
	if cw.bw == nil {
		cw.bw = writeBufs.Get().(*bufio.Writer)
		cw.bw.Reset(cw.nc)
	}
	return cw.bw.Write(p)
}

func (cw *connWriter) WriteString(s string) (int, error) { return cw.Write([]byte(s)) }

// Flush sends what is buffered and gives the buffer back.
func (cw *connWriter) Flush() error {
	if cw.bw == nil {
		return nil
	}
	err := cw.bw.Flush()
	if err == nil {
		cw.bw.Reset(nil)
		writeBufs.Put(cw.bw)
		cw.bw = nil
	}
	return err
}
