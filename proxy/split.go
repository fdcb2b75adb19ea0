package proxy

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/authproxy/authproxy/internal/netwait"
)

// h2Preface opens every cleartext HTTP/2 connection with prior knowledge.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// splitter hands the connections of one listener to two servers: those
// that open with the HTTP/2 preface to grpc-go, the rest (HTTP/1.1) to
// net/http. It looks at no more than the preface, so it never waits for
// bytes a client would only send after hearing from the server.
type splitter struct {
	base    net.Listener
	timeout time.Duration // for the first bytes of a connection
	h1, h2  *chanListener
	done    chan struct{}
	once    sync.Once
	err     error
}

func newSplitter(base net.Listener, timeout time.Duration) *splitter {
	s := &splitter{base: base, timeout: timeout, done: make(chan struct{})}
	s.h1 = &chanListener{s: s, ch: make(chan net.Conn)}
	s.h2 = &chanListener{s: s, ch: make(chan net.Conn)}
	return s
}

// run accepts until the base listener is closed.
func (s *splitter) run() {
	var delay time.Duration
	for {
		c, err := s.base.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() { // as net/http does with EMFILE and the like
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(delay):
					continue
				case <-s.done:
				}
			}
			s.close(err)
			return
		}
		delay = 0
		go s.route(c)
	}
}

// route reads until the bytes differ from the HTTP/2 preface or complete
// it, then hands the connection, bytes included, to the matching server.
func (s *splitter) route(c net.Conn) {
	var buf [len(h2Preface)]byte
	n := 0
	_ = c.SetReadDeadline(time.Now().Add(s.timeout))
	for n < len(buf) && bytes.Equal(buf[:n], []byte(h2Preface[:n])) {
		m, err := c.Read(buf[n:])
		n += m
		if err != nil && n < len(buf) {
			if n == 0 || bytes.Equal(buf[:n], []byte(h2Preface[:n])) {
				_ = c.Close() // closed or timed out before saying which
				return
			}
			break // net/http will read the error itself
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	to := s.h1
	if n == len(buf) && string(buf[:]) == h2Preface {
		to = s.h2
	}
	// netwait: on the h2 side the relay reads it.
	pc := netwait.Wrap(c, append([]byte(nil), buf[:n]...))
	select {
	case to.ch <- pc:
	case <-s.done:
		_ = c.Close()
	}
}

// close stops accepting: the base listener and both halves.
func (s *splitter) close(err error) {
	s.once.Do(func() {
		if err == nil {
			err = net.ErrClosed
		}
		s.err = err
		close(s.done)
		_ = s.base.Close()
	})
}

// chanListener is one half of a splitter.
type chanListener struct {
	s  *splitter
	ch chan net.Conn
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.s.done:
		return nil, l.s.err
	}
}

// Close closes the whole splitter: no server accepts once one stops.
func (l *chanListener) Close() error {
	l.s.close(nil)
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.s.base.Addr() }
