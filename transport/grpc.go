package transport

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/authproxy/authproxy/grpcframe"
)

// DefaultGRPCMaxMessage is the default of upstream.grpc_max_message_bytes.
const DefaultGRPCMaxMessage = 16 << 20

// GRPC carries gRPC requests over grpc-go client connections, one per
// upstream (scheme and host:port), instead of net/http's HTTP/2 client. It
// takes and returns gRPC over HTTP as net/http has it (a framed message
// stream as the body, grpc-status in the trailers, or in the headers of a
// Trailers-Only answer), so the proxy's stripping, injection, observers and
// retry work unchanged. Behind the proxy's own grpc-go server (h2c: grpc
// sidecars), messages pass through without being framed again. Requests it
// cannot carry as they are go to
// Fallback: compressed messages (grpc-go would recompress them) and paths
// that are not a plain /service/method.
//
// Messages are relayed whole, up to MaxMessage bytes each; the upstream sees
// user-agent "authproxy grpc-go/<version>" rather than the client's. A GRPC
// is safe for concurrent use.
type GRPC struct {
	// Fallback and FallbackH2C carry what GRPC does not, to https and to
	// cleartext (h2c) upstreams: net/http's HTTP/2 transports.
	Fallback, FallbackH2C http.RoundTripper
	// MaxMessage is the largest message relayed, each way.
	MaxMessage int

	dial  func(ctx context.Context, network, addr string) (net.Conn, error)
	tls   *tls.Config
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn // "https://host:port" or "http://host:port"
}

// rawCodec passes messages through as the bytes they are.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("raw codec: cannot marshal %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("raw codec: cannot unmarshal into %T", v)
	}
	*b = data
	return nil
}

// Name is "proto" so that grpc-go keeps the content-subtype the client
// chose (application/grpc, application/grpc+proto) as it is.
func (rawCodec) Name() string { return "proto" }

// RawCodec is the pass-through codec shared by the proxy's gRPC server and
// client: messages are *[]byte, never decoded.
var RawCodec encoding.Codec = rawCodec{}

var streamDesc = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// RoundTrip sends a gRPC request over the upstream's grpc-go connection.
// The response body streams the upstream's messages, framed; reading it to
// the end fills resp.Trailer with grpc-status, grpc-message and the
// upstream's trailers. Closing the body early cancels the call.
func (g *GRPC) RoundTrip(req *http.Request) (*http.Response, error) {
	if !g.carries(req) {
		if req.URL.Scheme == "http" {
			return g.FallbackH2C.RoundTrip(req)
		}
		return g.Fallback.RoundTrip(req)
	}
	md, err := outgoingMD(req.Header)
	if err != nil {
		return nil, err
	}
	cc, err := g.conn(req.URL.Scheme, req.URL.Host)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(req.Context())
	if d, ok := grpcTimeout(req.Header.Get("Grpc-Timeout")); ok && earlier(ctx, d) {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeout(ctx, d)
		inner := cancel
		cancel = func(err error) { inner(err); stop() }
	}
	cs, err := cc.NewStream(metadata.NewOutgoingContext(ctx, md), streamDesc, req.URL.Path,
		grpc.ForceCodec(RawCodec),
		grpc.MaxCallRecvMsgSize(g.MaxMessage), grpc.MaxCallSendMsgSize(g.MaxMessage))
	if err != nil {
		cancel(nil)
		return nil, err
	}
	body := &grpcBody{cs: cs, ctx: ctx, cancel: cancel}
	go body.send(req.Body, g.MaxMessage)

	resp := &http.Response{
		Status: "200 OK", StatusCode: http.StatusOK,
		Proto: "HTTP/2.0", ProtoMajor: 2,
		Header: http.Header{}, ContentLength: -1, Request: req,
	}
	hmd, _ := cs.Header() // nil: the call ended without headers (Trailers-Only, or a local failure)
	if hmd == nil {
		var msg []byte
		err := cs.RecvMsg(&msg)
		body.finish()
		setStatus(resp.Header, body.status(err), cs.Trailer())
		resp.Header.Set("Content-Type", "application/grpc")
		resp.Body, resp.ContentLength = http.NoBody, 0 // so the answer stays Trailers-Only
		return resp, nil
	}
	CopyMD(resp.Header, hmd)
	if resp.Header.Get("Content-Type") == "" {
		resp.Header.Set("Content-Type", "application/grpc")
	}
	resp.Trailer = http.Header{}
	body.trailer = resp.Trailer
	resp.Body = body
	return resp, nil
}

