package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/authproxy/authproxy/ca"
	"github.com/authproxy/authproxy/proxy/route"
)

// forward is the listener HTTP_PROXY/HTTPS_PROXY point at. goproxy handles
// CONNECT: targets that a route matches are intercepted with a leaf
// certificate from the local CA (HTTP/2 and HTTP/1.1 by ALPN) and their
// requests go through core.send; other targets are tunnelled or refused.
// Absolute-URI (plain HTTP) requests are served by the same ReverseProxy
// path as the sidecar, so they stream and fail the same way.
type forward struct {
	core   *core
	table  *route.Table[*routeRT]
	tunnel bool
	ca     *ca.CA
	gp     *goproxy.ProxyHttpServer
	log    *slog.Logger

	handshakeTimeout time.Duration
	idleTimeout      time.Duration

	conns    connSet  // client connections and tunnel upstream connections
	active   activity // intercepted requests in flight
	draining atomic.Bool
}

func newForward(c *core, table *route.Table[*routeRT], tunnel bool, authority *ca.CA, handshake, idle time.Duration, log *slog.Logger) *forward {
	f := &forward{
		core: c, table: table, tunnel: tunnel, ca: authority, log: log,
		handshakeTimeout: handshake, idleTimeout: idle,
	}
	gp := goproxy.NewProxyHttpServer()
	gp.AllowHTTP2 = true
	gp.KeepAcceptEncoding = true // bodies pass through untouched
	gp.Logger = goproxyLogger{log}
	gp.Tr = c.up.TLS // unused (every interception has its own RoundTripper), but never env-proxied
	gp.ConnectDial = nil
	gp.ConnectDialWithReq = f.dialTunnel
	gp.NonproxyHandler = http.HandlerFunc(f.notAProxyRequest)
	gp.OnRequest().HandleConnectFunc(f.handleConnect)
	f.gp = gp
	return f
}

func (f *forward) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodConnect:
		f.gp.ServeHTTP(w, r)
	case r.URL.IsAbs():
		f.serveAbsolute(w, r)
	default:
		f.notAProxyRequest(w, r)
	}
}

func (f *forward) notAProxyRequest(w http.ResponseWriter, _ *http.Request) {
	http.Error(w, "authproxy: this is a forward proxy (HTTP_PROXY/HTTPS_PROXY): send CONNECT or absolute-URI requests", http.StatusBadRequest)
}

// serveAbsolute forwards a request sent with an absolute URI (plain HTTP
// through HTTP_PROXY, or the rare https:// URI without CONNECT).
func (f *forward) serveAbsolute(w http.ResponseWriter, r *http.Request) {
	scheme := r.URL.Scheme
	if scheme != "http" && scheme != "https" {
		http.Error(w, "authproxy: only http and https URLs are proxied", http.StatusBadRequest)
		return
	}
	hostname, port := splitHost(r.URL.Host, defaultPort(scheme))
	target := &url.URL{Scheme: scheme, Host: r.URL.Host}
	x := &exchange{target: target, clientHost: r.Host}
	rt, params, err := matchRoute(f.table, hostname, port, r.Method, r.URL.EscapedPath())
	if err != nil {
		f.core.logFailure(r, err)
		writeError(w, r, err)
		return
	}
	if rt != nil {
		x.route, x.params = rt, params
		if scheme == "http" && rt.tlsUpgrade {
			target.Scheme = "https"
			if port == "80" {
				target.Host = net.JoinHostPort(hostname, "443")
			}
		}
	} else if !f.tunnel {
		f.core.logFailure(r, ErrNoRoute)
		writeError(w, r, ErrNoRoute)
		return
	}
	f.core.serve(w, r, x)
}

func defaultPort(scheme string) string {
	if scheme == "http" {
		return "80"
	}
	return "443"
}

