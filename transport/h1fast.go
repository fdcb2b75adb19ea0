package transport

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/authproxy/authproxy/internal/netwait"
)

// h1Fast sends bodiless GET, HEAD and OPTIONS requests over HTTP/1.1
// keep-alive connections on the caller's goroutine: it writes the request,
// reads the response headers and hands back a body that returns the
// connection to the pool at its end. http.Transport instead runs two
// goroutines per connection and passes every request between three; on
// this path that costs more than the proxy's own work. Any other request
// goes to the fallback transport, whose settings (dialer, TLS config,
// timeouts, idle bound) the fast path shares.
type h1Fast struct {
	fallback *http.Transport

	mu    sync.Mutex
	idle  map[string][]*fastConn // by scheme://host:port; most recently used last
	sweep *time.Timer            // armed while connections are idle
}

type fastConn struct {
	key    string
	conn   net.Conn
	raw    *netwait.Conn   // the socket, under TLS for https
	rec    *recordConn     // follows TLS record framing under conn's TLS; nil for http
	rc     *countingReader // counts the bytes of the current answer
	br     *bufio.Reader
	bw     *bufio.Writer
	idleAt time.Time
	probe  [1]byte
}

func (t *h1Fast) RoundTrip(req *http.Request) (*http.Response, error) {
	if !fastEligible(req) {
		return t.fallback.RoundTrip(req)
	}
	addr := CanonicalAddr(req.URL)
	key := req.URL.Scheme + "://" + addr
	for attempt := 0; ; attempt++ {
		fc, reused := t.get(key)
		if fc == nil {
			var err error
			if fc, err = t.dialConn(req.Context(), req.URL, addr, key); err != nil {
				return nil, err
			}
		}
		resp, err := t.send(fc, req)
		if err == nil {
			return resp, nil
		}
		fc.conn.Close()
		// A kept-alive connection the server closed while it was idle
		// fails before any byte of an answer; the request is safe to send
		// again.
		if !reused || attempt > 0 || fc.rc.n > 0 || req.Context().Err() != nil || !staleConnErr(err) {
			return nil, err
		}
	}
}

// fastEligible: safe to send again on a fresh connection, nothing to stream
// out, no protocol switch.
func fastEligible(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
	default:
		return false
	}
	return (req.Body == nil || req.Body == http.NoBody) && req.ContentLength == 0 &&
		(req.URL.Scheme == "https" || req.URL.Scheme == "http") &&
		req.Header.Get("Upgrade") == "" && !req.Close
}

// staleConnErr: the connection failed as one the server closed does, not
// by a timeout.
func staleConnErr(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	var op *net.OpError
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.As(err, &op) && (op.Op == "read" || op.Op == "write")
}

// countingReader counts what it reads and, while limit is set (a
// response head is being read), refuses to read past it.
type countingReader struct {
	r     io.Reader
	n     int
	limit int
}

// MaxResponseHeaderBytes bounds an upstream's response head on every
// HTTP/1.1 connection (fast path and http.Transport alike).
const MaxResponseHeaderBytes = 1 << 20

// ErrResponseHeaderTooLarge: an upstream's response head exceeded
// MaxResponseHeaderBytes.
var ErrResponseHeaderTooLarge = errors.New("response header exceeds 1 MiB")

func (c *countingReader) Read(p []byte) (int, error) {
	if c.limit > 0 {
		if c.n >= c.limit {
			return 0, ErrResponseHeaderTooLarge
		}
		p = p[:min(len(p), c.limit-c.n)]
	}
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func (t *h1Fast) send(fc *fastConn, req *http.Request) (*http.Response, error) {
	fc.rc.n = 0
	fc.rc.limit = MaxResponseHeaderBytes + fc.br.Size() // the head, and what the buffer takes of the body
	defer func() { fc.rc.limit = 0 }()
	stop := context.AfterFunc(req.Context(), func() { fc.conn.SetDeadline(aLongTimeAgo) })
	if err := req.Write(fc.bw); err != nil {
		stop()
		return nil, err
	}
	if err := fc.bw.Flush(); err != nil {
		stop()
		return nil, err
	}
	if d := t.fallback.ResponseHeaderTimeout; d > 0 {
		fc.conn.SetReadDeadline(time.Now().Add(d))
	}
	var resp *http.Response
	framingOK := true
	for {
		// What ReadResponse drops (a Content-Length that chunked coding
		// overrides) is looked at first, in the bytes already buffered.
		head := peekHead(fc.br)
		var err error
		resp, err = http.ReadResponse(fc.br, req)
		if err != nil {
			stop()
			if ctxErr := req.Context().Err(); ctxErr != nil {
				return nil, ctxErr
			}
			return nil, err
		}
		framingOK = framingOK && head.reusable(resp)
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		// 1xx informational answers are skipped, as http.Transport does
		// for 100 Continue; the final answer follows on the connection.
	}
	if t.fallback.ResponseHeaderTimeout > 0 {
		fc.conn.SetReadDeadline(time.Time{})
	}
	reusable := !resp.Close && resp.StatusCode != http.StatusSwitchingProtocols && framingOK
	resp.Body = &fastBody{ReadCloser: resp.Body, t: t, fc: fc, stop: stop, reusable: reusable, eof: resp.Body == http.NoBody}
	return resp, nil
}

// fastBody returns its connection to the pool once the body has been read
// to its end (and closed), and closes it if the body is abandoned early.
type fastBody struct {
	io.ReadCloser
	t        *h1Fast
	fc       *fastConn
	stop     func() bool
	reusable bool
	eof      bool
	done     bool
}

func (b *fastBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, errors.New("read on a closed body")
	}
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *fastBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	err := b.ReadCloser.Close()
	if !b.stop() { // the request's context ended: the deadline is poisoned
		b.fc.conn.Close()
		return err
	}
	if b.eof && b.reusable && b.fc.clean() {
		b.t.put(b.fc)
	} else {
		b.fc.conn.Close()
	}
	return err
}