// earlier reports whether a timeout of d from now ends before ctx's own
// deadline (the proxy's gRPC server gives the call's deadline both ways).
func earlier(ctx context.Context, d time.Duration) bool {
	dl, ok := ctx.Deadline()
	return !ok || time.Now().Add(d).Before(dl)
}

// carries reports whether req can go over grpc-go as it is.
func (g *GRPC) carries(req *http.Request) bool {
	if req.URL.Scheme != "https" && req.URL.Scheme != "http" {
		return false
	}
	if enc := req.Header.Get("Grpc-Encoding"); enc != "" && enc != "identity" {
		return false
	}
	p := req.URL.Path
	return req.URL.RawQuery == "" && req.URL.RawPath == "" && len(p) > 1 && p[0] == '/' && strings.Count(p, "/") == 2
}

// conn returns the client connection to scheme://host, made on first use.
// grpc-go connects lazily and reconnects by itself.
func (g *GRPC) conn(scheme, host string) (*grpc.ClientConn, error) {
	key := scheme + "://" + host
	g.mu.Lock()
	defer g.mu.Unlock()
	if cc, ok := g.conns[key]; ok {
		return cc, nil
	}
	creds := insecure.NewCredentials()
	if scheme == "https" {
		creds = credentials.NewTLS(g.tls.Clone())
	}
	cc, err := grpc.NewClient("passthrough:///"+host,
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return g.dial(ctx, "tcp", addr) }),
		grpc.WithTransportCredentials(creds),
		grpc.WithNoProxy(),
		grpc.WithUserAgent("authproxy"))
	if err != nil {
		return nil, fmt.Errorf("grpc client for %s: %w", host, err)
	}
	if g.conns == nil {
		g.conns = map[string]*grpc.ClientConn{}
	}
	g.conns[key] = cc
	return cc, nil
}

// Close closes every client connection.
func (g *GRPC) Close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for k, cc := range g.conns {
		_ = cc.Close()
		delete(g.conns, k)
	}
}

// grpcBody is the response body of a call: the upstream's messages framed
// as on the wire. It also implements grpcframe.MessageReader, so the
// proxy's own gRPC server takes the messages without framing them.
type grpcBody struct {
	cs      grpc.ClientStream
	ctx     context.Context // the call's; its cause says why send stopped it
	cancel  context.CancelCauseFunc
	trailer http.Header

	framed grpcframe.Framed
	ended  bool
	st     *status.Status // how the call ended, once ReadMessage returned io.EOF
}

// sendFailure is the cause of a call that send cancelled: the request body
// failed (the client went away, a message over the limit).
type sendFailure struct{ err error }

func (f *sendFailure) Error() string { return f.err.Error() }
func (f *sendFailure) Unwrap() error { return f.err }

// send copies the request body's messages upstream, then half-closes. A
// body that fails (the client went away, a message over the limit) cancels
// the call.
func (b *grpcBody) send(src io.ReadCloser, max int) {
	if src == nil || src == http.NoBody {
		_ = b.cs.CloseSend()
		return
	}
	for {
		msg, err := grpcframe.ReadMessage(src, max)
		if err == io.EOF {
			_ = b.cs.CloseSend()
			return
		}
		if err != nil {
			b.cancel(&sendFailure{err})
			return
		}
		if err := b.cs.SendMsg(&msg); err != nil {
			return // the call ended; its status comes from RecvMsg
		}
	}
}

// status is the status a call ended with: grpc-go's, or the reason send
// stopped the call.
func (b *grpcBody) status(err error) *status.Status {
	if err == io.EOF {
		return status.New(codes.OK, "")
	}
	var sf *sendFailure
	if !errors.As(context.Cause(b.ctx), &sf) {
		return status.Convert(err)
	}
	switch {
	case errors.Is(sf.err, grpcframe.ErrTooLarge):
		return status.New(codes.ResourceExhausted, "authproxy: request message larger than upstream.grpc_max_message_bytes")
	case errors.Is(sf.err, grpcframe.ErrCompressed):
		return status.New(codes.Internal, "authproxy: compressed message without grpc-encoding")
	case errors.Is(sf.err, grpcframe.ErrBadFlag), errors.Is(sf.err, grpcframe.ErrTruncated):
		return status.New(codes.Internal, "authproxy: malformed gRPC frame in the request")
	}
	return status.New(codes.Canceled, "authproxy: the client's request ended early")
}

