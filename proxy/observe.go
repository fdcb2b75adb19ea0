package proxy

import (
	"context"
	"errors"
	"github.com/authproxy/authproxy/tracing"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/http2"

	"github.com/authproxy/authproxy/h2relay"
	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/metrics"
)

// What the engines report once a request is over — to the metrics
// (package metrics; a nil *metrics.Metrics records nothing) and to the
// access log (log.access) — and as it goes: injections, upstream
// failures, client connections.

// done is one finished request, as both engines describe it.
type done struct {
	listener, protocol string
	route              *routeRT // nil when none matched
	method, host       string
	url                *url.URL // path and query keys are logged, never query values
	rawPath            string   // an HTTP/2 stream's :path, parsed into url only if the request is logged
	status             int      // 0: an HTTP/2 stream reset before any answer
	took               time.Duration
	in, out            int64  // body bytes from the client, and to it
	upstream           string // host:port the request went to ("" if none)
	reason             string // why the proxy answered itself ("" if it did not)
	span               *tracing.Span
	id                 func() string // the request's id, for the access log
	client             string        // caller.label ("" when unknown to the engine: anyone)
}

// finished records a request that is over.
func (c *core) finished(d done) {
	route, injector := "", ""
	if d.route != nil {
		route, injector = d.route.name, d.route.injectorName
		d.route.requests.Add(1)
	}
	client := d.client
	if client == "" {
		client = "anyone"
	}
	c.metrics.Request(d.listener, route, d.protocol, client, d.status, d.took)
	if d.client != "" { // requests whose caller was looked at, for /status
		cc, ok := c.clientCounts.Load(client)
		if !ok {
			cc, _ = c.clientCounts.LoadOrStore(client, &clientCount{})
		}
		cc.(*clientCount).requests.Add(1)
		switch d.reason {
		case "proxy_auth", "client_not_allowed", "too_many_attempts":
			cc.(*clientCount).refused.Add(1)
		}
	}
	d.span.End(d.listener, d.protocol, route, injector, d.status, d.reason)
	if a := c.access.Load(); !a.on || (a.sample < 1 && rand.Float64() >= a.sample) {
		return
	}
	path, keys := "", ""
	if d.url == nil && d.rawPath != "" {
		d.url, _ = url.ParseRequestURI(d.rawPath)
	}
	if d.url != nil {
		path = d.url.EscapedPath()
		if q, err := url.ParseQuery(d.url.RawQuery); err == nil && len(q) > 0 {
			ks := make([]string, 0, len(q))
			for k := range q {
				ks = append(ks, k)
			}
			slices.Sort(ks)
			keys = strings.Join(ks, ",")
		}
	}
	c.log.Info("request", "listener", d.listener, "route", route, "injector", injector, "client", client,
		"method", d.method, "host", d.host, "path", path, "query_keys", keys,
		"status", d.status, "duration", d.took.Round(time.Microsecond).String(),
		"bytes_in", d.in, "bytes_out", d.out, "upstream", d.upstream, "protocol", d.protocol, "reason", d.reason,
		"request_id", d.id())
}

// reasonOf names why the proxy answered a request itself.
func reasonOf(err error) string {
	for _, r := range []struct {
		err  error
		word string
	}{
		{ErrNoRoute, "no_route"}, {ErrProxyAuth, "proxy_auth"}, {ErrClientNotAllowed, "client_not_allowed"}, {ErrTooManyAttempts, "too_many_attempts"}, {ErrMisdirected, "misdirected"}, {ErrDestinationRefused, "destination_refused"},
		{ErrUnsafePath, "unsafe_path"}, {ErrPlaintext, "plaintext"}, {ErrUpstream, "upstream"}, {h2relay.ErrUpstream, "upstream"},
		{h2relay.ErrHeaderTooLarge, "header_too_large"},
		{injectors.ErrBadRequest, "bad_request"}, {injectors.ErrFailedPrecondition, "precondition"},
		{injectors.ErrTimeout, "credential_timeout"}, {injectors.ErrCredentialRejected, "credential_rejected"},
		{injectors.ErrCredentialUnavailable, "credential_unavailable"},
	} {
		if errors.Is(err, r.err) {
			return r.word
		}
	}
	return "error"
}

// reqInfo travels in an HTTP/1.1 request's context: what the engine
// learns of it on the way.
type reqInfo struct {
	listener string
	x        *exchange
	reason   string
	id       string // tracing.RequestID, once one is needed
}

