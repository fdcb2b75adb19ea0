package proxy

// The injection pipeline both engines run for every request: the route a
// request matched, what it sends, and the steps that strip the client's
// credentials and have the injector add the real one.

import (
	"github.com/authproxy/authproxy/tracing"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/route"
	"github.com/authproxy/authproxy/transport"
)

// routeRT is a route ready to serve: its injector and where it sends.
type routeRT struct {
	name           string
	injector       injectors.Injector
	injectorName   string
	requests       atomic.Int64               // answered, for the status page
	observer       injectors.ResponseObserver // nil unless the injector observes responses
	upstream       *url.URL                   // sidecar target (scheme http for h2c); nil on forward listeners
	h2c            bool
	protocol       string // config.Protocol*: upstream protocol over TLS and plain HTTP
	allowPlaintext bool
	tlsUpgrade     bool
	strip          []string        // canonical names of client headers to remove
	stripLower     []string        // the same in lower case, as HTTP/2 carries them
	clients        map[string]bool // routes[].clients; nil: every caller
	client         *routeClient    // routes[].tls_client; nil: no client certificate
}

// observing is the route's response observer for ireq: nil without a
// route, when the injector observes no responses, or not this request's.
func (rt *routeRT) observing(ireq *injectors.Request) injectors.ResponseObserver {
	if rt == nil {
		return nil
	}
	if so, ok := rt.observer.(injectors.SelectiveObserver); ok && !so.Observes(ireq) {
		return nil
	}
	return rt.observer
}

func newRouteRT(ref config.RouteRef, inj injectors.Injector) *routeRT {
	r := ref.Route
	rt := &routeRT{
		name:           r.Name,
		injector:       inj,
		injectorName:   r.Injector,
		allowPlaintext: r.AllowPlaintext,
		tlsUpgrade:     r.TLSUpgrade,
		protocol:       r.UpstreamProtocol,
	}
	rt.observer, _ = inj.(injectors.ResponseObserver)
	if r.Clients != nil {
		rt.clients = map[string]bool{}
		for _, c := range r.Clients {
			rt.clients[c] = true
		}
	}
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
	inBody       io.Closer     // the client's request body (ReverseProxy hands the transport a copy that does not close it)
	inTrailer    http.Header   // the client's request trailers, filled in as its body ends (ReverseProxy's copy is not)
	span         *tracing.Span // with tracing on, from the moment the request was stripped
	client       string        // who sent it (caller.label)
}

// strip removes the client's credentials from out, which the caller owns
// (head and declared trailers), and returns the injector's view of the
// request, still without a credential; nil and no error for a request no
// route matched. An error means out must not be sent. The engine then has
// the route's injector add the credential, and never sends the request
// when that fails.
func strip(out *http.Request, x *exchange) (*injectors.Request, error) {
	rt := x.route
	var stripHeaders []string
	if rt != nil {
		stripHeaders = rt.strip
	}
	forwardTrailers(out, x.inTrailer, stripHeaders)
	// A caller's proxy credentials are for the proxy alone, on every
	// request, matched or not.
	delete(out.Header, "Proxy-Authorization")
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
	ireq := &injectors.Request{Request: out, Route: rt.name, Params: x.params, Stripped: stripped,
		ClientHost: x.clientHost, Sidecar: x.sidecar, ListenerAddr: x.listenerAddr}
	if rt.client != nil {
		ireq.ClientCertThumbprint = rt.client.set.Cert().Thumbprint()
	}
	return ireq, nil
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
	out.Body = transport.OnEOF(out.Body, func() {
		for k := range to {
			to[k] = from[k]
		}
	})
}

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
