//go:build unix

package netwait

import (
	"io"
	"net"
	"os"
	"syscall"
)

// rawReader reads a socket's file descriptor through the runtime's
// poller (syscall.RawConn), so that it sees the EAGAIN a plain read hides.
type rawReader = *rawFD

type rawFD struct {
	rc   syscall.RawConn
	addr net.Addr

	// One attempt's state, kept here so that a read allocates nothing (one
	// goroutine reads).
	fn  func(fd uintptr) bool
	p   []byte
	n   int
	err error
}

func newRawReader(c net.Conn) rawReader {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &rawFD{rc: rc, addr: c.RemoteAddr()}
	r.fn = r.try
	return r
}

// try makes one attempt, which never waits.
func (r *rawFD) try(fd uintptr) bool {
	for {
		r.n, r.err = syscall.Read(int(fd), r.p)
		if r.err != syscall.EINTR {
			return true
		}
	}
}

// read makes one attempt; if the socket is empty it calls hook, then reads
// as net.Conn does (trying again first: data may have come meanwhile, and
// the poller only reports what arrives after its last reset). The hook
// runs outside the attempt, which holds a reference to the descriptor: a
// hook that closes the connection would otherwise wait for itself.
func (r *rawFD) read(c net.Conn, p []byte, hook func()) (int, error) {
	r.p = p
	werr := r.rc.Read(r.fn)
	n, err := r.n, r.err
	r.p, r.err = nil, nil
	switch {
	case werr != nil: // closed, or a deadline has passed
		return 0, werr
	case err == syscall.EAGAIN:
		hook()
		return c.Read(p)
	case err != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Addr: r.addr, Err: os.NewSyscallError("read", err)}
	case n <= 0:
		return 0, io.EOF
	}
	return n, nil
}
