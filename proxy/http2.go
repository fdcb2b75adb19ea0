package proxy

// The HTTP/2 engine: the frame relay (package h2relay) on every listener —
// h2c on sidecars, h2 on intercepted CONNECTs — deciding each stream with
// the same pipeline, and its bridge to HTTP/1.1 upstreams.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/h2relay"
	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/tracing"
	"github.com/authproxy/authproxy/transport"
)

// relayHandler decides each HTTP/2 stream, on sidecar listeners (h2c) and
// on intercepted CONNECTs that negotiated h2, with the same routing,
// stripping and injection as the HTTP/1.1 engine; package h2relay then
// moves its frames.
type relayHandler struct {
	core     *core
	listener string // its name, for the metrics
	// exchangeFor matches a request; connData is the connection's
	// (h2relay.Request.ConnData: an intercepted CONNECT's target).
	exchangeFor func(r *http.Request, connData any) (*exchange, error)
}

// newRelay builds the HTTP/2 engine of one listener.
func newRelay(c *core, h relayHandler, cfg *config.Config, name string) *h2relay.Relay {
	t := cfg.Timeouts
	return &h2relay.Relay{
		Handler:             h,
		Dial:                c.dialH2,
		Bridge:              c.bridge,
		MaxHeaderBytes:      maxHeaderBytes,
		MaxReplayBytes:      int(c.maxReplay),
		PrefaceTimeout:      t.ReadHeader.D(10 * time.Second),
		IdleTimeout:         t.Idle.D(120 * time.Second),
		UpstreamIdleTimeout: cfg.Upstream.IdleConnTimeout.D(90 * time.Second),
		Log:                 c.log.With("listener", name),
	}
}

// dialH2 is the relay's Dial: transport's, with an upstream that lacks h2
// marked for the bridge.
func (c *core) dialH2(ctx context.Context, scheme, addr string) (net.Conn, error) {
	return dialH2Via(ctx, c.up, scheme, addr)
}

func dialH2Via(ctx context.Context, up *transport.Set, scheme, addr string) (net.Conn, error) {
	nc, err := up.DialH2(ctx, scheme, addr)
	if errors.Is(err, transport.ErrNoHTTP2) {
		err = fmt.Errorf("%w: %w", h2relay.ErrNoHTTP2, err)
	}
	return nc, err
}

// routeClient is a route's client certificate (tls_client) and the
// transports that present it.
type routeClient struct {
	set  *transport.ClientSet
	core *core
	mu   sync.Mutex
	cur  *routeUpstream // the relay's way there for the current certificate
}

// upstream is the relay's Upstream for the certificate as it is now: a
// renewal gives a new one, so that new streams get new connections.
func (rc *routeClient) upstream() *routeUpstream {
	set, gen := rc.set.Current()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.cur == nil || rc.cur.gen != gen {
		rc.cur = &routeUpstream{set: set, gen: gen, core: rc.core}
	}
	return rc.cur
}

// routeUpstream opens a route's relayed connections with one generation
// of its certificate (h2relay.Upstream).
type routeUpstream struct {
	set  *transport.Set
	gen  uint64
	core *core
}

func (u *routeUpstream) Dial(ctx context.Context, scheme, addr string) (net.Conn, error) {
	return dialH2Via(ctx, u.set, scheme, addr)
}

func (u *routeUpstream) Bridge(scheme, addr string) http.Handler {
	return u.core.bridgeVia(u.set.H1, scheme, addr)
}

// matched is a stream's request, route and stripped head, kept in
// Request.Data when Open returns ErrWouldBlock, so that its second call
// neither matches nor strips again.
type matched struct {
	r      *http.Request
	x      *exchange
	ireq   *injectors.Request // nil for a request no route matched
	reason string             // why the proxy answered itself, for the access log
	id     string             // the request's id (tracing.RequestID), once one is needed
}

// requestID is the stream's id for the access log and its error answer.
func (m *matched) requestID(h http.Header) string {
	if m.id == "" {
		m.id = tracing.RequestID(h)
	}
	return m.id
}

