package proxy

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	_ "google.golang.org/grpc/encoding/gzip" // clients may compress their messages
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	spb "google.golang.org/genproto/googleapis/rpc/status"

	"github.com/authproxy/authproxy/grpcframe"
	"github.com/authproxy/authproxy/transport"
)

// grpcServerOptions are those of an h2c: grpc sidecar's grpc-go server:
// every method goes to the sidecar's handler, messages stay bytes, and the
// listener's timeouts apply (handshake, idle connections).
func grpcServerOptions(s *sidecar, maxMsg int, readHeader, idle time.Duration) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.UnknownServiceHandler(s.serveGRPC),
		grpc.ForceServerCodec(transport.RawCodec),
		grpc.MaxRecvMsgSize(maxMsg),
		grpc.MaxSendMsgSize(maxMsg),
		// grpc-go's own default is 16 MiB: the proxy's one limit applies.
		grpc.MaxHeaderListSize(maxHeaderBytes),
		grpc.ConnectionTimeout(readHeader),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: idle}),
		// Clients' keepalive pings are welcome, as net/http takes them.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		// Idle client connections give their write buffers back.
		grpc.SharedWriteBuffer(true),
	}
}

// serveGRPC is the handler of every call on an h2c: grpc sidecar. It turns
// the call into the request the rest of the proxy knows (gRPC over HTTP:
// headers from the metadata, the messages as a framed body), sends it with
// core.send like any other, and relays the answer as grpc-go messages and
// status.
func (s *sidecar) serveGRPC(_ any, ss grpc.ServerStream) error {
	ctx := ss.Context()
	method, _ := grpc.MethodFromServerStream(ss)
	md, _ := metadata.FromIncomingContext(ctx)
	r := &http.Request{
		Method: http.MethodPost, URL: &url.URL{Path: method}, RequestURI: method,
		Proto: "HTTP/2.0", ProtoMajor: 2,
		Header: headerOf(md), Host: first(md, ":authority"),
		Body: &streamBody{ss: ss}, ContentLength: -1,
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		r.RemoteAddr = p.Addr.String()
	}
	if dl, ok := ctx.Deadline(); ok {
		// For the net/http path upstream; grpc-go takes it from ctx. Rounded
		// up, as grpc-go does, so it never ends before ctx.
		ms := (time.Until(dl) + time.Millisecond - 1) / time.Millisecond
		r.Header.Set("Grpc-Timeout", strconv.FormatInt(int64(max(ms, 1)), 10)+"m")
	}
	x, err := s.exchangeFor(r)
	if err != nil {
		s.core.logFailure(r, err)
		return grpcError(err)
	}
	// r is the proxy's own: the request sent upstream is a shallow copy
	// with its own URL (r keeps the client's Host and path, for the log).
	out := r.WithContext(ctx)
	out.RequestURI = ""
	u := *x.target
	u.Path = strings.TrimSuffix(u.Path, "/") + method
	u.RawPath = ""
	out.URL, out.Host = &u, ""
	resp, err := s.core.send(out, x)
	if err != nil {
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
		s.core.logFailure(r, err)
		return grpcError(err)
	}
	defer closeLater(resp.Body)
	return s.relay(ss, resp)
}

// closeLater closes a response body. net/http's HTTP/2 client waits in
// Close for its goroutine that copies the request body (golang/go#80085),
// which may sit in RecvMsg until the handler returns: such a body is closed
// once the handler has returned. grpc-go's bodies close at once.
func closeLater(body io.ReadCloser) {
	if _, call := upstreamCall(body); call != nil {
		_ = body.Close()
		return
	}
	go func() { _ = body.Close() }()
}

// callBody is a response body of transport.GRPC.
type callBody interface {
	grpcframe.MessageReader
	transport.CallEnd
}

// upstreamCall finds the grpc-go call under a response body that nothing
// wraps but endsRequest; nil for net/http's bodies and observers' wrappers.
func upstreamCall(body io.ReadCloser) (*endsRequest, callBody) {
	if e, ok := body.(*endsRequest); ok {
		if call, ok := e.ReadCloser.(callBody); ok {
			return e, call
		}
	}
	return nil, nil
}

// relay sends an upstream's answer to the client: its headers, each
// message, then its trailers and status.
func (s *sidecar) relay(ss grpc.ServerStream, resp *http.Response) error {
	if resp.StatusCode != http.StatusOK {
		return status.Errorf(httpToGRPC(resp.StatusCode), "authproxy: upstream answered HTTP %d", resp.StatusCode)
	}
	if resp.Header.Get("Grpc-Status") != "" { // Trailers-Only
		ss.SetTrailer(mdOf(resp.Header))
		return statusOf(resp.Header)
	}
	if err := ss.SendHeader(mdOf(resp.Header)); err != nil {
		return err
	}
	next, ended := messagesOf(resp.Body, s.core.up.GRPC.MaxMessage)
	for {
		msg, err := next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if ss.Context().Err() != nil {
				return status.FromContextError(ss.Context().Err()).Err()
			}
			s.core.log.Warn("upstream answer failed", "path", resp.Request.URL.Path, "err", err)
			if errors.Is(err, grpcframe.ErrTooLarge) {
				return status.Error(codes.ResourceExhausted, "authproxy: response message larger than upstream.grpc_max_message_bytes")
			}
			return status.Error(codes.Unavailable, "authproxy: upstream answer failed")
		}
		if err := ss.SendMsg(&msg); err != nil {
			return err
		}
	}
	if ended != nil { // grpc-go upstream: its status and trailers as they are
		st, md := ended.Ended()
		ss.SetTrailer(md)
		return st.Err()
	}
	ss.SetTrailer(mdOf(resp.Trailer))
	if resp.Trailer.Get("Grpc-Status") == "" {
		return status.Error(codes.Internal, "authproxy: upstream ended the call without a status")
	}
	return statusOf(resp.Trailer)
}

