package h2relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/authproxy/authproxy/internal/netwait"
)

// countingConn counts the writes made to a TCP connection.
type countingConn struct {
	*net.TCPConn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.TCPConn.Write(p)
}

// holdingConn keeps what is written while held and sends it in one write
// when released: records written one by one arrive together.
type holdingConn struct {
	net.Conn
	mu   sync.Mutex
	hold bool
	buf  bytes.Buffer
}

func (c *holdingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hold {
		return c.buf.Write(p)
	}
	return c.Conn.Write(p)
}

func (c *holdingConn) setHold(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hold = on
	if !on {
		_, _ = c.Conn.Write(c.buf.Bytes())
		c.buf.Reset()
	}
}

// Responses that arrive together, each in a TLS record of its own (as a
// server that flushes per response sends them), reach the client in a few
// writes: the relay flushes when the upstream's socket is empty, not after
// each record. Before, every record cost the client connection a write.
func TestRelayFlushesResponsesThatArriveTogetherInFewWrites(t *testing.T) {
	const n = 40
	ts := httptest.NewUnstartedServer(nil)
	ts.StartTLS()
	cert := ts.TLS.Certificates[0]
	ts.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // the upstream: answers n streams at once, a TLS record each
		raw, err := ln.Accept()
		if err != nil {
			return
		}
		hc := &holdingConn{Conn: raw}
		tc := tls.Server(hc, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}})
		defer tc.Close()
		fr, bw, err := serverHandshake(tc)
		if err != nil {
			return
		}
		var ids []uint32
		for len(ids) < n {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					_ = fr.WriteSettingsAck()
					_ = bw.Flush()
				}
			case *http2.HeadersFrame:
				ids = append(ids, f.StreamID)
			}
		}
		hc.setHold(true)
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for _, id := range ids {
			hb.Reset()
			_ = enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true})
			_ = fr.WriteData(id, true, []byte("ok"))
			_ = bw.Flush() // one record
		}
		hc.setHold(false)
		_, _ = io.Copy(io.Discard, tc)
	}()

	r := &Relay{Handler: to{ln.Addr().String()}, Dial: func(ctx context.Context, _, addr string) (net.Conn, error) {
		nc, err := dialTCP(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return tls.Client(netwait.Wrap(nc, nil), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}), nil
	}}
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	served := make(chan *countingConn, 1)
	go func() {
		c, err := front.Accept()
		if err != nil {
			return
		}
		cc := &countingConn{TCPConn: c.(*net.TCPConn)}
		served <- cc
		r.ServeConn(netwait.Wrap(cc, nil))
	}()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = r.Shutdown(ctx)
	}()
	nc, err := net.Dial("tcp", front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := newRawClient(t, nc)
	cc := <-served
	for i := uint32(0); i < n; i++ {
		c.headers(2*i+1, true)
	}
	for done := 0; done < n; {
		f := c.next(func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok })
		if f.Header().Flags.Has(http2.FlagDataEndStream) {
			done++
		}
	}
	// The handshake takes a write or two; n responses took n before.
	if w := cc.writes.Load(); w > n/4 {
		t.Errorf("the relay wrote %d times to the client for %d responses that arrived together, want at most %d", w, n, n/4)
	}
}
