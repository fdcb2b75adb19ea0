package proxy_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawH2 is an HTTP/2 client that writes frames by hand, for what no
// well-behaved client sends: trailers naming credentials, header blocks
// over the limit, streams reset as soon as they open.
type rawH2 struct {
	t   testing.TB
	wmu sync.Mutex // writes may come from a goroutine besides read's
	nc  net.Conn
	fr  *http2.Framer
	bw  *bufio.Writer
	enc *hpack.Encoder
	hb  bytes.Buffer
}

// dialH2C opens a cleartext HTTP/2 connection to addr.
func dialH2C(t testing.TB, addr string) *rawH2 {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return newRawH2(t, nc)
}

// dialInterceptedH2 opens HTTP/2 over TLS to target through the forward
// proxy at proxyAddr (CONNECT, then ALPN h2), trusting roots.
func dialInterceptedH2(t testing.TB, proxyAddr, target string, roots *x509.CertPool) *rawH2 {
	t.Helper()
	nc, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(nc, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT %s: %v %v", target, resp, err)
	}
	host, _, _ := net.SplitHostPort(target)
	tc := tls.Client(nc, &tls.Config{ServerName: host, RootCAs: roots, NextProtos: []string{"h2"}})
	if err := tc.Handshake(); err != nil || tc.ConnectionState().NegotiatedProtocol != "h2" {
		t.Fatalf("TLS to %s: %v (ALPN %q)", target, err, tc.ConnectionState().NegotiatedProtocol)
	}
	return newRawH2(t, tc)
}

func newRawH2(t testing.TB, nc net.Conn) *rawH2 {
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	c := &rawH2{t: t, nc: nc, bw: bufio.NewWriterSize(nc, 64<<10)}
	c.fr = http2.NewFramer(c.bw, nc)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = 1 << 20
	c.enc = hpack.NewEncoder(&c.hb)
	c.enc.SetMaxDynamicTableSizeLimit(0) // every field literal: sizes are what they look
	_, _ = c.bw.WriteString(http2.ClientPreface)
	_ = c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	_ = c.fr.WriteWindowUpdate(0, 1<<24)
	c.flush()
	return c
}

func (c *rawH2) flush() {
	if err := c.bw.Flush(); err != nil {
		c.t.Fatalf("writing: %v", err)
	}
}

// request is a request head for stream id.
func request(method, scheme, authority, path string, extra ...string) []hpack.HeaderField {
	f := []hpack.HeaderField{{Name: ":method", Value: method}, {Name: ":scheme", Value: scheme},
		{Name: ":authority", Value: authority}, {Name: ":path", Value: path}}
	for i := 0; i+1 < len(extra); i += 2 {
		f = append(f, hpack.HeaderField{Name: extra[i], Value: extra[i+1]})
	}
	return f
}

// headers writes a header block as HEADERS and CONTINUATION frames of at
// most 16 KiB; with open set, the block is left unfinished.
func (c *rawH2) headers(id uint32, fields []hpack.HeaderField, end, open bool) {
	if err := c.tryHeaders(id, fields, end, open); err != nil {
		c.t.Fatalf("writing headers: %v", err)
	}
}

// tryHeaders is headers for a peer that may stop reading: it returns the
// write error (and may run on a goroutine of its own).
func (c *rawH2) tryHeaders(id uint32, fields []hpack.HeaderField, end, open bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.hb.Reset()
	for _, f := range fields {
		_ = c.enc.WriteField(f)
	}
	block := c.hb.Bytes()
	first := true
	for {
		n := min(len(block), 16<<10)
		frag, rest := block[:n], block[n:]
		last := len(rest) == 0 && !open
		var err error
		if first {
			err = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: end, EndHeaders: last})
			first = false
		} else {
			err = c.fr.WriteContinuation(id, last, frag)
		}
		if err != nil {
			return err
		}
		if len(rest) == 0 {
			break
		}
		block = rest
	}
	return c.bw.Flush()
}