// messagesOf reads a response body message by message: straight from the
// upstream's grpc-go stream when nothing wraps it but endsRequest (then
// ended gives the call's status at the end), by parsing its frames
// otherwise (an observer reads or rewrites them; ended is nil).
func messagesOf(body io.ReadCloser, maxMsg int) (next func() ([]byte, error), ended transport.CallEnd) {
	if e, call := upstreamCall(body); call != nil {
		return func() ([]byte, error) {
			msg, err := call.ReadMessage()
			if err == io.EOF {
				e.once.Do(func() { _ = e.req.Close() })
			}
			return msg, err
		}, call
	}
	return func() ([]byte, error) { return grpcframe.ReadMessage(body, maxMsg) }, nil
}

// grpcError is the status for a request the proxy did not forward.
func grpcError(err error) error {
	_, code, msg := classify(err)
	return status.Error(code, msg)
}

// streamBody is a call's request messages as a request body: whole
// messages for grpcframe.MessageReader, framed bytes for io.Reader.
type streamBody struct {
	ss     grpc.ServerStream
	framed grpcframe.Framed
	closed atomic.Bool
}

func (b *streamBody) ReadMessage() ([]byte, error) {
	if b.closed.Load() {
		return nil, errors.New("request body closed")
	}
	var msg []byte
	if err := b.ss.RecvMsg(&msg); err != nil {
		return nil, err
	}
	return msg, nil
}

func (b *streamBody) Read(p []byte) (int, error) { return b.framed.Read(p, b) }

// Close stops further reads; a read in progress ends with the call.
func (b *streamBody) Close() error {
	b.closed.Store(true)
	return nil
}

// headerOf turns a call's metadata into request headers, as they travel on
// the wire (-bin values base64). Pseudo-headers, and the compression
// headers of the client's leg, which grpc-go has already undone, are left
// out.
func headerOf(md metadata.MD) http.Header {
	h := make(http.Header, len(md)+2)
	transport.CopyMD(h, md)
	h.Del("Grpc-Encoding")
	h.Del("Grpc-Accept-Encoding")
	if h.Get("Content-Type") == "" {
		h.Set("Content-Type", "application/grpc")
	}
	h.Set("Te", "trailers")
	return h
}

// mdOf turns response headers or trailers into metadata for grpc-go,
// leaving out what grpc-go writes itself (content type, status) and
// decoding -bin values; one that does not decode is dropped.
func mdOf(h http.Header) metadata.MD {
	md, _ := transport.MDOf(h, func(lk string) bool {
		switch lk {
		case "content-type", "grpc-status", "grpc-message", "grpc-status-details-bin", "grpc-encoding",
			"grpc-accept-encoding", "content-length", "trailer", "date":
			return true
		}
		return false
	})
	return md
}

// statusOf reads grpc-status, grpc-message and grpc-status-details-bin.
func statusOf(h http.Header) error {
	code, err := strconv.Atoi(h.Get("Grpc-Status"))
	if err != nil {
		return status.Error(codes.Unknown, "authproxy: upstream sent an invalid grpc-status")
	}
	if code == 0 {
		return nil
	}
	if d := h.Get("Grpc-Status-Details-Bin"); d != "" {
		if b, err := transport.DecodeBin(d); err == nil {
			var p spb.Status
			if proto.Unmarshal(b, &p) == nil && p.GetCode() == int32(code) {
				return status.FromProto(&p).Err()
			}
		}
	}
	return status.Error(codes.Code(code), decodeGRPCMessage(h.Get("Grpc-Message")))
}

// decodeGRPCMessage undoes grpc-message's percent-encoding; a malformed
// escape is kept as it is.
func decodeGRPCMessage(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// httpToGRPC maps an HTTP status that is not 200 to a gRPC code, as the
// gRPC spec's http-grpc-status-mapping does.
func httpToGRPC(s int) codes.Code {
	switch s {
	case http.StatusBadRequest:
		return codes.Internal
	case http.StatusUnauthorized:
		return codes.Unauthenticated
	case http.StatusForbidden:
		return codes.PermissionDenied
	case http.StatusNotFound:
		return codes.Unimplemented
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return codes.Unavailable
	}
	return codes.Unknown
}

func first(md metadata.MD, k string) string {
	if v := md.Get(k); len(v) > 0 {
		return v[0]
	}
	return ""
}
