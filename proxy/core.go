package proxy

import (
	"context"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/route"
	"github.com/authproxy/authproxy/transport"
)

// routeRT is a route ready to serve: its injector and where it sends.
type routeRT struct {
	name           string
	injector       injectors.Injector
	observer       injectors.ResponseObserver // nil unless the injector observes responses
	upstream       *url.URL                   // sidecar target (scheme http for h2c); nil on forward listeners
	h2c            bool
	protocol       string // config.Protocol*: upstream protocol over TLS and plain HTTP
	allowPlaintext bool
	tlsUpgrade     bool
	strip          []string // canonical names of client headers to remove
	stripLower     []string // the same in lower case, as HTTP/2 carries them
}

func newRouteRT(ref config.RouteRef, inj injectors.Injector) *routeRT {
	r := ref.Route
	rt := &routeRT{
		name:           r.Name,
		injector:       inj,
		allowPlaintext: r.AllowPlaintext,
		tlsUpgrade:     r.TLSUpgrade,
		protocol:       r.UpstreamProtocol,
	}
	rt.observer, _ = inj.(injectors.ResponseObserver)
	if ref.Upstream != nil {
		u := *ref.Upstream
		if u.Scheme == "h2c" {
			rt.h2c = true
			u.Scheme = "http"
		}
		rt.upstream = &u
	}
	seen := map[string]bool{}
	for _, h := range append(append([]string{"Authorization", "Proxy-Authorization"}, r.StripHeaders...), inj.Headers()...) {
		c := http.CanonicalHeaderKey(h)
		if !seen[c] {
			seen[c] = true
			rt.strip = append(rt.strip, c)
			rt.stripLower = append(rt.stripLower, strings.ToLower(c))
		}
	}
	return rt
}

// exchange is one request on its way upstream: the matched route (nil when
// an unmatched request passes through untouched) and where it goes.
type exchange struct {
	route  *routeRT
	params route.Params
	target *url.URL // scheme and host to send to (sidecar: also base path)
	join   bool     // join target's path with the request path (sidecar)
	h2c    bool

	clientHost   string // the Host the client sent
	sidecar      bool
	listenerAddr string
	inBody       io.Closer   // the client's request body (ReverseProxy hands the transport a copy that does not close it)
	inTrailer    http.Header // the client's request trailers, filled in as its body ends (ReverseProxy's copy is not)
}

type exchangeKey struct{}

// core sends requests upstream: it strips the client's credentials, calls
// the injector, and round-trips. It is shared by every listener.
type core struct {
	up        *transport.Set
	log       *slog.Logger
	rp        *httputil.ReverseProxy
	maxReplay int64 // retry.max_body_bytes
}

func newCore(up *transport.Set, logger *slog.Logger) *core {
	c := &core{up: up, log: logger}
	c.rp = &httputil.ReverseProxy{
		Rewrite:      c.rewrite,
		Transport:    roundTripperFunc(c.roundTrip),
		ErrorHandler: c.errorHandler,
		BufferPool:   bufferPool{},
		// Mid-body failures (a client cancelling a stream) are routine.
		ErrorLog: log.New(slogWriter{logger.With("component", "reverseproxy")}, "", 0),
	}
	return c
}

// serve forwards r as described by x, through httputil.ReverseProxy.
func (c *core) serve(w http.ResponseWriter, r *http.Request, x *exchange) {
	if r.Body != nil && r.Body != http.NoBody {
		x.inBody = r.Body
	}
	x.inTrailer = r.Trailer
	c.rp.ServeHTTP(asSent{w}, r.WithContext(context.WithValue(r.Context(), exchangeKey{}, x)))
}

func (c *core) rewrite(pr *httputil.ProxyRequest) {
	x := pr.In.Context().Value(exchangeKey{}).(*exchange)
	if x.join {
		pr.SetURL(x.target)
		return
	}
	pr.Out.URL.Scheme = x.target.Scheme
	pr.Out.URL.Host = x.target.Host
}

func (c *core) roundTrip(out *http.Request) (*http.Response, error) {
	return c.send(out, out.Context().Value(exchangeKey{}).(*exchange))
}