// handleConnect decides what to do with a CONNECT: intercept, tunnel or refuse.
func (f *forward) handleConnect(host string, pctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
	hostname, port := splitHost(host, "443")
	target := net.JoinHostPort(hostname, port)
	if f.table.MatchesHost(hostname, port) {
		conn, _ := pctx.Req.Context().Value(connKey{}).(*trackedConn)
		if conn == nil || f.draining.Load() {
			pctx.Resp = refusal(pctx.Req, http.StatusServiceUnavailable, "authproxy: shutting down\n")
			return goproxy.RejectConnect, host
		}
		it := f.intercept(conn, target, hostname, port)
		pctx.UserData = it
		pctx.RoundTripper = goproxy.RoundTripperFunc(f.roundTripIntercepted)
		return &goproxy.ConnectAction{Action: goproxy.ConnectMitm, TLSConfig: it.tlsConfig}, target
	}
	if f.tunnel {
		return &goproxy.ConnectAction{Action: goproxy.ConnectAccept}, target
	}
	f.log.Info("CONNECT refused: no route matches the target", "target", target)
	pctx.Resp = refusal(pctx.Req, http.StatusForbidden,
		fmt.Sprintf("authproxy: CONNECT to %s refused: no route matches this host\n", target))
	return goproxy.RejectConnect, host
}

func refusal(r *http.Request, status int, body string) *http.Response {
	return &http.Response{
		StatusCode: status, Status: fmt.Sprintf("%d %s", status, http.StatusText(status)),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {"text/plain; charset=utf-8"}},
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
		Close:         true,
		Request:       r,
	}
}

// roundTripIntercepted sends one request of an intercepted connection. It
// never returns an error: failures become responses (gRPC Trailers-Only
// for gRPC requests), since goproxy would otherwise answer with raw text.
func (f *forward) roundTripIntercepted(req *http.Request, pctx *goproxy.ProxyCtx) (*http.Response, error) {
	it := pctx.UserData.(*interception)
	it.begin()
	resp := f.interceptedResponse(req, it)
	if resp.Body == nil {
		resp.Body = http.NoBody
	}
	resp.Body = onCloseBody(resp.Body, it.end)
	return resp, nil
}

func (f *forward) interceptedResponse(req *http.Request, it *interception) *http.Response {
	if req.Host != "" {
		if h, p := splitHost(req.Host, it.port); h != it.hostname || p != it.port {
			f.core.logFailure(req, ErrMisdirected)
			return errorResponse(req, ErrMisdirected)
		}
	}
	x := &exchange{clientHost: it.target}
	rt, params, err := matchRoute(f.table, it.hostname, it.port, req.Method, req.URL.EscapedPath())
	if err != nil {
		f.core.logFailure(req, err)
		return errorResponse(req, err)
	}
	if rt != nil {
		x.route, x.params = rt, params
	} else if !f.tunnel {
		f.core.logFailure(req, ErrNoRoute)
		return errorResponse(req, ErrNoRoute)
	}
	req.URL.Host = it.target // the CONNECT target, whatever :authority said
	req.RequestURI = ""
	resp, err := f.core.send(req, x)
	if err != nil {
		if req.Context().Err() == nil {
			f.core.logFailure(req, err)
		}
		return errorResponse(req, err)
	}
	return resp
}

// dialTunnel dials the target of a tunnelled CONNECT (never through an
// environment proxy), closing the tunnel after idleTimeout without traffic.
func (f *forward) dialTunnel(req *http.Request, network, addr string) (net.Conn, error) {
	c, err := f.core.up.Dial(req.Context(), network, addr)
	if err != nil {
		return nil, err
	}
	tc := &tunnelConn{Conn: c, idle: f.idleTimeout, set: &f.conns}
	tc.touch()
	tc.timer = time.AfterFunc(f.idleTimeout, tc.check)
	if !f.conns.add(tc) {
		tc.Close()
		return nil, fmt.Errorf("shutting down")
	}
	return tc, nil
}

// drain waits for intercepted requests to finish (new CONNECTs are refused
// and idle intercepted connections are closed), then closes what is left.
func (f *forward) drain(ctx context.Context) {
	f.draining.Store(true)
	f.conns.each(func(c io.Closer) {
		if tc, ok := c.(*trackedConn); ok {
			if it := tc.it.Load(); it != nil {
				it.closeSoonIfIdle()
			}
		}
	})
	if f.active.wait(ctx) == nil {
		select { // the last responses' final frames, as in interception.end
		case <-time.After(drainLinger):
		case <-ctx.Done():
		}
	}
	f.conns.closeAll()
}

