package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/h2relay"
	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/transport"
)

// relayHandler decides each stream of an h2c: relay sidecar with the same
// routing, stripping and injection as every other path; package h2relay
// then moves its frames.
type relayHandler struct{ s *sidecar }

// matched is a stream's request and route, kept in Request.Data when Open
// returns ErrWouldBlock, so that its second call does not match again.
type matched struct {
	r *http.Request
	x *exchange
}

func (h relayHandler) Open(req *h2relay.Request) (*h2relay.Target, error) {
	m, ok := req.Data.(*matched)
	if !ok {
		u, err := url.ParseRequestURI(req.Path)
		if err != nil {
			return nil, fmt.Errorf("%w: the request's :path does not parse", injectors.ErrBadRequest)
		}
		r := (&http.Request{
			Method: req.Method, URL: u, RequestURI: req.Path,
			Proto: "HTTP/2.0", ProtoMajor: 2,
			Header: req.Header, Host: req.Authority, RemoteAddr: req.RemoteAddr,
			Body: http.NoBody,
		}).WithContext(req.Context)
		x, err := h.s.exchangeFor(r)
		if err != nil {
			return nil, err
		}
		m = &matched{r, x}
	}
	r, x := m.r, m.x
	if req.Inline && x.route != nil {
		if _, ok := x.route.injector.(injectors.Immediate); !ok {
			req.Data = m
			return nil, h2relay.ErrWouldBlock // it may fetch a credential
		}
	}
	if x.target.Scheme == "http" && !x.h2c {
		return nil, &upstreamError{fmt.Errorf("%s speaks HTTP/1.1; h2c: relay needs an HTTP/2 upstream", x.target.Host)}
	}
	// r is the proxy's own: it becomes the request sent upstream.
	(&httputil.ProxyRequest{In: r, Out: r}).SetURL(x.target)
	r.RequestURI = ""
	ireq, err := prepare(r, x)
	if err != nil {
		return nil, err
	}
	t := relayTarget(r, x)
	if rt := x.route; rt != nil && rt.observer != nil {
		t.Observe = func(status int, header http.Header, body []byte) bool {
			resp := &http.Response{StatusCode: status, Header: header, Body: http.NoBody, ContentLength: -1, Request: r}
			if body != nil {
				resp.Body, resp.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
			}
			return rt.observer.ObserveResponse(ireq, resp)
		}
		if _, headOnly := rt.injector.(injectors.HeadObserver); !headOnly {
			t.PeekBytes = injectors.MaxObservedBody
		}
		t.Retry = func() (*h2relay.Target, error) {
			if err := rt.injector.Inject(ireq); err != nil {
				return nil, &routeError{route: rt.name, err: err}
			}
			h.s.core.log.Debug("retrying with a fresh credential", "route", rt.name, "method", r.Method, "host", r.Host, "path", r.URL.Path)
			return relayTarget(r, x), nil
		}
	}
	return t, nil
}

// relayTarget is the head to send upstream for out.
func relayTarget(out *http.Request, x *exchange) *h2relay.Target {
	authority := out.Host
	if authority == "" {
		authority = out.URL.Host
	}
	t := &h2relay.Target{
		Scheme: out.URL.Scheme, Addr: transport.CanonicalAddr(out.URL),
		Method: out.Method, Authority: authority, Path: out.URL.RequestURI(),
		Header: out.Header, Data: x,
	}
	if x.route != nil {
		t.StripTrailers = x.route.stripLower
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
		if t != nil {
			if x, ok := t.Data.(*exchange); ok && x.route != nil {
				err = &routeError{route: x.route.name, err: err}
			}
		}
	}
	r := &http.Request{Method: req.Method, Host: req.Authority, URL: &url.URL{Path: req.Path}, Header: req.Header}
	if u, perr := url.ParseRequestURI(req.Path); perr == nil {
		r.URL = u
	}
	h.s.core.logFailure(r, err)
	status, header, body := errorReply(r, err)
	return h2relay.Reply{Status: status, Header: header, Body: body}
}

// checkRelay refuses h2c: relay on a listener that has a route the relay
// cannot serve: one whose injector reads the gRPC messages of responses
// (openOBD), or one that sends to an HTTP/1.1 upstream.
func checkRelay(cfg *config.Config, injs map[string]injectors.Injector) error {
	var errs []error
	for i, l := range cfg.Listeners {
		if l.H2C != config.H2CRelay {
			continue
		}
		p := config.Join(config.Index("listeners", i), "h2c")
		for _, ref := range cfg.RoutesByListener[l.Name] {
			inj := injs[ref.Route.Injector]
			if _, messages := inj.(injectors.MessageObserver); messages {
				errs = append(errs, config.Errorf(p, "relay cannot serve route %q: its injector %q reads the gRPC messages of responses, which the frame relay never decodes (use h2c: grpc or http on this listener)", ref.Route.Name, ref.Route.Injector))
			}
			if ref.Upstream != nil && ref.Upstream.Scheme == "http" {
				errs = append(errs, config.Errorf(p, "relay cannot serve route %q: its upstream %s is HTTP/1.1 (the relay needs https or h2c upstreams)", ref.Route.Name, ref.Upstream.Redacted()))
			}
		}
		if l.Unmatched == config.UnmatchedPass {
			if u, err := url.Parse(l.Upstream); err == nil && u.Scheme == "http" {
				errs = append(errs, config.Errorf(p, "relay cannot pass unmatched requests to %s, which is HTTP/1.1 (the relay needs https or h2c upstreams)", u.Redacted()))
			}
		}
	}
	return errors.Join(errs...)
}
