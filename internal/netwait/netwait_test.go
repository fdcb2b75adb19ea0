package netwait

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
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
	if oe, ok := err.(*net.OpError); !ok || oe.Op != "read" {
		t.Fatalf("read past its deadline: %v, want a read *net.OpError (as net/http expects)", err)
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

// countingConn exposes its connection's descriptor but counts the reads
// and writes that reach its own Read and Write.
type countingConn struct {
	*net.TCPConn
	reads, writes atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	c.reads.Add(1)
	return c.TCPConn.Read(p)
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.TCPConn.Write(p)
}

// Writes go to the descriptor, whole: concurrent writers with more than
// the socket buffers hold each wait through the poller until the slow
// peer has read, and no write is interleaved with another.
func TestWritesGoToTheDescriptorWholeAndWaitWhileFull(t *testing.T) {
	a, b := pair(t)
	cc := &countingConn{TCPConn: b.(*net.TCPConn)}
	c := Wrap(cc, nil)
	const writers, writes, size = 4, 16, 256 << 10
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			chunk := make([]byte, size)
			for i := range chunk {
				chunk[i] = byte('a' + w)
			}
			for range writes {
				n, err := c.Write(chunk)
				if err == nil && n != size {
					err = io.ErrShortWrite
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	// Read slowly at first, so that the writers find the buffers full.
	time.Sleep(50 * time.Millisecond)
	got := make([]byte, size)
	per := map[byte]int{}
	for range writers * writes {
		if _, err := io.ReadFull(a, got); err != nil {
			t.Fatal(err)
		}
		for i := range got {
			if got[i] != got[0] {
				t.Fatalf("a write of %d bytes was interleaved with another at byte %d", size, i)
			}
		}
		per[got[0]]++
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	for w := range writers {
		if per[byte('a'+w)] != writes {
			t.Fatalf("writer %d: %d writes arrived, want %d", w, per[byte('a'+w)], writes)
		}
	}
	if n := cc.writes.Load(); n != 0 {
		t.Fatalf("%d writes went through the wrapped connection's Write, want none", n)
	}
}

// A write ends as the connection's own would: at its deadline with a
// timeout (and what it wrote so far), after Close with net.ErrClosed, and
// once the peer has gone with a system error.
func TestWritesEndAsPlainWrites(t *testing.T) {
	a, b := pair(t)
	c := Wrap(b, nil)
	big := make([]byte, 64<<20) // more than any socket buffers; the peer does not read
	_ = c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	n, err := c.Write(big)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write past its deadline: %v, want a timeout", err)
	}
	if n <= 0 || n >= len(big) {
		t.Fatalf("a write that timed out reports %d bytes written, want some but not all", n)
	}
	_ = c.SetWriteDeadline(time.Time{})
	_ = a.Close() // with unread data: the peer resets
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err = c.Write([]byte("gone"))
		if err != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "write" {
		t.Fatalf("write to a peer that has gone: %v, want a write *net.OpError", err)
	}
	_ = c.Close()
	_, err = c.Write([]byte("x"))
	if oe, ok := err.(*net.OpError); !ok || oe.Op != "write" || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v, want a write *net.OpError with net.ErrClosed", err)
	}
}

// Reads without a hook go to the descriptor too, and concurrent readers
// (which net.Conn allows) each get whole reads of what was sent, in
// order, with nothing lost or read twice.
func TestReadsWithoutAHookGoToTheDescriptor(t *testing.T) {
	a, b := pair(t)
	cc := &countingConn{TCPConn: b.(*net.TCPConn)}
	c := Wrap(cc, nil)
	const total = 8 << 20
	go func() {
		buf := make([]byte, 64<<10)
		for sent := 0; sent < total; sent += len(buf) {
			for i := range buf {
				buf[i] = byte((sent + i) % 251)
			}
			if _, err := a.Write(buf); err != nil {
				return
			}
		}
		_ = a.Close()
	}()
	var got atomic.Int64
	bad := make(chan string, 2)
	done := make(chan struct{}, 2)
	for range 2 {
		go func() {
			defer func() { done <- struct{}{} }()
			p := make([]byte, 7000)
			for {
				n, err := c.Read(p)
				got.Add(int64(n))
				if err == io.EOF {
					return
				}
				if err != nil {
					bad <- err.Error()
					return
				}
				// Each read is a run of the pattern: not torn by the other reader.
				for i := 1; i < n; i++ {
					if p[i] != byte((int(p[i-1])+1)%251) {
						bad <- "a read returned bytes out of order"
						return
					}
				}
			}
		}()
	}
	<-done
	<-done
	select {
	case s := <-bad:
		t.Fatal(s)
	default:
	}
	if got.Load() != total {
		t.Fatalf("the readers got %d bytes, want %d", got.Load(), total)
	}
	if n := cc.reads.Load(); n != 0 {
		t.Fatalf("%d reads went through the wrapped connection's Read, want none", n)
	}
}

// Wrapping a Conn again (a listener's Conn handed on to TLS) keeps it, so
// the descriptor stays reachable; with a prefix it is a new Conn that
// serves the prefix first.
func TestWrappingAConnAgainKeepsIt(t *testing.T) {
	a, b := pair(t)
	c := Wrap(b, nil)
	if Wrap(c, nil) != c || Find(tls.Server(Wrap(c, nil), &tls.Config{})) != c {
		t.Fatal("a Conn wrapped again is a new Conn, whose reads no longer reach the descriptor")
	}
	pc := Wrap(c, []byte("pre"))
	if pc == c {
		t.Fatal("a Conn wrapped with a prefix is the same Conn: the prefix is lost")
	}
	if _, err := a.Write([]byte("post")); err != nil {
		t.Fatal(err)
	}
	if s := readString(t, pc, 3) + readString(t, pc, 8); s != "prepost" {
		t.Fatalf("read %q, want %q", s, "prepost")
	}
}

// Waiting tells an empty socket from one with bytes or an end of stream
// queued, takes nothing from the queue, and cannot tell for a connection
// without a descriptor.
func TestWaitingLooksWithoutTaking(t *testing.T) {
	a, b := pair(t)
	c := Wrap(b, nil)
	if w, known := c.Waiting(); w || !known {
		t.Fatalf("empty socket: Waiting = %v, %v; want false, true", w, known)
	}
	if _, err := a.Write([]byte("xy")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for w, _ := c.Waiting(); !w; w, _ = c.Waiting() {
		if time.Now().After(deadline) {
			t.Fatal("two bytes written: Waiting never saw them")
		}
		time.Sleep(time.Millisecond)
	}
	if s := readString(t, c, 4); s != "xy" {
		t.Fatalf("read %q after Waiting, want %q: the look took bytes", s, "xy")
	}
	if w, _ := c.Waiting(); w {
		t.Fatal("after the bytes were read, Waiting still says bytes wait")
	}
	a.Close()
	for w, _ := c.Waiting(); !w; w, _ = c.Waiting() {
		if time.Now().After(deadline) {
			t.Fatal("the peer closed: Waiting never saw the end of stream")
		}
		time.Sleep(time.Millisecond)
	}
	c.Close()
	if w, known := c.Waiting(); !w || !known {
		t.Fatalf("closed connection: Waiting = %v, %v; want true, true", w, known)
	}
	if w, known := Wrap(b, []byte("p")).Waiting(); !w || !known {
		t.Fatalf("a prefix not yet read: Waiting = %v, %v; want true, true", w, known)
	}
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if _, known := Wrap(p1, nil).Waiting(); known {
		t.Fatal("a pipe has no descriptor, yet Waiting claims to know")
	}
}
