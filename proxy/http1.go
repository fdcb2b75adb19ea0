package proxy

// The HTTP/1.1 engine: net/http's server in front (sidecar, plain forward
// and intercepted HTTP/1.1 requests), httputil.ReverseProxy, and the
// keep-alive pool of HTTP/1.1 connections upstream.

import (
	"context"
	"errors"
	"github.com/authproxy/authproxy/tracing"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"sync"
	"sync/atomic"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/metrics"
	"github.com/authproxy/authproxy/transport"
)

type exchangeKey struct{}

// clientCount is one caller label's requests, for /status.
type clientCount struct{ requests, refused atomic.Int64 }

// core sends requests upstream: it strips the client's credentials, calls
// the injector, and round-trips. It is shared by every listener.
type core struct {
	metrics   *metrics.Metrics          // nil: none
	access    atomic.Pointer[accessLog] // log.access, log.access_sample: a reload swaps them
	observed  atomic.Bool               // metrics, the access log or the status page want each request
	up        *transport.Set
	log       *slog.Logger
	rp        *httputil.ReverseProxy
	maxReplay int64                       // retry.max_body_bytes
	refusals  *sampledLog                 // requests no route matches
	clients   atomic.Pointer[clientRules] // config clients; a reload swaps them
	jwks      *jwksSources                // the JWT clients' jwks_url keys, kept across reloads
	attempts  *attempts                   // failed proxy authentications by source
	// clientCounts are requests by caller label (bounded: the configured
	// clients, anyone, unknown), for /status.
	clientCounts sync.Map        // string -> *clientCount
	tracer       *tracing.Tracer // nil: tracing off
}

func newCore(up *transport.Set, logger *slog.Logger) *core {
	c := &core{up: up, log: logger, refusals: newSampledLog(), attempts: newAttempts(logger)}
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
	noteExchange(r, x)
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
	ireq, err := strip(out, x)
	if err != nil {
		return nil, err
	}
	if c.tracer != nil && x.span == nil {
		x.span = c.tracer.StartRequest(out.Header)
		if ri := infoOf(out); ri != nil {
			ri.id = x.span.TraceID()
		}
	}
	if rt != nil {
		err := rt.injector.Inject(ireq)
		c.injected(rt, err)
		if err != nil {
			return nil, &routeError{route: rt.name, err: err}
		}
	}
	tr := c.transport(out, x)
	obs := rt.observing(ireq)
	var rec replayer
	if obs != nil && out.Body != nil && out.Body != http.NoBody {
		if rec, err = replayable(out, c.maxReplay); err != nil {
			return nil, &routeError{route: rt.name, err: err}
		}
	}
	inBody := x.inBody
	if inBody == nil && out.Body != nil && out.Body != http.NoBody {
		inBody = out.Body // goproxy hands over the client's request itself
	}
	resp, err := c.roundTripOnce(tr, out, rt, inBody)
	if err != nil || obs == nil || !obs.ObserveResponse(ireq, resp) {
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
	err = rt.injector.Inject(ireq)
	c.injected(rt, err)
	if err != nil {
		return nil, &routeError{route: rt.name, err: err}
	}
	c.log.Debug("retrying with a fresh credential", "route", rt.name, "method", out.Method, "host", out.Host, "path", out.URL.Path)
	return c.roundTripOnce(tr, out, rt, inBody)
}

// transport picks the upstream transport of the HTTP/1.1 engine: the
// keep-alive pool of HTTP/1.1 connections, net/http's HTTP/2 client for
// h2c upstreams, and its ALPN-negotiated client for routes that ask for
// upstream_protocol http2.
func (c *core) transport(_ *http.Request, x *exchange) http.RoundTripper {
	up := c.up
	if x.route != nil && x.route.client != nil { // the route's own pools, presenting its certificate
		up, _ = x.route.client.set.Current()
	}
	if x.h2c {
		return up.H2C
	}
	if x.route != nil && x.route.protocol == config.ProtocolHTTP2 {
		return up.TLS
	}
	return up.H1
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
	if ri := infoOf(r); ri != nil {
		route := ""
		if ri.x != nil && ri.x.route != nil {
			route = ri.x.route.name
		}
		c.upstreamFailed(ri.listener, route, err)
	}
	writeError(w, r, err)
}

// logFailure logs a failed request without its query, body or headers. A
// request no route matches is a refusal, which any client (a scanner on a
// forward listener) can cause at will: it is logged at info and sampled
// (the access log and authproxy_requests_total have each).
func (c *core) logFailure(r *http.Request, err error) {
	if errors.Is(err, ErrNoRoute) {
		c.refusals.log(c.log, slog.LevelInfo, "request refused: no route matches", "method", r.Method, "host", r.Host, "path", r.URL.Path)
		return
	}
	c.log.Warn("request failed", "method", r.Method, "host", r.Host, "path", r.URL.Path, "err", err)
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// bufferPool recycles ReverseProxy's copy buffers.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *buffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }

// asSent keeps the server under the HTTP/1.1 engine (net/http) and under
// the bridge (x/net/http2) from adding a Date or a sniffed Content-Type to
// a response the upstream sent without them.
type asSent struct{ http.ResponseWriter }

func (w asSent) WriteHeader(code int) {
	h := w.Header()
	for _, k := range []string{"Date", "Content-Type"} {
		if _, ok := h[k]; !ok {
			h[k] = nil
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w asSent) Write(p []byte) (int, error) {
	if _, ok := w.Header()["Date"]; !ok { // a body with no WriteHeader first
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

func (w asSent) Unwrap() http.ResponseWriter { return w.ResponseWriter }
