package netwait

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// pair returns both ends of a loopback TCP connection.
func pair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		done <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-done
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func readString(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	buf := make([]byte, n)
	m, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(buf[:m])
}

// The hook runs once a read finds the socket empty, not before: every
// byte already there is read first, and the read then waits for more.
func TestHookRunsWhenTheSocketIsEmpty(t *testing.T) {
	a, b := pair(t)
	c := Wrap(b, []byte("pre"))
	hooks := 0
	c.SetHook(func() {
		hooks++
		if hooks == 1 {
			go func() { _, _ = a.Write([]byte("late")) }()
		}
	})
	if Find(c) != c {
		t.Fatal("Find does not take a TCP connection for one that can call a hook")
	}
	if _, err := a.Write([]byte("abcdef")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // let loopback deliver it
	var got string
	for _, n := range []int{8, 2, 2, 2} {
		got += readString(t, c, n)
	}
	if got != "preabcdef" || hooks != 0 {
		t.Fatalf("read %q with %d hook calls, want %q with none", got, hooks, "preabcdef")
	}
	if s := readString(t, c, 8); s != "late" || hooks != 1 {
		t.Fatalf("read %q with %d hook calls, want %q after one", s, hooks, "late")
	}
}

// A hooked read reports the end, a deadline (a net.Error that times out,
// as the relay's kick expects) and a closed connection as plain reads do.
func TestHookedReadsEndAsPlainReads(t *testing.T) {
	a, b := pair(t)
	c := Wrap(b, nil)
	c.SetHook(func() {})
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	_, err := c.Read(make([]byte, 4))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past its deadline: %v, want a timeout", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	_ = a.Close()
	if _, err := c.Read(make([]byte, 4)); err != io.EOF {
		t.Fatalf("read after the peer closed: %v, want io.EOF", err)
	}
	_ = c.Close()
	if _, err := c.Read(make([]byte, 4)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after Close: %v, want net.ErrClosed", err)
	}
}

// Find sees through TLS; a connection without a file descriptor (a pipe)
// is not found, and reads as it is.
func TestFindAndConnectionsWithoutADescriptor(t *testing.T) {
	_, b := pair(t)
	c := Wrap(b, nil)
	if Find(tls.Client(c, &tls.Config{})) != c || Find(c) != c || Find(b) != nil {
		t.Fatal("Find does not return the Conn under a TLS connection, or finds one where there is none")
	}
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	pc := Wrap(p1, []byte("x"))
	pc.SetHook(func() { t.Error("a pipe's read called the hook") })
	if Find(pc) != nil {
		t.Fatal("Find returns a pipe, whose reads cannot call a hook")
	}
	go func() { _, _ = p2.Write([]byte("yz")) }()
	if s := readString(t, pc, 4) + readString(t, pc, 4); s != "xyz" {
		t.Fatalf("read %q from a pipe, want %q", s, "xyz")
	}
}

// A hook may close the connection it is called for: the read then ends
// with net.ErrClosed. (Called while the read held the descriptor, it
// waited for itself forever.)
func TestAHookThatClosesTheConnectionEndsTheRead(t *testing.T) {
	_, b := pair(t)
	c := Wrap(b, nil)
	c.SetHook(func() { _ = c.Close() })
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 4))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a hook that closed the connection left the read waiting")
	}
}

// A Conn over TCP closes its write side as the connection does: the relay
// (and net/http) look for CloseWrite to end a connection gracefully, and
// the peer reads the end while it can still send.
func TestCloseWriteHalfClosesTheConnection(t *testing.T) {
	a, b := pair(t)
	var nc net.Conn = Wrap(b, nil)
	cw, ok := nc.(interface{ CloseWrite() error })
	if !ok {
		t.Fatal("a Conn has no CloseWrite: the relay would reset instead of closing gracefully")
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the peer read %v after CloseWrite, want io.EOF", err)
	}
	if _, err := a.Write([]byte("still")); err != nil {
		t.Fatal(err)
	}
	if s := readString(t, nc, 8); s != "still" {
		t.Fatalf("read %q after CloseWrite, want %q", s, "still")
	}
}
