package h2relay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/authproxy/authproxy/internal/syncbuf"
)

// stuck is a Handler whose streams never open (a credential that never
// arrives), so a test controls every frame the relay sees.
type stuck struct{ release chan struct{} }

func (h stuck) Open(req *Request) (*Target, error) {
	if req.Inline {
		return nil, ErrWouldBlock
	}
	select {
	case <-h.release:
	case <-req.Context.Done():
	}
	return nil, errors.New("not opened")
}

func (stuck) Reply(*Request, *Target, error) Reply {
	return Reply{Status: http.StatusServiceUnavailable}
}

// rawClient is an HTTP/2 client that writes frames by hand.
type rawClient struct {
	t   *testing.T
	nc  net.Conn
	fr  *http2.Framer
	bw  *bufio.Writer
	enc *hpack.Encoder
	hb  bytes.Buffer
}

func dialRelay(t *testing.T, r *Relay) *rawClient {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.ServeConn(c)
		}
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = r.Shutdown(ctx)
	})
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return newRawClient(t, nc)
}

// newRawClient sends the client preface and SETTINGS on nc, and gives
// the test 10 s to finish with it.
func newRawClient(t *testing.T, nc net.Conn) *rawClient {
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	c := &rawClient{t: t, nc: nc, bw: bufio.NewWriter(nc)}
	c.fr = http2.NewFramer(c.bw, nc)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.hb)
	_, _ = c.bw.WriteString(http2.ClientPreface)
	_ = c.fr.WriteSettings()
	c.flush()
	return c
}

// serverHandshake reads the client preface from rw and sends SETTINGS:
// the start of a hand-written upstream. It returns the upstream's framer
// and the buffer its writes go through.
func serverHandshake(rw io.ReadWriter) (*http2.Framer, *bufio.Writer, error) {
	br := bufio.NewReader(rw)
	if _, err := io.ReadFull(br, make([]byte, len(http2.ClientPreface))); err != nil {
		return nil, nil, err
	}
	bw := bufio.NewWriter(rw)
	fr := http2.NewFramer(bw, br)
	_ = fr.WriteSettings()
	return fr, bw, bw.Flush()
}

func (c *rawClient) flush() {
	if err := c.bw.Flush(); err != nil {
		c.t.Fatal(err)
	}
}

func (c *rawClient) headers(id uint32, end bool) {
	c.hb.Reset()
	for _, f := range []hpack.HeaderField{{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: "a.test"}, {Name: ":path", Value: "/x"}} {
		_ = c.enc.WriteField(f)
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hb.Bytes(), EndHeaders: true, EndStream: end}); err != nil {
		c.t.Fatal(err)
	}
	c.flush()
}

// next reads frames until one satisfies want, and returns it.
func (c *rawClient) next(want func(http2.Frame) bool) http2.Frame {
	c.t.Helper()
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.t.Fatalf("reading: %v", err)
		}
		if want(f) {
			return f
		}
	}
}

func TestRelayRefusesStreamsOverTheLimit(t *testing.T) {
	h := stuck{release: make(chan struct{})}
	defer close(h.release)
	refused := make(chan string, 4)
	c := dialRelay(t, &Relay{Handler: h, MaxConcurrentStreams: 2, OnRefused: func(reason string) { refused <- reason }})
	c.headers(1, true)
	c.headers(3, true)
	c.headers(5, true)
	rst := c.next(func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok }).(*http2.RSTStreamFrame)
	if rst.StreamID != 5 || rst.ErrCode != http2.ErrCodeRefusedStream {
		t.Errorf("got RST_STREAM %d %v, want stream 5 refused", rst.StreamID, rst.ErrCode)
	}
	if r := <-refused; r != "max_streams" {
		t.Errorf("OnRefused(%q), want max_streams", r)
	}
}

