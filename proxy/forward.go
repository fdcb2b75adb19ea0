package proxy

import (
	"context"
	"crypto/tls"
	"errors"
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
	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/h2relay"
	"github.com/authproxy/authproxy/internal/netwait"
	"github.com/authproxy/authproxy/metrics"
	"github.com/authproxy/authproxy/route"
	"github.com/authproxy/authproxy/transport"
)

// forward is the listener HTTP_PROXY/HTTPS_PROXY point at. goproxy is its
// front door: it parses CONNECT and absolute-URI requests and tunnels what
// is not intercepted. A CONNECT to a host a route matches is taken over
// (goproxy's hijack): the proxy does the TLS handshake itself with a leaf
// from the local CA and hands the connection, with its target fixed to the
// CONNECT host, to one of the two engines every listener has: the frame
// relay when the client negotiated h2, else its own HTTP/1.1 http.Server,
// whose requests take the same ReverseProxy path as the sidecar's. Both
// apply the listener's limits and drain gracefully on shutdown.
type forward struct {
	core   *core
	table  atomic.Pointer[route.Table[*routeRT]] // swapped whole by a reload
	tunnel bool
	ca     *ca.CA
	gp     *goproxy.ProxyHttpServer
	log    *slog.Logger

	handshakeTimeout time.Duration
	idleTimeout      time.Duration

	metrics  *metrics.Metrics
	name     string         // the listener's
	dest     *destPolicy    // where tunnels and untouched forwards may go
	relay    *h2relay.Relay // serves intercepted connections that negotiated h2
	mitm     *http.Server   // serves intercepted HTTP/1.1 connections
	mitmLn   *connQueue     // hands them to mitm once their handshake is done
	targets  sync.Map       // *tls.Conn -> *interception, while mitm serves it
	conns    connSet        // client connections and tunnel upstream connections
	draining atomic.Bool

	handshakeLog *sampledLog // a client's failed handshake with the proxy
}

// interception is the CONNECT target of one intercepted connection.
type interception struct {
	target, hostname, port string
	auth, remote           string   // the CONNECT's Proxy-Authorization and source: the tunnel's caller
	names                  []string // the certificate identities of the CONNECT's connection (TLS listeners)
}

type interceptionKey struct{}

func newForward(c *core, table *route.Table[*routeRT], tunnel bool, dest *destPolicy, authority *ca.CA, t config.Timeouts, log *slog.Logger) *forward {
	f := &forward{
		core: c, tunnel: tunnel, dest: dest, ca: authority, log: log,
		handshakeTimeout: t.TLSHandshake.D(10 * time.Second), idleTimeout: t.Idle.D(120 * time.Second),
		mitmLn: newConnQueue(), handshakeLog: newSampledLog(),
	}
	f.table.Store(table)
	gp := goproxy.NewProxyHttpServer()
	gp.KeepAcceptEncoding = true // bodies pass through untouched
	gp.Logger = goproxyLogger{log}
	gp.Tr = c.up.TLS // unused (intercepted requests never reach goproxy), but never env-proxied
	gp.ConnectDial = nil
	gp.ConnectDialWithReq = f.dialTunnel
	gp.NonproxyHandler = http.HandlerFunc(f.notAProxyRequest)
	gp.OnRequest().HandleConnectFunc(f.handleConnect)
	f.gp = gp
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	f.mitm = &http.Server{
		Handler:           http.HandlerFunc(f.serveIntercepted),
		Protocols:         protocols,
		MaxHeaderBytes:    maxHeaderBytes,
		ReadHeaderTimeout: t.ReadHeader.D(10 * time.Second),
		IdleTimeout:       f.idleTimeout,
		ErrorLog:          stdLogger(log),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if it, ok := f.targets.Load(c); ok {
				return context.WithValue(ctx, interceptionKey{}, it)
			}
			return ctx
		},
		ConnState: func(c net.Conn, st http.ConnState) {
			if st == http.StateClosed || st == http.StateHijacked {
				f.targets.Delete(c)
			}
		},
	}
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
	rt, params, err := matchRoute(f.table.Load(), hostname, port, r.Method, r.URL.EscapedPath())
	if err == nil {
		x.client, err = f.core.clients.Load().check(rt, r.Header.Get("Proxy-Authorization"), r.RemoteAddr, peerNames(r.Context()), f.core.attempts)
		if rt != nil {
			x.route = rt
			noteExchange(r, x)
		}
	}
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
	} else if !f.table.Load().MatchesHost(hostname, port) { // a host no route names: the policy decides
		addr, err := f.dest.check(r.Context(), hostname, port)
		if err != nil {
			f.log.Warn("untouched forward refused", "target", net.JoinHostPort(hostname, port), "reason", err)
			writeError(w, r, err)
			return
		}
		r = r.WithContext(transport.WithDialAddr(r.Context(), transport.CanonicalAddr(r.URL), addr))
	}
	f.core.serve(w, r, x)
}