func (h relayHandler) Open(req *h2relay.Request) (*h2relay.Target, error) {
	m, ok := req.Data.(*matched)
	if !ok {
		u, err := url.ParseRequestURI(req.Path)
		if err != nil {
			return nil, fmt.Errorf("%w: the request's :path does not parse", injectors.ErrBadRequest)
		}
		ctx := req.Context
		if pc, ok := req.ConnData.(*peerConn); ok { // a TLS sidecar's connection
			ctx = context.WithValue(ctx, peerKey{}, pc)
		}
		r := (&http.Request{
			Method: req.Method, URL: u, RequestURI: req.Path,
			Proto: "HTTP/2.0", ProtoMajor: 2,
			Header: req.Header, Host: req.Authority, RemoteAddr: req.RemoteAddr,
			Body: http.NoBody,
		}).WithContext(ctx)
		x, err := h.exchangeFor(r, req.ConnData)
		if err != nil {
			if x != nil { // refused: named for the metrics and the log
				req.Data = &matched{x: x}
			}
			return nil, err
		}
		// r is the proxy's own: it becomes the request sent upstream.
		if x.join {
			(&httputil.ProxyRequest{In: r, Out: r}).SetURL(x.target)
		} else {
			r.URL.Scheme, r.URL.Host = x.target.Scheme, x.target.Host
		}
		r.RequestURI = ""
		ireq, err := strip(r, x)
		if err != nil {
			return nil, err
		}
		m = &matched{r: r, x: x, ireq: ireq}
		if h.core.tracer != nil {
			x.span = h.core.tracer.StartRequest(r.Header)
			m.id = x.span.TraceID()
		}
		req.Data = m
	}
	r, x, ireq := m.r, m.x, m.ireq
	if rt := x.route; rt != nil {
		switch _, immediate := rt.injector.(injectors.Immediate); {
		case req.Inline && !immediate:
			// On the connection's reading goroutine nothing may wait: a
			// credential in hand is added now, one to fetch on a
			// goroutine of the stream's own.
			p, ok := rt.injector.(injectors.Prompt)
			if !ok {
				req.Data = m
				return nil, h2relay.ErrWouldBlock
			}
			done, err := p.TryInject(ireq)
			if !done && err == nil {
				req.Data = m
				return nil, h2relay.ErrWouldBlock
			}
			h.core.injected(rt, err)
			if err != nil {
				return nil, &routeError{route: rt.name, err: err}
			}
		default:
			err := rt.injector.Inject(ireq)
			h.core.injected(rt, err)
			if err != nil {
				return nil, &routeError{route: rt.name, err: err}
			}
		}
	}
	t := relayTarget(r, x)
	rt := x.route
	obs := rt.observing(ireq)
	if obs == nil {
		return t, nil
	}
	t.Observe = func(status int, header http.Header, body []byte) bool {
		resp := &http.Response{StatusCode: status, Header: header, Body: http.NoBody, ContentLength: -1, Request: r}
		if body != nil {
			resp.Body, resp.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		}
		return obs.ObserveResponse(ireq, resp)
	}
	_, headOnly := rt.injector.(injectors.HeadObserver)
	mo, messages := rt.injector.(injectors.MessageObserver)
	if !headOnly && !messages {
		t.PeekBytes = injectors.MaxObservedBody
	}
	if messages {
		t.Tap = func(status int, header http.Header) *h2relay.Tap {
			if mt := mo.TapMessages(ireq, status, header); mt != nil {
				return &h2relay.Tap{Message: mt.Message, End: mt.End}
			}
			return nil
		}
	}
	t.Retry = func() (*h2relay.Target, error) {
		err := rt.injector.Inject(ireq)
		h.core.injected(rt, err)
		if err != nil {
			return nil, &routeError{route: rt.name, err: err}
		}
		h.core.log.Debug("retrying with a fresh credential", "route", rt.name, "method", r.Method, "host", r.Host, "path", r.URL.Path)
		t2 := relayTarget(r, x)
		t2.Observe, t2.PeekBytes, t2.Tap = t.Observe, t.PeekBytes, t.Tap
		return t2, nil
	}
	return t, nil
}