func TestRelayEndsConnectionsThatBreakTheProtocol(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(c *rawClient)
		want http2.ErrCode
	}{
		{"an even stream ID", func(c *rawClient) { c.headers(2, true) }, http2.ErrCodeProtocol},
		{"a stream ID going back", func(c *rawClient) { c.headers(5, true); c.headers(3, true) }, http2.ErrCodeProtocol},
		{"more data than the window", func(c *rawClient) {
			c.headers(1, false)
			chunk := make([]byte, 16<<10)
			for range streamWindow/len(chunk) + 2 { // past the stream's 256 KiB
				_ = c.fr.WriteData(1, false, chunk)
			}
			c.flush()
		}, http2.ErrCodeFlowControl},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := stuck{release: make(chan struct{})}
			defer close(h.release)
			logs := &syncbuf.Buffer{}
			goaways := make(chan string, 4)
			c := dialRelay(t, &Relay{Handler: h, Log: slog.New(slog.NewTextHandler(logs, nil)),
				OnGoAway: func(side, direction string, code http2.ErrCode) {
					goaways <- side + " " + direction + " " + code.String()
				}})
			tc.send(c)
			f := c.next(func(f http2.Frame) bool {
				switch f := f.(type) {
				case *http2.GoAwayFrame:
					return true
				case *http2.RSTStreamFrame:
					return f.ErrCode == tc.want
				}
				return false
			})
			switch f := f.(type) {
			case *http2.GoAwayFrame:
				if f.ErrCode != tc.want {
					t.Errorf("GOAWAY %v, want %v", f.ErrCode, tc.want)
				}
				if g := <-goaways; g != "client sent "+tc.want.String() {
					t.Errorf("OnGoAway(%s), want client sent %v", g, tc.want)
				}
				waitFor(t, func() bool { return strings.Contains(logs.String(), "protocol error") }, "the log to say why the connection ended")
			case *http2.RSTStreamFrame:
				if tc.want != http2.ErrCodeFlowControl {
					t.Errorf("RST_STREAM %v, want GOAWAY %v", f.ErrCode, tc.want)
				}
			}
		})
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRelayClosesSilentConnections(t *testing.T) {
	r := &Relay{Handler: stuck{}, PrefaceTimeout: 200 * time.Millisecond}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			r.ServeConn(c)
		}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	if _, err := nc.Read(make([]byte, 1)); err == nil {
		t.Fatal("the relay wrote to a connection that never sent its preface")
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 5*time.Second {
		t.Errorf("closed after %v, want about the preface timeout (200ms)", d)
	}
}

func TestRelayClosesIdleConnections(t *testing.T) {
	c := dialRelay(t, &Relay{Handler: stuck{}, IdleTimeout: 200 * time.Millisecond})
	start := time.Now()
	ga := c.next(func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok }).(*http2.GoAwayFrame)
	if ga.ErrCode != http2.ErrCodeNo {
		t.Errorf("GOAWAY %v, want NO_ERROR", ga.ErrCode)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("GOAWAY after %v, before the idle timeout (200ms)", d)
	}
	if _, err := c.fr.ReadFrame(); err == nil {
		t.Error("the connection stays open after GOAWAY on an idle connection")
	}
}

// to is a Handler that sends every stream to one upstream.
type to struct{ addr string }

func (h to) Open(*Request) (*Target, error) {
	return &Target{Scheme: "http", Addr: h.addr, Method: "POST", Authority: "up.test", Path: "/x", Header: http.Header{}}, nil
}

func (to) Reply(*Request, *Target, error) Reply { return Reply{Status: http.StatusBadGateway} }

// handUpstream is a hand-written HTTP/2 upstream on loopback: for each
// header block it reads (a request head or trailers), answer writes
// whatever frames the test wants (flushed after). It returns a Relay that
// sends every stream there.
func handUpstream(t *testing.T, answer func(fr *http2.Framer, h *http2.MetaHeadersFrame)) *Relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		fr, bw, err := serverHandshake(nc)
		if err != nil {
			return
		}
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if h, ok := f.(*http2.MetaHeadersFrame); ok {
				answer(fr, h)
				_ = bw.Flush()
			}
		}
	}()
	var d net.Dialer
	return &Relay{Handler: to{ln.Addr().String()},
		Dial: func(ctx context.Context, _, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }}
}

// An upstream that overruns a stream's window has that stream reset, and
// the client's stream, already answered, is reset too instead of waiting.
func TestRelayResetsTheClientWhenTheUpstreamBreaksAStream(t *testing.T) {
	r := handUpstream(t, func(fr *http2.Framer, h *http2.MetaHeadersFrame) { // an upstream that ignores flow control
		id := h.StreamID
		var hb bytes.Buffer
		_ = hpack.NewEncoder(&hb).WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true})
		chunk := make([]byte, 16<<10)
		for range streamWindow/len(chunk) + 2 {
			_ = fr.WriteData(id, false, chunk)
		}
	})
	c := dialRelay(t, r)
	c.headers(1, true)
	rst := c.next(func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok }).(*http2.RSTStreamFrame)
	if rst.StreamID != 1 || rst.ErrCode != http2.ErrCodeInternal {
		t.Errorf("got RST_STREAM %d %v, want stream 1 INTERNAL_ERROR", rst.StreamID, rst.ErrCode)
	}
}

