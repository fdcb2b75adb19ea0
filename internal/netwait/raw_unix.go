//go:build unix

package netwait

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// rawFD reads and writes a socket's file descriptor through the
// runtime's poller (syscall.RawConn), so that a read sees the EAGAIN a
// plain read hides. The system calls themselves are sysRead and sysWrite:
// on Linux they do not tell the scheduler they are made (the socket never
// blocks), see sys_linux.go.
type rawFD struct {
	rc   syscall.RawConn
	addr net.Addr

	// One read's state, kept here so that a read allocates nothing, under
	// rmu (net.Conn allows concurrent readers).
	rmu       sync.Mutex
	try, wait func(fd uintptr) bool
	p         []byte
	n         int
	err       error

	// One write's state, under wmu (net.Conn allows concurrent writes).
	wmu   sync.Mutex
	write func(fd uintptr) bool
	wp    []byte
	wn    int
	werr  error

	// waiting's probe, under rmu.
	peek    func(fd uintptr) bool
	peekBuf [1]byte
	peekN   int
	peekErr error
}

func newRawFD(c net.Conn) *rawFD {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &rawFD{rc: rc, addr: c.RemoteAddr()}
	r.try = func(fd uintptr) bool { // one attempt, which never waits
		r.n, r.err = sysRead(fd, r.p)
		return true
	}
	r.wait = func(fd uintptr) bool { // until there is data: the poller waits
		r.n, r.err = sysRead(fd, r.p)
		return r.err != syscall.EAGAIN
	}
	r.peek = func(fd uintptr) bool { // a look at the receive queue, which never waits
		for {
			r.peekN, _, r.peekErr = syscall.Recvfrom(int(fd), r.peekBuf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if r.peekErr != syscall.EINTR {
				return true
			}
		}
	}
	r.write = func(fd uintptr) bool {
		for r.wn < len(r.wp) {
			n, err := sysWrite(fd, r.wp[r.wn:])
			switch err {
			case nil:
				r.wn += n
			case syscall.EAGAIN: // the poller waits until it can write
				return false
			default:
				r.werr = err
				return true
			}
		}
		return true
	}
	return r
}

// read makes one attempt; if the socket is empty it calls hook (if any),
// then waits for data (the poller only reports what arrives after its
// last reset, so the wait starts with another attempt). The hook runs
// outside the attempts, which hold a reference to the descriptor: a hook
// that closes the connection would otherwise wait for itself.
func (r *rawFD) read(p []byte, hook func()) (int, error) {
	r.rmu.Lock()
	defer r.rmu.Unlock()
	r.p = p
	var werr error
	if hook == nil {
		werr = r.rc.Read(r.wait)
	} else if werr = r.rc.Read(r.try); werr == nil && r.err == syscall.EAGAIN {
		hook()
		werr = r.rc.Read(r.wait)
	}
	n, err := r.n, r.err
	r.p, r.err = nil, nil
	switch {
	case werr != nil: // closed, or a deadline has passed
		return 0, asPlain(werr, "read")
	case err != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Addr: r.addr, Err: os.NewSyscallError("read", err)}
	case n <= 0:
		return 0, io.EOF
	}
	return n, nil
}

// waiting looks at the socket's receive queue without taking from it:
// a byte there, the peer's end of stream (a read would return 0) and a
// socket error all count as waiting, since each ends the connection's
// use; only EAGAIN says the queue is empty.
func (r *rawFD) waiting() (waiting, known bool) {
	r.rmu.Lock()
	defer r.rmu.Unlock()
	if err := r.rc.Read(r.peek); err != nil { // closed
		return true, true
	}
	return r.peekErr != syscall.EAGAIN, true
}

// writeAll writes p, waiting through the poller while the socket's buffer
// is full.
func (r *rawFD) writeAll(p []byte) (int, error) {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.wp, r.wn, r.werr = p, 0, nil
	werr := r.rc.Write(r.write)
	n, err := r.wn, r.werr
	r.wp, r.werr = nil, nil
	switch {
	case werr != nil:
		return n, asPlain(werr, "write")
	case err != nil:
		return n, &net.OpError{Op: "write", Net: "tcp", Addr: r.addr, Err: os.NewSyscallError("write", err)}
	}
	return n, nil
}

// asPlain names a RawConn's error ("raw-read", "raw-write") as the plain
// call's, which is what callers (net/http among them) and logs expect.
func asPlain(err error, op string) error {
	if oe, ok := err.(*net.OpError); ok {
		oe.Op = op
	}
	return err
}