// clientAlert is the TLS alert the client sent to end a handshake ("unknown
// certificate authority", "bad certificate"), or "none" when it sent none
// (it closed the connection, timed out, or sent something else). An
// OpenSSL client (curl, Python) that refuses the certificate during a TLS
// 1.3 handshake sends its alert in the clear, where the TLS layer expects
// an encrypted record and reports "bad record MAC": the alert is read from
// the handshake's last bytes, a plaintext alert record (RFC 8446 §5.1:
// type 21, version, length 2, level, description).
func clientAlert(err error, tail []byte) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" && op.Err != nil {
		return strings.TrimPrefix(op.Err.Error(), "tls: ")
	}
	if n := len(tail); n >= 7 {
		r := tail[n-7:]
		if r[0] == 21 && r[1] == 3 && r[2] >= 1 && r[2] <= 4 && r[3] == 0 && r[4] == 2 {
			return strings.TrimPrefix(tls.AlertError(r[6]).Error(), "tls: ") + " (sent in the clear)"
		}
	}
	return "none"
}

// lastBytes keeps the last bytes written to it (an io.Writer that cannot
// fail).
type lastBytes struct {
	b [7]byte
	n int
}

func (l *lastBytes) Write(p []byte) (int, error) {
	if len(p) >= len(l.b) {
		l.n = copy(l.b[:], p[len(p)-len(l.b):])
		return len(p), nil
	}
	if keep := len(l.b) - len(p); l.n > keep {
		copy(l.b[:], l.b[l.n-keep:l.n])
		l.n = keep
	}
	l.n += copy(l.b[l.n:], p)
	return len(p), nil
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
	if f.table.Load().MatchesHost(hostname, port) {
		if f.draining.Load() {
			pctx.Resp = refusal(pctx.Req, http.StatusServiceUnavailable, "authproxy: shutting down\n")
			return goproxy.RejectConnect, host
		}
		it := &interception{target: target, hostname: hostname, port: port,
			auth: pctx.Req.Header.Get("Proxy-Authorization"), remote: pctx.Req.RemoteAddr, names: peerNames(pctx.Req.Context())}
		if it.auth != "" && f.core.attempts.throttled(it.remote) {
			f.metrics.Connect(f.name, "refused")
			pctx.Resp = refusal(pctx.Req, http.StatusTooManyRequests, "authproxy: too many failed proxy authentications from this address; try later\n")
			return goproxy.RejectConnect, host
		}
		if c := f.core.clients.Load().identify(it.auth, it.remote, it.names); c.bad {
			// Wrong credentials are refused at once, whatever the route.
			f.metrics.Connect(f.name, "refused")
			f.core.attempts.failed(it.remote, c.claimed, "")
			pctx.Resp = refusal(pctx.Req, http.StatusProxyAuthRequired, "authproxy: proxy authentication required\n")
			pctx.Resp.Header.Set("Proxy-Authenticate", `Basic realm="authproxy"`)
			return goproxy.RejectConnect, host
		}
		return &goproxy.ConnectAction{Action: goproxy.ConnectHijack, Hijack: func(_ *http.Request, client net.Conn, _ *goproxy.ProxyCtx) {
			f.intercept(client, it)
		}}, target
	}
	if f.tunnel {
		addr, err := f.dest.check(pctx.Req.Context(), hostname, port)
		if err != nil {
			f.metrics.Connect(f.name, "refused")
			f.log.Warn("CONNECT refused", "target", target, "reason", err)
			pctx.Resp = refusal(pctx.Req, http.StatusForbidden, "authproxy: CONNECT refused: "+strings.TrimPrefix(err.Error(), ErrDestinationRefused.Error()+": ")+"\n")
			return goproxy.RejectConnect, host
		}
		f.metrics.Connect(f.name, "tunnelled")
		f.log.Info("CONNECT tunnelled", "target", target, "address", addr)
		return &goproxy.ConnectAction{Action: goproxy.ConnectAccept}, addr // the address checked is the one dialled
	}
	f.metrics.Connect(f.name, "refused")
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

// intercept answers the CONNECT, does the TLS handshake as the target
// (within the handshake timeout) and hands the connection to f.mitm.
func (f *forward) intercept(client net.Conn, it *interception) {
	if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		_ = client.Close()
		return
	}
	cert, err := f.ca.Leaf(it.hostname)
	if err != nil {
		f.log.Error("cannot mint an interception certificate", "host", it.hostname, "err", err)
		_ = client.Close()
		return
	}
	// netwait: if it negotiates h2, the relay reads it.
	var sni string
	var tail lastBytes // what the client sent last, while the handshake runs
	nc := netwait.Wrap(client, nil)
	nc.SetRecorder(&tail)
	tc := tls.Server(nc, &tls.Config{
		Certificates: []tls.Certificate{*cert},
		NextProtos:   []string{"h2", "http/1.1"},
		MinVersion:   tls.VersionTLS12,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			sni = hello.ServerName
			return nil, nil
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), f.handshakeTimeout)
	err = tc.HandshakeContext(ctx)
	cancel()
	nc.SetRecorder(nil)
	if err != nil {
		// Most often a client that does not trust the CA, or whose CA
		// bundle holds an old one: say so where an operator looks.
		f.metrics.Connect(f.name, "handshake_failed")
		f.handshakeLog.log(f.log, slog.LevelWarn, "intercepted connection: the client's TLS handshake with the proxy failed (does it trust the interception CA?)",
			"target", it.target, "client", client.RemoteAddr().String(), "sni", sni, "alert", clientAlert(err, tail.b[:tail.n]), "err", err)
		_ = client.Close()
		return
	}
	f.metrics.Connect(f.name, "intercepted")
	alpn := tc.ConnectionState().NegotiatedProtocol
	if alpn == "" {
		alpn = "http/1.1"
	}
	f.log.Info("CONNECT intercepted", "target", it.target, "protocol", alpn)
	if tc.ConnectionState().NegotiatedProtocol == "h2" {
		f.relay.ServeConnWith(tc, it)
		return
	}
	f.targets.Store(tc, it)
	if !f.mitmLn.push(tc) {
		f.targets.Delete(tc)
		_ = tc.Close()
	}
}