// requestID is the request's id for the access log and its error answer.
func (ri *reqInfo) requestID(h http.Header) string {
	if ri.id == "" {
		ri.id = tracing.RequestID(h)
	}
	return ri.id
}

type reqInfoKey struct{}

func infoOf(r *http.Request) *reqInfo {
	ri, _ := r.Context().Value(reqInfoKey{}).(*reqInfo)
	return ri
}

// noteExchange records where a request of the HTTP/1.1 engine goes.
func noteExchange(r *http.Request, x *exchange) {
	if ri := infoOf(r); ri != nil {
		ri.x = x
	}
}

// noteFailure records why the proxy answered a request itself.
func noteFailure(r *http.Request, err error) {
	if ri := infoOf(r); ri != nil {
		ri.reason = reasonOf(err)
	}
}

// instrument wraps a listener's HTTP/1.1 handler: each request (not a
// CONNECT, which is a decision, logged and counted as one) is recorded
// when it is over.
func (c *core) instrument(listener string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// observed is looked at per request: a reload may turn the access
		// log on for a listener it keeps.
		if r.Method == http.MethodConnect || !c.observed.Load() {
			h.ServeHTTP(w, r)
			return
		}
		began := time.Now()
		ri := &reqInfo{listener: listener}
		sw := &statusWriter{ResponseWriter: w}
		var body *countingBody
		if r.Body != nil && r.Body != http.NoBody {
			body = &countingBody{ReadCloser: r.Body}
			r.Body = body
		}
		h.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), reqInfoKey{}, ri)))
		d := done{listener: listener, protocol: "http1", method: r.Method, host: r.Host, url: r.URL,
			status: sw.status, took: time.Since(began), out: sw.n, reason: ri.reason,
			id: func() string { return ri.requestID(r.Header) }}
		if body != nil {
			d.in = body.n
		}
		if x := ri.x; x != nil {
			d.route, d.span, d.client = x.route, x.span, x.client
			if x.target != nil {
				d.upstream = x.target.Host
			}
		}
		c.finished(d)
	})
}

// statusWriter notes the final status a handler sent, and the body bytes.
type statusWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countingBody counts a request body's bytes as they are read.
type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}

// connStates counts a net/http server's client connections.
func connStates(m *metrics.Metrics, listener string, next func(net.Conn, http.ConnState)) func(net.Conn, http.ConnState) {
	return func(c net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			m.Conn(listener, "http1", 1)
		case http.StateClosed, http.StateHijacked:
			m.Conn(listener, "http1", -1)
		}
		if next != nil {
			next(c, st)
		}
	}
}

// observeRelay has a listener's relay report its streams and connections.
func (c *core) observeRelay(listener string, r *h2relay.Relay) {
	if c.metrics != nil {
		r.OnConn = func(delta int) { c.metrics.Conn(listener, "h2", delta) }
		r.OnGoAway = func(side, direction string, code http2.ErrCode) {
			c.metrics.GoAway(listener, side, direction, code.String())
		}
		r.OnRefused = func(reason string) { c.metrics.Refused(listener, reason) }
	}
	r.OnStreamEnd = func(req *h2relay.Request, t *h2relay.Target, end h2relay.StreamEnd) {
		if !c.observed.Load() { // as in instrument
			return
		}
		d := done{listener: listener, protocol: "h2", method: req.Method, host: req.Authority,
			status: end.Status, took: time.Since(end.Began), in: end.In, out: end.Out, rawPath: req.Path}
		mt, ok := req.Data.(*matched)
		if !ok {
			mt = &matched{}
		}
		d.reason = mt.reason
		if mt.x != nil {
			d.route, d.span, d.client = mt.x.route, mt.x.span, mt.x.client
		}
		d.id = func() string { return mt.requestID(req.Header) }
		if t != nil {
			d.upstream = t.Addr
			if x, ok := t.Data.(*exchange); ok {
				d.route, d.span, d.client = x.route, x.span, x.client
			}
		}
		c.finished(d)
	}
}

// injected records an injector's call on a route.
func (c *core) injected(rt *routeRT, err error) {
	c.metrics.Injection(rt.injectorName, err)
}

// upstreamFailed records a failure of the upstream, if err is one.
func (c *core) upstreamFailed(listener, route string, err error) {
	if errors.Is(err, ErrUpstream) || errors.Is(err, h2relay.ErrUpstream) {
		c.metrics.UpstreamFailure(listener, route, metrics.UpstreamReason(err))
	}
}