var aLongTimeAgo = time.Unix(1, 0)

// get takes the most recently used idle connection to key that is still
// quiet (nothing arrived while it sat in the pool); the look at its
// socket, a system call, is made outside the pool's lock.
func (t *h1Fast) get(key string) (*fastConn, bool) {
	for {
		fc := t.pop(key)
		if fc == nil {
			return nil, false
		}
		if fc.quiet() {
			return fc, true
		}
		fc.conn.Close()
	}
}

// pop takes the most recently used idle connection to key that has not
// expired, closing the expired ones it passes.
func (t *h1Fast) pop(key string) *fastConn {
	t.mu.Lock()
	defer t.mu.Unlock()
	conns := t.idle[key]
	for len(conns) > 0 {
		fc := conns[len(conns)-1]
		conns = conns[:len(conns)-1]
		if time.Since(fc.idleAt) > t.fallback.IdleConnTimeout {
			fc.conn.Close()
			continue
		}
		t.idle[key] = conns
		return fc
	}
	delete(t.idle, key)
	return nil
}

func (t *h1Fast) put(fc *fastConn) {
	fc.idleAt = time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.idle == nil {
		t.idle = map[string][]*fastConn{}
	}
	if len(t.idle[fc.key]) >= t.fallback.MaxIdleConnsPerHost {
		fc.conn.Close()
		return
	}
	t.idle[fc.key] = append(t.idle[fc.key], fc)
	if t.sweep == nil {
		t.sweep = time.AfterFunc(t.fallback.IdleConnTimeout, t.closeExpired)
	}
}

// closeExpired closes the connections idle for longer than idleTimeout, and
// comes back while any remain.
func (t *h1Fast) closeExpired() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweep = nil
	var oldest time.Time
	for key, conns := range t.idle {
		kept := conns[:0]
		for _, fc := range conns {
			if time.Since(fc.idleAt) >= t.fallback.IdleConnTimeout {
				fc.conn.Close()
				continue
			}
			if oldest.IsZero() || fc.idleAt.Before(oldest) {
				oldest = fc.idleAt
			}
			kept = append(kept, fc)
		}
		if len(kept) == 0 {
			delete(t.idle, key)
		} else {
			t.idle[key] = kept
		}
	}
	if !oldest.IsZero() {
		t.sweep = time.AfterFunc(time.Until(oldest.Add(t.fallback.IdleConnTimeout)), t.closeExpired)
	}
}

// CloseIdleConnections closes the pooled connections and the fallback's.
func (t *h1Fast) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	if t.sweep != nil {
		t.sweep.Stop()
		t.sweep = nil
	}
	t.mu.Unlock()
	for _, conns := range idle {
		for _, fc := range conns {
			fc.conn.Close()
		}
	}
	t.fallback.CloseIdleConnections()
}

func (t *h1Fast) dialConn(ctx context.Context, u *url.URL, addr, key string) (*fastConn, error) {
	conn, err := t.fallback.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	fc := &fastConn{key: key, raw: netwait.Wrap(conn, nil)}
	fc.conn = fc.raw
	if u.Scheme == "https" {
		fc.rec = &recordConn{Conn: fc.raw}
		if fc.conn, err = clientTLS(ctx, fc.rec, t.fallback, u.Hostname(), "http/1.1"); err != nil {
			return nil, err
		}
	}
	fc.rc = &countingReader{r: fc.conn}
	fc.br, fc.bw = bufio.NewReaderSize(fc.rc, 4<<10), bufio.NewWriterSize(fc.conn, 4<<10)
	return fc, nil
}

// CanonicalAddr is u's host:port, with the scheme's default port when u
// names none.
func CanonicalAddr(u *url.URL) string {
	port := u.Port()
	if port != "" && u.Host[0] != '[' {
		return u.Host // already host:port: no new string per request
	}
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	return net.JoinHostPort(u.Hostname(), port)
}
