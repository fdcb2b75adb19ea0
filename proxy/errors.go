package proxy

import (
	"errors"
	"fmt"
	"github.com/authproxy/authproxy/tracing"
	"io"
	"maps"
	"net/http"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"

	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/route"
)

// Sentinel errors of the proxy itself. Injectors add their own
// (injectors.ErrCredentialUnavailable, injectors.ErrCredentialRejected).
var (
	// ErrNoRoute: no route matches and the listener denies unmatched requests.
	ErrNoRoute = errors.New("no route matches the request")
	// ErrMisdirected: an intercepted request names a host other than the
	// CONNECT target.
	ErrMisdirected = errors.New("request host differs from the CONNECT target")
	// ErrPlaintext: the route would send its credential over plain HTTP.
	ErrPlaintext = errors.New("route does not send credentials over plaintext")
	// ErrUpstream: the upstream could not be reached or failed mid-request.
	ErrUpstream = errors.New("upstream request failed")
	// ErrUnsafePath: the request path has a dot segment, an encoded slash
	// or a backslash, which an upstream could resolve to a path outside the
	// route (see route.Path.CheckSafe).
	ErrUnsafePath = errors.New("request path could leave the route")
)

// routeError attaches the route name to an error, for the client message.
type routeError struct {
	route string
	err   error
}

func (e *routeError) Error() string { return fmt.Sprintf("route %q: %v", e.route, e.err) }
func (e *routeError) Unwrap() error { return e.err }

// upstreamError wraps a transport error as ErrUpstream, keeping the detail
// for the log.
type upstreamError struct{ err error }

func (e *upstreamError) Error() string   { return "upstream: " + e.err.Error() }
func (e *upstreamError) Unwrap() []error { return []error{ErrUpstream, e.err} }

// classify is the one place that maps an error to what the client sees: an
// HTTP status, a gRPC code, and a short message that carries no detail
// beyond the route name (the log has the rest).
func classify(err error) (status int, code codes.Code, msg string) {
	var re *routeError
	where := ""
	if errors.As(err, &re) {
		where = fmt.Sprintf(" (route %q)", re.route)
	}
	switch {
	case errors.Is(err, ErrNoRoute):
		return http.StatusNotFound, codes.Unimplemented, "authproxy: no route matches this request"
	case errors.Is(err, ErrProxyAuth):
		return http.StatusProxyAuthRequired, codes.Unauthenticated, "authproxy: proxy authentication required" + where
	case errors.Is(err, ErrTooManyAttempts):
		return http.StatusTooManyRequests, codes.ResourceExhausted, "authproxy: too many failed proxy authentications from this address; try later" + where
	case errors.Is(err, ErrClientNotAllowed):
		return http.StatusForbidden, codes.PermissionDenied, "authproxy: this client may not use the route's credential" + where
	case errors.Is(err, ErrMisdirected):
		return http.StatusMisdirectedRequest, codes.PermissionDenied, "authproxy: request host differs from the CONNECT target"
	case errors.Is(err, ErrDestinationRefused):
		return http.StatusForbidden, codes.PermissionDenied, "authproxy: " + clientDetail(err, ErrDestinationRefused)
	case errors.Is(err, ErrUnsafePath):
		return http.StatusBadRequest, codes.InvalidArgument, "authproxy: the request path has a dot segment, an encoded slash or a backslash; no credential is added to it" + where
	case errors.Is(err, ErrPlaintext):
		return http.StatusForbidden, codes.PermissionDenied, "authproxy: refusing to send a credential over plaintext" + where
	case errors.Is(err, injectors.ErrBadRequest):
		return http.StatusBadRequest, codes.InvalidArgument, "authproxy: " + clientDetail(err, injectors.ErrBadRequest) + where
	case errors.Is(err, injectors.ErrFailedPrecondition):
		return http.StatusPreconditionFailed, codes.FailedPrecondition, "authproxy: " + clientDetail(err, injectors.ErrFailedPrecondition) + where
	case errors.Is(err, injectors.ErrCredentialRejected):
		msg := "authproxy: credential rejected by its issuer"
		var oe *injectors.OAuthError
		if errors.As(err, &oe) && oe.ClientCode() != "" {
			msg += " (" + oe.ClientCode() + ")"
		}
		return http.StatusBadGateway, codes.Unauthenticated, msg + where
	case errors.Is(err, injectors.ErrCredentialUnavailable):
		return http.StatusServiceUnavailable, codes.Unavailable, "authproxy: credential unavailable" + where
	case errors.Is(err, ErrUpstream):
		return http.StatusBadGateway, codes.Unavailable, "authproxy: upstream unavailable" + where
	default:
		return http.StatusBadGateway, codes.Internal, "authproxy: request failed" + where
	}
}

