package proxy

import (
	"fmt"
	"net/http"
	"net/url"
	"sync/atomic"

	"github.com/authproxy/authproxy/route"
)

// sidecar serves applications on localhost that speak plain HTTP/1.1 or h2c
// (as grpc-go's insecure credentials do) and sends their requests to the
// matched route's upstream over TLS.
type sidecar struct {
	addr    string // the listener's bound address
	core    *core
	table   atomic.Pointer[route.Table[*routeRT]] // swapped whole by a reload
	host    string                                // matching host override ("" = the request's Host)
	port    string                                // its port, if any
	pass    *url.URL                              // upstream for unmatched requests; nil = deny
	passH2C bool
}

func (s *sidecar) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x, err := s.exchangeFor(r)
	if err != nil {
		if x != nil {
			noteExchange(r, x)
		}
		s.core.logFailure(r, err)
		writeError(w, r, err)
		return
	}
	s.core.serve(w, r, x)
}

// exchangeFor matches r to a route, or to the pass-through upstream.
func (s *sidecar) exchangeFor(r *http.Request) (*exchange, error) {
	hostname, port := s.host, s.port
	if hostname == "" {
		hostname, port = splitHost(r.Host, "")
	}
	rt, params, err := matchRoute(s.table.Load(), hostname, port, r.Method, r.URL.EscapedPath())
	if err != nil {
		return nil, err
	}
	client, err := s.core.clients.Load().check(rt, r.Header.Get("Proxy-Authorization"), r.RemoteAddr, peerNames(r.Context()), s.core.attempts)
	if rt == nil {
		if s.pass == nil {
			return nil, fmt.Errorf("sidecar: %w", ErrNoRoute)
		}
		return &exchange{target: s.pass, join: true, h2c: s.passH2C, clientHost: r.Host, sidecar: true, listenerAddr: s.addr, client: client}, nil
	}
	// A refused caller's exchange names its route and itself, for the
	// metrics and the log; it is never sent.
	return &exchange{route: rt, params: params, target: rt.upstream, join: true, h2c: rt.h2c,
		clientHost: r.Host, sidecar: true, listenerAddr: s.addr, client: client}, err
}