// send strips, injects and round-trips out, which the caller owns. It never
// sends a request whose injector failed.
func (c *core) send(out *http.Request, x *exchange) (*http.Response, error) {
	rt := x.route
	ireq, err := prepare(out, x)
	if err != nil {
		return nil, err
	}
	tr := c.transport(out, x)
	var rec replayer
	if rt != nil && rt.observer != nil && out.Body != nil && out.Body != http.NoBody {
		if rec, err = replayable(out, c.maxReplay); err != nil {
			return nil, &routeError{route: rt.name, err: err}
		}
	}
	inBody := x.inBody
	if inBody == nil && out.Body != nil && out.Body != http.NoBody {
		inBody = out.Body // goproxy hands over the client's request itself
	}
	resp, err := c.roundTripOnce(tr, out, rt, inBody)
	if err != nil || rt == nil || rt.observer == nil || !rt.observer.ObserveResponse(ireq, resp) {
		return resp, err
	}
	// The injector dropped a stale credential: send once more, with a fresh
	// one, if the body can be replayed; otherwise the client gets the answer.
	if out.Body != nil && out.Body != http.NoBody {
		body, ok := rec.replay()
		if !ok {
			return resp, nil
		}
		out.Body = body
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if err := rt.injector.Inject(ireq); err != nil {
		return nil, &routeError{route: rt.name, err: err}
	}
	c.log.Debug("retrying with a fresh credential", "route", rt.name, "method", out.Method, "host", out.Host, "path", out.URL.Path)
	return c.roundTripOnce(tr, out, rt, inBody)
}

// prepare strips the client's credentials from out, which the caller owns,
// and has the route's injector add its own; nil and no error for a request
// that matched no route. An error means out must not be sent.
func prepare(out *http.Request, x *exchange) (*injectors.Request, error) {
	ireq, err := strip(out, x)
	if err != nil || ireq == nil {
		return ireq, err
	}
	if err := x.route.injector.Inject(ireq); err != nil {
		return nil, &routeError{route: x.route.name, err: err}
	}
	return ireq, nil
}

// strip is prepare's first half: it removes the client's credentials
// from out (head and declared trailers) and returns the injector's view
// of the request, still without a credential.
func strip(out *http.Request, x *exchange) (*injectors.Request, error) {
	rt := x.route
	var stripHeaders []string
	if rt != nil {
		stripHeaders = rt.strip
	}
	forwardTrailers(out, x.inTrailer, stripHeaders)
	if rt == nil {
		return nil, nil
	}
	if out.URL.Scheme != "https" && !rt.allowPlaintext {
		return nil, &routeError{route: rt.name, err: ErrPlaintext}
	}
	var stripped http.Header
	for _, h := range rt.strip {
		if v, ok := out.Header[h]; ok {
			if stripped == nil {
				stripped = http.Header{}
			}
			stripped[h] = v
			delete(out.Header, h)
		}
	}
	return &injectors.Request{Request: out, Route: rt.name, Params: x.params, Stripped: stripped,
		ClientHost: x.clientHost, Sidecar: x.sidecar, ListenerAddr: x.listenerAddr}, nil
}

// forwardTrailers makes out send the trailers its client declared, less
// strip (the credential headers stripped from its head): they are copied
// from the client's (from, or out.Trailer itself when out is the client's
// request) once its body has ended, when the server has read them and
// before the transport sends them. Trailers a client did not declare are
// not sent.
func forwardTrailers(out *http.Request, from http.Header, strip []string) {
	if decl, ok := out.Header["Trailer"]; ok && len(strip) > 0 { // as the relay forwards it
		var keep []string
		for _, v := range decl {
			for name := range strings.SplitSeq(v, ",") {
				if name = strings.TrimSpace(name); name != "" && !slices.Contains(strip, http.CanonicalHeaderKey(name)) {
					keep = append(keep, name)
				}
			}
		}
		if len(keep) == 0 {
			delete(out.Header, "Trailer")
		} else {
			out.Header["Trailer"] = []string{strings.Join(keep, ", ")}
		}
	}
	if len(out.Trailer) == 0 {
		return
	}
	if from == nil {
		from = out.Trailer
	}
	to := make(http.Header, len(out.Trailer))
	for k := range out.Trailer {
		if !slices.Contains(strip, http.CanonicalHeaderKey(k)) {
			to[k] = nil
		}
	}
	out.Trailer = to
	if out.Body == nil || out.Body == http.NoBody {
		return
	}
	out.Body = &atBodyEnd{ReadCloser: out.Body, fn: func() {
		for k := range to {
			to[k] = from[k]
		}
	}}
}

// atBodyEnd calls fn once when the body returns io.EOF.
type atBodyEnd struct {
	io.ReadCloser
	fn   func()
	once sync.Once
}

func (b *atBodyEnd) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.once.Do(b.fn)
	}
	return n, err
}

// transport picks the upstream transport of the HTTP/1.1 engine: the
// keep-alive pool of HTTP/1.1 connections, net/http's HTTP/2 client for
// h2c upstreams, and its ALPN-negotiated client for routes that ask for
// upstream_protocol http2.
func (c *core) transport(_ *http.Request, x *exchange) http.RoundTripper {
	if x.h2c {
		return c.up.H2C
	}
	if x.route != nil && x.route.protocol == config.ProtocolHTTP2 {
		return c.up.TLS
	}
	return c.up.H1
}

func (c *core) roundTripOnce(tr http.RoundTripper, out *http.Request, rt *routeRT, inBody io.Closer) (*http.Response, error) {
	resp, err := tr.RoundTrip(out)
	if err != nil {
		err = &upstreamError{err: err}
		if rt != nil {
			err = &routeError{route: rt.name, err: err}
		}
		return nil, err
	}
	if inBody != nil {
		resp.Body = &endsRequest{ReadCloser: resp.Body, req: inBody}
	}
	return resp, nil
}

// endsRequest closes the request body once the response body has ended.
// When an HTTP/2 upstream finishes its response while the client is still
// sending (a gRPC server ending a bidirectional stream), closing the
// response body would otherwise block on the transport's goroutine that
// reads the request body (golang/go#80085), and the status would never
// reach the client. Once the response is complete the request body has no
// reader left anyway.
type endsRequest struct {
	io.ReadCloser
	req  io.Closer
	once sync.Once
}

func (b *endsRequest) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.once.Do(func() { _ = b.req.Close() })
	}
	return n, err
}

func (b *endsRequest) Close() error {
	b.once.Do(func() { _ = b.req.Close() })
	return b.ReadCloser.Close()
}

func (c *core) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		return // the client went away; nobody is left to answer
	}
	c.logFailure(r, err)
	writeError(w, r, err)
}

// logFailure logs a failed request without its query, body or headers.
func (c *core) logFailure(r *http.Request, err error) {
	c.log.Warn("request failed", "method", r.Method, "host", r.Host, "path", r.URL.Path, "err", err)
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// bufferPool recycles ReverseProxy's copy buffers.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *buffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }

// splitHost splits a Host header or authority into a lower-case host name
// and a port ("" when absent, or defPort when given).
func splitHost(hostport, defPort string) (host, port string) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = hostport, ""
	}
	if port == "" {
		port = defPort
	}
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	return strings.ToLower(host), port
}