// interception is the state of one intercepted client connection: its
// CONNECT target, requests in flight, and one timer that bounds first the
// TLS handshake and then each idle period.
type interception struct {
	f                      *forward
	conn                   *trackedConn
	target, hostname, port string

	mu     sync.Mutex
	active int
	timer  *time.Timer
}

func (f *forward) intercept(conn *trackedConn, target, hostname, port string) *interception {
	it := &interception{f: f, conn: conn, target: target, hostname: hostname, port: port}
	it.timer = time.AfterFunc(f.handshakeTimeout, it.closeIfIdle)
	conn.it.Store(it)
	return it
}

func (it *interception) tlsConfig(string, *goproxy.ProxyCtx) (*tls.Config, error) {
	cert, err := it.f.ca.Leaf(it.hostname)
	if err != nil {
		it.f.log.Error("cannot mint an interception certificate", "host", it.hostname, "err", err)
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{*cert},
		NextProtos:   []string{"h2", "http/1.1"},
		MinVersion:   tls.VersionTLS12,
		// Runs as the handshake completes: from here the idle bound applies.
		VerifyConnection: func(tls.ConnectionState) error {
			it.mu.Lock()
			if it.active == 0 {
				it.timer.Reset(it.f.idleTimeout)
			}
			it.mu.Unlock()
			return nil
		},
	}, nil
}

func (it *interception) begin() {
	it.f.active.start()
	it.mu.Lock()
	it.active++
	it.timer.Stop()
	it.mu.Unlock()
}

func (it *interception) end() {
	it.mu.Lock()
	it.active--
	if it.active == 0 {
		if it.f.draining.Load() {
			it.timer.Reset(drainLinger)
		} else {
			it.timer.Reset(it.f.idleTimeout)
		}
	}
	it.mu.Unlock()
	it.f.active.done()
}

// drainLinger is how long an intercepted connection stays open during
// shutdown after its last request ends. goproxy's HTTP/2 handler closes the
// response body just before it returns, and the final frames (END_STREAM,
// trailers) are written after that; goproxy's embedded http2.Server has no
// graceful shutdown (GOAWAY) hook, so the proxy lets those frames out
// before closing.
const drainLinger = 200 * time.Millisecond

// closeSoonIfIdle arms the close of an idle connection during shutdown.
func (it *interception) closeSoonIfIdle() {
	it.mu.Lock()
	if it.active == 0 {
		it.timer.Reset(drainLinger)
	}
	it.mu.Unlock()
}

func (it *interception) closeIfIdle() {
	it.mu.Lock()
	idle := it.active == 0
	it.mu.Unlock()
	if idle {
		it.conn.Close()
	}
}

// onCloseBody calls fn once when the body is closed, keeping io.Writer for
// bodies that have it (101 Switching Protocols).
func onCloseBody(b io.ReadCloser, fn func()) io.ReadCloser {
	var once atomic.Bool
	done := func() {
		if once.CompareAndSwap(false, true) {
			fn()
		}
	}
	if rwc, ok := b.(io.ReadWriteCloser); ok {
		return &notifyRWC{ReadWriteCloser: rwc, done: done}
	}
	return &notifyRC{ReadCloser: b, done: done}
}

type notifyRC struct {
	io.ReadCloser
	done func()
}

func (b *notifyRC) Close() error { err := b.ReadCloser.Close(); b.done(); return err }

type notifyRWC struct {
	io.ReadWriteCloser
	done func()
}

func (b *notifyRWC) Close() error { err := b.ReadWriteCloser.Close(); b.done(); return err }

// goproxyLogger sends goproxy's own messages to the debug log.
type goproxyLogger struct{ log *slog.Logger }

func (l goproxyLogger) Printf(format string, v ...any) {
	l.log.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)), "component", "goproxy")
}