// relayTarget is the head to send upstream for out: HTTP/2 to https (by
// ALPN, bridged to HTTP/1.1 if the upstream lacks h2, unless the route
// asks for http2) and h2c upstreams, HTTP/1.1 through the bridge to
// http:// upstreams and routes that ask for http1.
func relayTarget(out *http.Request, x *exchange) *h2relay.Target {
	authority := out.Host
	if authority == "" {
		authority = out.URL.Host
	}
	t := &h2relay.Target{
		Scheme: out.URL.Scheme, Addr: transport.CanonicalAddr(out.URL),
		Method: out.Method, Authority: authority, Path: out.URL.RequestURI(),
		Header: out.Header, Data: x,
		HTTP1: out.URL.Scheme == "http" && !x.h2c,
	}
	if rt := x.route; rt != nil {
		t.StripTrailers = rt.stripLower
		if rt.client != nil {
			t.Upstream = rt.client.upstream()
		}
		switch rt.protocol {
		case config.ProtocolHTTP1:
			t.HTTP1 = true
		case config.ProtocolHTTP2:
			t.Strict = true
		}
	}
	return t
}

// Reply answers a stream the relay does not forward, as writeError does,
// and logs why.
func (h relayHandler) Reply(req *h2relay.Request, t *h2relay.Target, err error) h2relay.Reply {
	if errors.Is(err, h2relay.ErrHeaderTooLarge) {
		return h2relay.Reply{Status: http.StatusRequestHeaderFieldsTooLarge,
			Header: http.Header{"Content-Type": {"text/plain; charset=utf-8"}},
			Body:   "authproxy: request header fields too large\n"}
	}
	if errors.Is(err, h2relay.ErrUpstream) {
		err = &upstreamError{err: err}
		route := ""
		if t != nil {
			if x, ok := t.Data.(*exchange); ok && x.route != nil {
				route = x.route.name
				err = &routeError{route: route, err: err}
			}
		}
		h.core.upstreamFailed(h.listener, route, err)
	}
	r := &http.Request{Method: req.Method, Host: req.Authority, URL: &url.URL{Path: req.Path}, Header: req.Header}
	if u, perr := url.ParseRequestURI(req.Path); perr == nil {
		r.URL = u
	}
	h.core.logFailure(r, err)
	m, ok := req.Data.(*matched)
	if !ok {
		m = &matched{}
		req.Data = m
	}
	m.reason = reasonOf(err)
	status, header, body := errorReply(r, err, m.requestID(req.Header))
	return h2relay.Reply{Status: status, Header: header, Body: body}
}

// bridge is the relay's way to HTTP/1.1 upstreams: it sends each stream
// it is given (already stripped and injected) to scheme://addr over the
// HTTP/1.1 keep-alive pool, and answers with the upstream's response as
// it came: no Date or Content-Type is added, and response data is flushed
// as it arrives. A failure resets the stream, which the relay answers as
// an unreachable upstream.
func (c *core) bridge(scheme, addr string) http.Handler {
	return c.bridgeVia(c.up.H1, scheme, addr)
}

// bridgeVia is bridge over the HTTP/1.1 transport h1.
func (c *core) bridgeVia(h1 http.RoundTripper, scheme, addr string) http.Handler {
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = scheme, addr
		},
		Transport:     h1,
		FlushInterval: -1,
		// A Content-Length on a 204 (which RFC 9110 §8.6 forbids) is
		// dropped, as net/http's HTTP/1.1 server drops it: over HTTP/2 a
		// client would wait for the body it announces.
		ModifyResponse: func(resp *http.Response) error {
			if resp.StatusCode == http.StatusNoContent {
				resp.Header.Del("Content-Length")
			}
			return nil
		},
		BufferPool: bufferPool{},
		ErrorHandler: func(_ http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() == nil {
				c.log.Warn("HTTP/1.1 upstream failed", "upstream", addr, "method", r.Method, "path", r.URL.Path, "err", err)
			}
			panic(http.ErrAbortHandler) // resets the stream
		},
		ErrorLog: stdLogger(c.log.With("component", "bridge")),
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rp.ServeHTTP(asSent{w}, r)
	})
}
