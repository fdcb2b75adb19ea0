package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/authproxy/authproxy/h2relay"
	"github.com/authproxy/authproxy/metrics"
)

// What the engines report to the metrics (package metrics; a nil
// *metrics.Metrics records nothing): each request with its listener,
// route, protocol and status, each injection, each upstream failure, and
// client connections.

// reqInfo travels in an HTTP/1.1 request's context: the engine notes the
// route it matched and whether the upstream failed.
type reqInfo struct {
	listener string
	route    string
}

type reqInfoKey struct{}

func infoOf(r *http.Request) *reqInfo {
	ri, _ := r.Context().Value(reqInfoKey{}).(*reqInfo)
	return ri
}

// noteRoute records the route a request of the HTTP/1.1 engine matched.
func noteRoute(r *http.Request, x *exchange) {
	if ri := infoOf(r); ri != nil && x.route != nil {
		ri.route = x.route.name
	}
}

// instrument wraps a listener's HTTP/1.1 handler: each request (not a
// CONNECT, counted as a decision) is recorded with its status and time.
func instrument(m *metrics.Metrics, listener string, h http.Handler) http.Handler {
	if m == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodConnect {
			h.ServeHTTP(w, r)
			return
		}
		began := time.Now()
		ri := &reqInfo{listener: listener}
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), reqInfoKey{}, ri)))
		m.Request(listener, ri.route, "http1", sw.status, time.Since(began))
	})
}

// statusWriter notes the final status a handler sent.
type statusWriter struct {
	http.ResponseWriter
	status int
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
	return w.ResponseWriter.Write(p)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

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
func observeRelay(m *metrics.Metrics, listener string, r *h2relay.Relay) {
	if m == nil {
		return
	}
	r.OnConn = func(delta int) { m.Conn(listener, "h2", delta) }
	r.OnStreamEnd = func(req *h2relay.Request, t *h2relay.Target, status int, began time.Time) {
		route := ""
		if t != nil {
			if x, ok := t.Data.(*exchange); ok && x.route != nil {
				route = x.route.name
			}
		} else if mt, ok := req.Data.(*matched); ok && mt.x.route != nil {
			route = mt.x.route.name
		}
		m.Request(listener, route, "h2", status, time.Since(began))
	}
}

// injected records an injector's call on a route.
func (c *core) injected(rt *routeRT, err error) {
	c.metrics.Injection(rt.injectorName, err)
}

// upstreamFailed records a failure of the upstream, if err is one.
func (c *core) upstreamFailed(listener, route string, err error) {
	if errors.Is(err, ErrUpstream) || errors.Is(err, h2relay.ErrUpstream) {
		c.metrics.UpstreamFailure(listener, route)
	}
}