// clientDetail is the part of an error the client may see: the injector's
// own sentence after the sentinel (which names what is missing, never a
// value or a credential).
func clientDetail(err, sentinel error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, sentinel.Error()+": "); i >= 0 {
		return msg[i+len(sentinel.Error())+2:]
	}
	return sentinel.Error()
}

// matchRoute finds the route for a request, and refuses it (ErrUnsafePath,
// naming the route) if its path could reach past what the route covers.
// No match is (nil, nil, nil).
func matchRoute(t *route.Table[*routeRT], hostname, port, method, escapedPath string) (*routeRT, route.Params, error) {
	e, params, ok := t.Match(hostname, port, method, escapedPath)
	if !ok {
		return nil, nil, nil
	}
	if err := e.Pattern.Path.CheckSafe(escapedPath, e.Pattern.EncodedSlash); err != nil {
		return nil, nil, &routeError{route: e.Value.name, err: fmt.Errorf("%w: it has %w", ErrUnsafePath, err)}
	}
	return e.Value, params, nil
}

func isGRPC(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	return ct == "application/grpc" || strings.HasPrefix(ct, "application/grpc+") || strings.HasPrefix(ct, "application/grpc;")
}

// errorReply is what the proxy answers instead of forwarding: for gRPC a
// Trailers-Only response (status 200, grpc-status and grpc-message in the
// headers, no body), otherwise the HTTP status and a one-line text.
func errorReply(r *http.Request, err error, id string) (status int, header http.Header, body string) {
	status, code, msg := classify(err)
	defer func() {
		if errors.Is(err, ErrProxyAuth) {
			header.Set("Proxy-Authenticate", `Basic realm="authproxy"`)
		}
	}()
	if isGRPC(r) {
		return http.StatusOK, http.Header{
			"Content-Type": {"application/grpc"},
			"Grpc-Status":  {strconv.Itoa(int(code))},
			"Grpc-Message": {encodeGRPCMessage(msg)},
			"X-Request-Id": {id},
		}, ""
	}
	body = msg + "\n"
	return status, http.Header{
		"Content-Type":           {"text/plain; charset=utf-8"},
		"X-Content-Type-Options": {"nosniff"},
		"Content-Length":         {strconv.Itoa(len(body))},
		"X-Request-Id":           {id},
	}, body
}

// requestIDOf is the id of a request of the HTTP/1.1 engine (the one its
// access-log line names, when it has one).
func requestIDOf(r *http.Request) string {
	if ri := infoOf(r); ri != nil {
		return ri.requestID(r.Header)
	}
	return tracing.RequestID(r.Header)
}

// writeError answers a request that will not be forwarded.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	noteFailure(r, err)
	status, header, body := errorReply(r, err, requestIDOf(r))
	maps.Copy(w.Header(), header)
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// errorResponse is writeError as an *http.Response, for goproxy's
// intercepted connections, which copy whatever response they are given.
func errorResponse(r *http.Request, err error) *http.Response {
	status, header, body := errorReply(r, err, requestIDOf(r))
	return &http.Response{
		StatusCode: status, Status: fmt.Sprintf("%d %s", status, http.StatusText(status)),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        header,
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       r,
	}
}

// encodeGRPCMessage percent-encodes as the gRPC HTTP/2 spec requires for
// grpc-message: bytes outside printable ASCII, and '%'.
func encodeGRPCMessage(msg string) string {
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c >= ' ' && c <= '~' && c != '%' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}
