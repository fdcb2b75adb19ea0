package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/authproxy/authproxy/internal/netwait"
)

// connSet tracks connections that http.Server no longer tracks once
// goproxy hijacks them, so shutdown can close them.
type connSet struct {
	mu     sync.Mutex
	m      map[io.Closer]struct{}
	closed bool
}

// add registers c; it reports false once the set is closed.
func (s *connSet) add(c io.Closer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.m == nil {
		s.m = map[io.Closer]struct{}{}
	}
	s.m[c] = struct{}{}
	return true
}

func (s *connSet) remove(c io.Closer) {
	s.mu.Lock()
	delete(s.m, c)
	s.mu.Unlock()
}

func (s *connSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

func (s *connSet) each(fn func(io.Closer)) {
	s.mu.Lock()
	list := make([]io.Closer, 0, len(s.m))
	for c := range s.m {
		list = append(list, c)
	}
	s.mu.Unlock()
	for _, c := range list {
		fn(c)
	}
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.each(func(c io.Closer) { _ = c.Close() })
}

// trackingListener registers every accepted connection in a connSet.
type trackingListener struct {
	net.Listener
	set *connSet
}

func (l *trackingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tc := &trackedConn{Conn: c, set: l.set}
		if l.set.add(tc) {
			// Its reads and writes go to the descriptor (netwait); an
			// intercepted CONNECT keeps the same Conn for the relay.
			return netwait.Wrap(tc, nil), nil
		}
		_ = c.Close()
	}
}

// trackedConn is a client connection of the forward listener.
type trackedConn struct {
	net.Conn
	set  *connSet
	once sync.Once
}

// SyscallConn is the connection's, for netwait's reads and writes.
func (c *trackedConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return sc.SyscallConn()
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.set.remove(c) })
	return err
}

// tunnelConn is the upstream side of a tunnelled CONNECT. Both directions
// of the tunnel pass through it, so it sees all traffic and closes the
// tunnel after idle time without any.
type tunnelConn struct {
	net.Conn
	idle  time.Duration
	last  atomic.Int64 // unix nanoseconds of the last read or write
	timer *time.Timer
	set   *connSet
	once  sync.Once
}

func (c *tunnelConn) touch() { c.last.Store(time.Now().UnixNano()) }

func (c *tunnelConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.touch()
	return n, err
}

func (c *tunnelConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.touch()
	return n, err
}

func (c *tunnelConn) check() {
	quiet := time.Since(time.Unix(0, c.last.Load()))
	if quiet >= c.idle {
		_ = c.Close()
		return
	}
	c.timer.Reset(c.idle - quiet)
}

func (c *tunnelConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.timer.Stop()
		if c.set != nil {
			c.set.remove(c)
		}
	})
	return err
}
