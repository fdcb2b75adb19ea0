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

	// One read's state, kept here so that a read allocates nothing (one
	// goroutine reads).
	fn     func(fd uintptr) bool
	p      []byte
	n      int
	err    error
	hook   func()
	hooked bool
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

// try is one attempt: data, the end, an error, or (EAGAIN) the hook once
// and a wait.
func (r *rawFD) try(fd uintptr) bool {
	for {
		r.n, r.err = syscall.Read(int(fd), r.p)
		if r.err != syscall.EINTR {
			break
		}
	}
	if r.err == syscall.EAGAIN {
		if !r.hooked {
			r.hooked = true
			r.hook()
		}
		return false
	}
	return true
}

func (r *rawFD) read(p []byte, hook func()) (int, error) {
	r.p, r.hook, r.hooked = p, hook, false
	werr := r.rc.Read(r.fn)
	n, err := r.n, r.err
	r.p, r.hook, r.err = nil, nil, nil
	switch {
	case werr != nil: // closed, or a deadline passed while waiting
		return 0, werr
	case err != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Addr: r.addr, Err: os.NewSyscallError("read", err)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}