// A connection with no stream holds no read or write buffer, on either
// side, even when its last stream ended while its reader waited: 16 KiB
// less for every idle client connection.
func TestIdleConnectionsHoldNoBuffers(t *testing.T) {
	addr := h2cUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok")
	})
	r := &Relay{Handler: to{addr}, Dial: dialTCP}
	c := dialRelay(t, r)
	held := func() (n int) {
		var conns []*conn
		r.mu.Lock()
		for cc := range r.clients {
			conns = append(conns, cc)
		}
		for _, p := range r.pools {
			p.mu.Lock()
			conns = append(conns, p.conns...)
			p.mu.Unlock()
		}
		r.mu.Unlock()
		for _, cc := range conns {
			if cc.br.has.Load() {
				n++
			}
			cc.wmu.Lock()
			if cc.bw.bw != nil {
				n++
			}
			cc.wmu.Unlock()
		}
		return n
	}
	for i := uint32(1); i <= 5; i += 2 {
		c.headers(i, false)
		_ = c.fr.WriteData(i, true, []byte("body"))
		c.flush()
		c.next(func(f http2.Frame) bool {
			return f.Header().StreamID == i && f.Header().Flags.Has(http2.FlagDataEndStream)
		})
		waitFor(t, func() bool { return held() == 0 }, "idle connections to give their buffers back")
	}
}

// h2cUpstream serves h over cleartext HTTP/2 on loopback until the test
// ends, and returns its address.
func h2cUpstream(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	up := &http.Server{Handler: h, Protocols: new(http.Protocols)}
	up.Protocols.SetUnencryptedHTTP2(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = up.Serve(ln) }()
	t.Cleanup(func() { up.Close() })
	return ln.Addr().String()
}

// dialTCP is a Relay's Dial for cleartext upstreams.
func dialTCP(ctx context.Context, _, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// A PING is acknowledged whether or not anything else is written to its
// connection: alone (the acknowledgement waits at most a millisecond for
// company), and followed by a stream the relay answers.
func TestRelayAcknowledgesPings(t *testing.T) {
	h := stuck{release: make(chan struct{})}
	c := dialRelay(t, &Relay{Handler: h})
	isAck := func(data byte) func(http2.Frame) bool {
		return func(f http2.Frame) bool {
			p, ok := f.(*http2.PingFrame)
			return ok && p.IsAck() && p.Data[0] == data
		}
	}
	for i := byte(1); i <= 3; i++ {
		if err := c.fr.WritePing(false, [8]byte{i}); err != nil {
			t.Fatal(err)
		}
		c.flush()
		c.next(isAck(i))
	}
	if err := c.fr.WritePing(false, [8]byte{4}); err != nil {
		t.Fatal(err)
	}
	c.headers(1, true)
	close(h.release) // the stream is answered 503
	acked, answered := false, false
	for !acked || !answered {
		switch f := c.next(func(http2.Frame) bool { return true }).(type) {
		case *http2.PingFrame:
			acked = acked || isAck(4)(f)
		case *http2.MetaHeadersFrame:
			answered = answered || f.StreamID == 1 && f.PseudoValue("status") == "503"
		}
	}
}

// Connection-specific fields an upstream sends in a response head (which
// HTTP/2 forbids) do not reach the client; the others arrive in order,
// after the status, for informational and final heads alike.
func TestRelayDropsConnectionSpecificResponseFields(t *testing.T) {
	head := func(status string) []byte {
		var hb bytes.Buffer
		e := hpack.NewEncoder(&hb)
		for _, f := range []hpack.HeaderField{{Name: ":status", Value: status}, {Name: "connection", Value: "close"},
			{Name: "x-a", Value: "1"}, {Name: "keep-alive", Value: "timeout=5"}, {Name: "transfer-encoding", Value: "chunked"},
			{Name: "x-b", Value: "2"}, {Name: "upgrade", Value: "h2c"}} {
			_ = e.WriteField(f)
		}
		return hb.Bytes()
	}
	c := dialRelay(t, handUpstream(t, func(fr *http2.Framer, h *http2.MetaHeadersFrame) {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, BlockFragment: head("103"), EndHeaders: true})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, BlockFragment: head("200"), EndHeaders: true, EndStream: true})
	}))
	c.headers(1, true)
	for _, status := range []string{"103", "200"} {
		h := c.next(func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok }).(*http2.MetaHeadersFrame)
		want := []hpack.HeaderField{{Name: ":status", Value: status}, {Name: "x-a", Value: "1"}, {Name: "x-b", Value: "2"}}
		if !reflect.DeepEqual(h.Fields, want) {
			t.Errorf("head %s: %v, want %v", status, h.Fields, want)
		}
	}
}