// serveIntercepted serves one request of an intercepted HTTP/1.1
// connection.
func (f *forward) serveIntercepted(w http.ResponseWriter, r *http.Request) {
	x, err := f.interceptedExchange(r, r.Context().Value(interceptionKey{}))
	if err != nil {
		if x != nil {
			noteExchange(r, x)
		}
		f.core.logFailure(r, err)
		writeError(w, r, err)
		return
	}
	f.core.serve(w, r, x)
}

// interceptedExchange matches a request of an intercepted connection
// (it: its *interception) to a route: it goes to the CONNECT target,
// whatever it names (another host gets 421).
func (f *forward) interceptedExchange(r *http.Request, conn any) (*exchange, error) {
	it, ok := conn.(*interception)
	if !ok {
		return nil, errors.New("not an intercepted connection")
	}
	if h, p := splitHost(r.Host, it.port); h != it.hostname || p != it.port {
		return nil, ErrMisdirected
	}
	rt, params, err := matchRoute(f.table.Load(), it.hostname, it.port, r.Method, r.URL.EscapedPath())
	if err != nil {
		return nil, err
	}
	// The CONNECT's identity, against the rules in force.
	client, aerr := f.core.clients.Load().check(rt, it.auth, it.remote, it.names, f.core.attempts)
	if rt == nil && !f.tunnel {
		return nil, ErrNoRoute
	}
	return &exchange{route: rt, params: params, target: &url.URL{Scheme: "https", Host: it.target}, clientHost: it.target, client: client}, aerr
}

// dialTunnel dials the target of a tunnelled CONNECT (never through an
// environment proxy), closing the tunnel after idleTimeout without traffic.
func (f *forward) dialTunnel(req *http.Request, network, addr string) (net.Conn, error) {
	c, err := f.core.up.Dial(req.Context(), network, addr)
	if err != nil {
		return nil, err
	}
	tc := &tunnelConn{Conn: netwait.Wrap(c, nil), idle: f.idleTimeout, set: &f.conns}
	tc.touch()
	tc.timer = time.AfterFunc(f.idleTimeout, tc.check)
	if !f.conns.add(tc) {
		tc.Close()
		return nil, fmt.Errorf("shutting down")
	}
	return tc, nil
}

// drain refuses new CONNECTs, lets intercepted requests finish until ctx
// ends (closing idle connections at once, sending GOAWAY on HTTP/2 ones),
// then closes what is left, tunnels included.
func (f *forward) drain(ctx context.Context) {
	f.draining.Store(true)
	var wg sync.WaitGroup
	wg.Go(func() {
		if f.relay.Shutdown(ctx) != nil {
			f.log.Warn("intercepted HTTP/2 streams still in flight at the drain bound; closing them")
		}
	})
	if err := f.mitm.Shutdown(ctx); err != nil {
		f.log.Warn("intercepted requests still in flight at the drain bound; closing them")
		_ = f.mitm.Close()
	}
	wg.Wait()
	f.conns.closeAll()
}

// connQueue is the listener of f.mitm: connections are handed to it once
// intercepted, rather than accepted from a socket.
type connQueue struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnQueue() *connQueue {
	return &connQueue{ch: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c to Accept; false once the queue is closed.
func (q *connQueue) push(c net.Conn) bool {
	select {
	case q.ch <- c:
		return true
	case <-q.done:
		return false
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return interceptedAddr{} }

type interceptedAddr struct{}

func (interceptedAddr) Network() string { return "intercepted" }
func (interceptedAddr) String() string  { return "intercepted" }

// goproxyLogger sends goproxy's own messages to the debug log.
type goproxyLogger struct{ log *slog.Logger }

func (l goproxyLogger) Printf(format string, v ...any) {
	l.log.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)), "component", "goproxy")
}