// ReadMessage returns the upstream's next message; at the end of the call
// it fills the trailer and returns io.EOF.
func (b *grpcBody) ReadMessage() ([]byte, error) {
	if b.ended {
		return nil, io.EOF
	}
	var msg []byte
	err := b.cs.RecvMsg(&msg)
	if err == nil {
		return msg, nil
	}
	b.ended = true
	b.finish()
	b.st = b.status(err)
	setStatus(b.trailer, b.st, b.cs.Trailer())
	return nil, io.EOF
}

// CallEnd is implemented by the response bodies of GRPC: once their last
// message has been read, the call's status and trailing metadata as
// grpc-go gave them (the same as the response's Trailer holds).
type CallEnd interface {
	Ended() (*status.Status, metadata.MD)
}

// Ended returns how the call ended; call it after ReadMessage returned
// io.EOF.
func (b *grpcBody) Ended() (*status.Status, metadata.MD) { return b.st, b.cs.Trailer() }

func (b *grpcBody) Read(p []byte) (int, error) { return b.framed.Read(p, b) }

// Close ends the call (cancelling it if it is still going).
func (b *grpcBody) Close() error {
	b.ended = true
	b.finish()
	return nil
}

// finish cancels the call's context, which also ends send.
func (b *grpcBody) finish() { b.cancel(context.Canceled) }

// setStatus writes a call's status and trailing metadata into h.
func setStatus(h http.Header, st *status.Status, md metadata.MD) {
	CopyMD(h, md)
	h.Set("Grpc-Status", strconv.Itoa(int(st.Code())))
	if msg := st.Message(); msg != "" {
		h.Set("Grpc-Message", EncodeGRPCMessage(msg))
	}
	if p := st.Proto(); len(p.GetDetails()) > 0 {
		if b, err := proto.Marshal(p); err == nil {
			h.Set("Grpc-Status-Details-Bin", base64.RawStdEncoding.EncodeToString(b))
		}
	}
}

// outgoingMD turns a request's headers into grpc-go metadata: the headers
// grpc-go sets itself and connection-level ones are left out, and -bin
// values are decoded (grpc-go encodes them again).
func outgoingMD(h http.Header) (metadata.MD, error) { return MDOf(h, skipHeader) }

// MDOf turns headers into grpc-go metadata, leaving out those skip names
// (it gets the lower-case name) and decoding -bin values from base64. A
// -bin value that does not decode is left out, and the first such is
// returned as the error.
func MDOf(h http.Header, skip func(lowerName string) bool) (metadata.MD, error) {
	md := make(metadata.MD, len(h))
	var bad error
	for k, vs := range h {
		lk := strings.ToLower(k)
		if skip(lk) {
			continue
		}
		if strings.HasSuffix(lk, "-bin") {
			dec := make([]string, 0, len(vs))
			for _, v := range vs {
				b, err := DecodeBin(v)
				if err != nil {
					if bad == nil {
						bad = fmt.Errorf("header %s: %w", k, err)
					}
					continue
				}
				dec = append(dec, string(b))
			}
			vs = dec
		}
		md[lk] = vs
	}
	return md, bad
}

// skipHeader reports the headers grpc-go writes itself or that do not
// belong to one call.
func skipHeader(lk string) bool {
	switch lk {
	case "content-type", "user-agent", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding",
		"grpc-message-type", "grpc-status", "grpc-message", "host", "connection", "keep-alive",
		"proxy-connection", "transfer-encoding", "upgrade", "trailer", "content-length":
		return true
	}
	return lk == "" || lk[0] == ':'
}

// CopyMD adds grpc-go metadata to an http.Header, encoding -bin values as
// they travel on the wire and leaving out pseudo-headers.
func CopyMD(h http.Header, md metadata.MD) {
	for k, vs := range md {
		if k == "" || k[0] == ':' {
			continue
		}
		ck := http.CanonicalHeaderKey(k)
		for _, v := range vs {
			if strings.HasSuffix(k, "-bin") {
				v = base64.RawStdEncoding.EncodeToString([]byte(v))
			}
			h[ck] = append(h[ck], v)
		}
	}
}

// DecodeBin decodes a -bin header value, padded or not.
func DecodeBin(v string) ([]byte, error) {
	if len(v)%4 == 0 {
		return base64.StdEncoding.DecodeString(v)
	}
	return base64.RawStdEncoding.DecodeString(v)
}

// grpcTimeout parses a grpc-timeout header ("100m", "5S").
func grpcTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	unit := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second,
		'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}[v[len(v)-1]]
	if unit == 0 {
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// EncodeGRPCMessage percent-encodes as the gRPC HTTP/2 spec requires for
// grpc-message: bytes outside printable ASCII, and '%'.
func EncodeGRPCMessage(msg string) string {
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