// block encodes fields as one header block.
func block(fields ...hpack.HeaderField) []byte {
	var b bytes.Buffer
	e := hpack.NewEncoder(&b)
	for _, f := range fields {
		_ = e.WriteField(f)
	}
	return b.Bytes()
}

// later is a Handler whose streams open, on a goroutine of their own,
// once release is closed.
type later struct {
	to
	release chan struct{}
}

func (h later) Open(req *Request) (*Target, error) {
	if req.Inline {
		return nil, ErrWouldBlock
	}
	<-h.release
	return h.to.Open(req)
}

// Trailers the relay keeps (a client's, before its stream's upstream leg
// opens; an upstream's, behind data the client's window holds back) are
// sent as they came, though the header blocks read after them reuse the
// connection's field buffer.
func TestRelayKeepsTrailersPastTheNextHeaderBlock(t *testing.T) {
	t.Run("request", func(t *testing.T) {
		trailers := make(chan []hpack.HeaderField, 4)
		heads := map[uint32]bool{} // the upstream's streams that have had their head
		r := handUpstream(t, func(fr *http2.Framer, h *http2.MetaHeadersFrame) {
			if heads[h.StreamID] {
				trailers <- append([]hpack.HeaderField(nil), h.Fields...)
			}
			heads[h.StreamID] = true
			if h.StreamEnded() {
				_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, EndHeaders: true, EndStream: true,
					BlockFragment: block(hpack.HeaderField{Name: ":status", Value: "200"})})
			}
		})
		release := make(chan struct{})
		r.Handler = later{r.Handler.(to), release}
		c := dialRelay(t, r)
		c.headers(1, false)
		c.hb.Reset()
		_ = c.enc.WriteField(hpack.HeaderField{Name: "x-t", Value: "one"})
		if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.hb.Bytes(), EndHeaders: true, EndStream: true}); err != nil {
			t.Fatal(err)
		}
		c.headers(3, true) // decoded while stream 1's trailers wait
		close(release)
		for answered := 0; answered < 2; {
			if h, ok := c.next(func(http2.Frame) bool { return true }).(*http2.MetaHeadersFrame); ok && h.StreamEnded() {
				answered++
			}
		}
		want := []hpack.HeaderField{{Name: "x-t", Value: "one"}}
		select {
		case got := <-trailers:
			if !reflect.DeepEqual(got, want) || len(trailers) != 0 {
				t.Errorf("the upstream got trailers %v (and %d more), want %v", got, len(trailers), want)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("the upstream got no trailers, want %v", want)
		}
	})
	t.Run("response", func(t *testing.T) {
		c := dialRelay(t, handUpstream(t, func(fr *http2.Framer, h *http2.MetaHeadersFrame) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, EndHeaders: true,
				BlockFragment: block(hpack.HeaderField{Name: ":status", Value: "200"})})
			_ = fr.WriteData(h.StreamID, false, []byte("hello"))
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, EndHeaders: true, EndStream: true,
				BlockFragment: block(hpack.HeaderField{Name: "x-t", Value: fmt.Sprint(h.StreamID)})})
		}))
		if err := c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1}); err != nil {
			t.Fatal(err)
		}
		c.headers(1, true)
		c.headers(3, true)
		for heads := 0; heads < 2; {
			if h, ok := c.next(func(http2.Frame) bool { return true }).(*http2.MetaHeadersFrame); ok && h.PseudoValue("status") == "200" {
				heads++
			}
		}
		for _, id := range []uint32{1, 3} {
			_ = c.fr.WriteWindowUpdate(id, 100)
		}
		c.flush()
		got := map[uint32][]hpack.HeaderField{}
		for len(got) < 2 {
			if h, ok := c.next(func(http2.Frame) bool { return true }).(*http2.MetaHeadersFrame); ok && h.StreamEnded() {
				got[h.StreamID] = append([]hpack.HeaderField(nil), h.Fields...)
			}
		}
		values := map[string]bool{}
		for id, fields := range got {
			if len(fields) != 1 || fields[0].Name != "x-t" {
				t.Errorf("stream %d: trailers %v, want x-t alone", id, fields)
				continue
			}
			values[fields[0].Value] = true
		}
		if !values["1"] || !values["3"] {
			t.Errorf("trailers %v, want x-t 1 on one stream and 3 on the other", got)
		}
	})
}