func (c *rawH2) data(id uint32, b []byte, end bool) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.fr.WriteData(id, end, b); err != nil {
		c.t.Fatalf("writing data: %v", err)
	}
	c.flush()
}

// write runs fn, which writes frames, and flushes, under the write lock.
func (c *rawH2) write(fn func()) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	fn()
	_ = c.bw.Flush()
}

// answer is what came back on one stream.
type answer struct {
	status  int
	header  http.Header
	body    []byte
	reset   bool // RST_STREAM
	code    http2.ErrCode
	goAway  bool // the connection was sent GOAWAY
	goCode  http2.ErrCode
	closed  bool // the connection ended before the stream did
	trailer http.Header
}

// read reads frames until stream id ends (END_STREAM or RST_STREAM), the
// connection ends, or GOAWAY names a last stream below id.
func (c *rawH2) read(id uint32) answer {
	var a answer
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				continue
			}
			a.closed = true
			return a
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.write(func() { _ = c.fr.WriteSettingsAck() })
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.write(func() { _ = c.fr.WritePing(true, f.Data) })
			}
		case *http2.GoAwayFrame:
			a.goAway, a.goCode = true, f.ErrCode
			if f.LastStreamID < id {
				return a
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				a.reset, a.code = true, f.ErrCode
				return a
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID != id {
				continue
			}
			h := http.Header{}
			for _, hf := range f.RegularFields() {
				h.Add(hf.Name, hf.Value)
			}
			if a.status == 0 {
				a.status, _ = strconv.Atoi(f.PseudoValue("status"))
				a.header = h
			} else {
				a.trailer = h
			}
			if f.StreamEnded() {
				return a
			}
		case *http2.DataFrame:
			if f.StreamID != id {
				continue
			}
			a.body = append(a.body, f.Data()...)
			if n := uint32(len(f.Data())); n > 0 {
				c.write(func() {
					_ = c.fr.WriteWindowUpdate(0, n)
					_ = c.fr.WriteWindowUpdate(id, n)
				})
			}
			if f.StreamEnded() {
				return a
			}
		}
	}
}

// h2UpConn is one connection of an h2Upstream, for its onHeaders.
type h2UpConn struct {
	fr  *http2.Framer
	hb  bytes.Buffer
	enc *hpack.Encoder
}

// answer ends stream id with a head of the given status.
func (c *h2UpConn) answer(id uint32, status string) {
	c.hb.Reset()
	_ = c.enc.WriteField(hpack.HeaderField{Name: ":status", Value: status})
	_ = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hb.Bytes(), EndStream: true, EndHeaders: true})
}

// h2Upstream is a hand-written HTTP/2 upstream on loopback (over TLS with
// ALPN h2 when tlsCfg is set): it answers SETTINGS and PING, hands each
// request's HEADERS to onHeaders, and writes what they wrote once it has
// read every frame already there. Its connections end at cleanup.
func h2Upstream(t testing.TB, tlsCfg *tls.Config, onHeaders func(c *h2UpConn, f *http2.MetaHeadersFrame)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			if tlsCfg != nil {
				cfg := tlsCfg.Clone()
				cfg.NextProtos = []string{"h2"}
				nc = tls.Server(nc, cfg)
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			wg.Go(func() { serveH2Upstream(nc, onHeaders) })
		}
	})
	return ln.Addr().String()
}

func serveH2Upstream(nc net.Conn, onHeaders func(c *h2UpConn, f *http2.MetaHeadersFrame)) {
	defer nc.Close()
	br, bw := bufio.NewReader(nc), bufio.NewWriter(nc)
	pre := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(br, pre); err != nil || string(pre) != http2.ClientPreface {
		return
	}
	c := &h2UpConn{fr: http2.NewFramer(bw, br)}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.hb)
	_ = c.fr.WriteSettings()
	_ = bw.Flush()
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = c.fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = c.fr.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			onHeaders(c, f)
		}
		if br.Buffered() == 0 {
			_ = bw.Flush()
		}
	}
}
