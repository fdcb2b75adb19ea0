package proxy_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// resettingUpstream is an HTTP/2 upstream over TLS (ALPN h2) that answers
// no stream: it resets each with the code its x-reset-code header names,
// as a grpc-go server ends an expired call.
func resettingUpstream(t *testing.T, cfg *tls.Config) string {
	return h2Upstream(t, cfg, func(c *h2UpConn, f *http2.MetaHeadersFrame) {
		for _, hf := range f.RegularFields() {
			if hf.Name == "x-reset-code" {
				code, _ := strconv.Atoi(hf.Value)
				_ = c.fr.WriteRSTStream(f.StreamID, http2.ErrCode(code))
				return
			}
		}
		_ = c.fr.WriteRSTStream(f.StreamID, http2.ErrCodeNo)
	})
}

// resetCodes are the RST_STREAM codes of RFC 9113 §7 an upstream may send.
var resetCodes = []http2.ErrCode{
	http2.ErrCodeNo, http2.ErrCodeProtocol, http2.ErrCodeInternal, http2.ErrCodeFlowControl,
	http2.ErrCodeStreamClosed, http2.ErrCodeFrameSize, http2.ErrCodeRefusedStream, http2.ErrCodeCancel,
	http2.ErrCodeCompression, http2.ErrCodeConnect, http2.ErrCodeEnhanceYourCalm,
	http2.ErrCodeInadequateSecurity, http2.ErrCodeHTTP11Required,
}

// An upstream's RST_STREAM before any answer reaches an HTTP/2 client as
// an RST_STREAM with the same code, on a sidecar (h2c) and through the
// forward listener (intercepted h2): to a raw HTTP/2 client, and to grpc-go,
// which then sees the status it sees without the proxy (CANCELLED,
// INTERNAL, RESOURCE_EXHAUSTED…, not the proxy's UNAVAILABLE). The proxy
// logs no upstream failure for it.
func TestUpstreamResetsPassThroughWithTheirCodes(t *testing.T) {
	e := newEnv(t)
	tlsCfg, err := e.pki.ServerTLS(upstreamNames...)
	if err != nil {
		t.Fatal(err)
	}
	up := resettingUpstream(t, tlsCfg)
	grpcPort := port(t, up)
	p := e.start(grpcConfig(grpcPort), nil, nil)
	target := "grpc.authproxy.test:" + grpcPort

	for _, mode := range []string{"sidecar", "forward"} {
		for _, code := range resetCodes {
			var c *rawH2
			head := request("POST", "http", "grpc.authproxy.test", "/grpc.testing.TestService/UnaryCall", "content-type", "application/grpc", "te", "trailers", "x-reset-code", strconv.Itoa(int(code)))
			if mode == "sidecar" {
				c = dialH2C(t, p.addr("grpc"))
			} else {
				c = dialInterceptedH2(t, p.addr("fwd"), target, e.proxyCA)
				head = request("POST", "https", target, "/grpc.testing.TestService/UnaryCall", "content-type", "application/grpc", "te", "trailers", "x-reset-code", strconv.Itoa(int(code)))
			}
			c.headers(1, head, true, false)
			if a := c.read(1); !a.reset || a.code != code {
				t.Errorf("%s, upstream reset %v: the client got %+v, want RST_STREAM %v", mode, code, a, code)
			}
		}
	}

	// grpc-go, direct and through each listener kind. REFUSED_STREAM is
	// left out: grpc-go retries it by itself.
	roots := x509.NewCertPool()
	pem, _ := os.ReadFile(e.pki.CAFile)
	roots.AppendCertsFromPEM(pem)
	direct, err := grpc.NewClient(up, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "grpc.authproxy.test"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { direct.Close() })
	clients := map[string]testpb.TestServiceClient{
		"sidecar": grpcClient(t, p.addr("grpc")),
		"forward": testpb.NewTestServiceClient(e.forwardGRPC(t, p, grpcPort)),
	}
	call := func(c testpb.TestServiceClient, code http2.ErrCode) *status.Status {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, "x-reset-code", strconv.Itoa(int(code)))
		_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
		return status.Convert(err)
	}
	for _, code := range resetCodes {
		if code == http2.ErrCodeRefusedStream {
			continue
		}
		want := call(testpb.NewTestServiceClient(direct), code)
		for mode, c := range clients {
			if got := call(c, code); got.Code() != want.Code() || strings.Contains(got.Message(), "authproxy") {
				t.Errorf("%s, upstream reset %v: grpc-go got %v %q; direct it gets %v %q", mode, code, got.Code(), got.Message(), want.Code(), want.Message())
			}
		}
	}
	if logs := p.logs.String(); strings.Contains(logs, "upstream unavailable") || strings.Contains(logs, "level=WARN") {
		t.Errorf("an upstream's reset was logged as the proxy's failure:\n%.3000s", logs)
	}

	// An HTTP/1.1 client, whose request goes to the HTTP/2 upstream through
	// Go's client, gets the gateway's 502.
	for _, code := range []http2.ErrCode{http2.ErrCodeCancel, http2.ErrCodeInternal} {
		req, _ := http.NewRequest("POST", "http://"+p.addr("grpc")+"/grpc.testing.TestService/UnaryCall", strings.NewReader(""))
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("X-Reset-Code", strconv.Itoa(int(code)))
		resp, err := h1Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("HTTP/1.1, upstream reset %v: %d, want 502", code, resp.StatusCode)
		}
	}
}

// Frames RFC 9113 forbids in a stream's state are answered as it says, on a
// sidecar (h2c) and through the forward listener (intercepted h2):
// RST_STREAM or WINDOW_UPDATE on an idle stream ends the connection
// (PROTOCOL_ERROR, §5.1); HEADERS on a half-closed (remote) stream, and
// DATA after the client's own RST_STREAM, reset it (STREAM_CLOSED); a PRIORITY or a HEADERS that makes a stream depend on
// itself resets it (PROTOCOL_ERROR, §5.3.1), and that request never
// reaches the upstream; a content-length that differs from the DATA
// received resets the stream (PROTOCOL_ERROR, §8.1.1), as the client's
// error, not the upstream's.
func TestStreamStateErrorsAsRFC9113Says(t *testing.T) {
	e := newEnv(t)
	var selfSeen atomic.Int64 // requests for the self-dependent stream's path
	up := e.httpsUpstream(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/self" {
			selfSeen.Add(1)
		}
		if r.URL.Path == "/v1/hold" {
			<-r.Context().Done() // answers nothing while the test sends its frames
		}
		// The whole body before the answer: an answer that came first would
		// end the stream before the relay sees the body's end.
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	p := e.start(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, host: api.authproxy.test, upstream: "https://api.authproxy.test:%[1]s"}
  - {name: fwd, kind: forward, address: 127.0.0.1:0}
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1}}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: %[2]q, prefix: "Bearer "}}}
routes:
  - {name: api, match: {host: api.authproxy.test, path: /v1/*}, injector: bearer}
`, port(t, up.URL), secretToken), nil, nil)
	target := "api.authproxy.test:" + port(t, up.URL)
	for _, mode := range []string{"sidecar", "forward"} {
		dial := func() (*rawH2, func(path string) []hpack.HeaderField) {
			if mode == "sidecar" {
				return dialH2C(t, p.addr("app")), func(path string) []hpack.HeaderField {
					return request("GET", "http", "api.authproxy.test", path)
				}
			}
			return dialInterceptedH2(t, p.addr("fwd"), target, e.proxyCA), func(path string) []hpack.HeaderField {
				return request("GET", "https", target, path)
			}
		}
		t.Run(mode+"/RST_STREAM on an idle stream", func(t *testing.T) {
			c, _ := dial()
			c.write(func() { c.fr.WriteRSTStream(5, http2.ErrCodeCancel) })
			if a := c.read(5); !a.goAway || a.goCode != http2.ErrCodeProtocol {
				t.Errorf("got %+v, want GOAWAY PROTOCOL_ERROR", a)
			}
		})
		t.Run(mode+"/WINDOW_UPDATE on an idle stream", func(t *testing.T) {
			c, _ := dial()
			c.write(func() { c.fr.WriteWindowUpdate(7, 100) })
			if a := c.read(7); !a.goAway || a.goCode != http2.ErrCodeProtocol {
				t.Errorf("got %+v, want GOAWAY PROTOCOL_ERROR", a)
			}
		})
		t.Run(mode+"/HEADERS on a half-closed stream", func(t *testing.T) {
			c, head := dial()
			c.headers(1, head("/v1/hold"), true, false)
			c.headers(1, head("/v1/hold"), true, false)
			if a := c.read(1); !a.reset || a.code != http2.ErrCodeStreamClosed {
				t.Errorf("got %+v, want RST_STREAM STREAM_CLOSED", a)
			}
		})
		t.Run(mode+"/DATA after the client's own RST_STREAM", func(t *testing.T) {
			c, head := dial()
			h := head("/v1/hold")
			h[0].Value = "POST"
			c.headers(1, h, false, false)
			c.write(func() { c.fr.WriteRSTStream(1, http2.ErrCodeCancel) })
			c.data(1, []byte("late"), false)
			if a := c.read(1); !a.reset || a.code != http2.ErrCodeStreamClosed {
				t.Errorf("got %+v, want RST_STREAM STREAM_CLOSED", a)
			}
		})
		t.Run(mode+"/DATA after the client's END_STREAM, the stream over", func(t *testing.T) {
			c, head := dial()
			c.headers(1, head("/v1/ok"), true, false)
			if a := c.read(1); a.status != 200 {
				t.Fatalf("the stream: %+v, want 200", a)
			}
			c.data(1, []byte("late"), false)
			if a := c.read(1); !a.reset || a.code != http2.ErrCodeStreamClosed {
				t.Errorf("got %+v, want RST_STREAM STREAM_CLOSED", a)
			}
		})
		t.Run(mode+"/content-length and DATA differ", func(t *testing.T) {
			c, head := dial()
			for i, tc := range []struct {
				length, body string
				end          bool // END_STREAM on HEADERS: no DATA at all
			}{
				{"10", "12345", false},
				{"3", "12345", false},
				{"7", "", true},
				{"5", "12345", false}, // the one that is right
			} {
				id := uint32(2*i + 1)
				h := append(head("/v1/len"), hpack.HeaderField{Name: "content-length", Value: tc.length})
				h[0].Value = "POST"
				c.headers(id, h, tc.end, false)
				if !tc.end {
					c.data(id, []byte(tc.body), true)
				}
				a := c.read(id)
				if tc.length == "5" {
					if a.status != 200 {
						t.Errorf("content-length 5 with 5 bytes: %+v, want 200", a)
					}
					continue
				}
				if !a.reset || a.code != http2.ErrCodeProtocol {
					t.Errorf("content-length %s with %q: %+v, want RST_STREAM PROTOCOL_ERROR", tc.length, tc.body, a)
				}
			}
			if strings.Contains(p.logs.String(), "upstream unavailable") {
				t.Errorf("the client's malformed request was counted against the upstream:\n%s", p.logs.String())
			}
		})
		t.Run(mode+"/a stream that depends on itself", func(t *testing.T) {
			c, head := dial()
			c.headers(1, head("/v1/hold"), true, false)
			c.write(func() { c.fr.WritePriority(1, http2.PriorityParam{StreamDep: 1, Weight: 15}) })
			if a := c.read(1); !a.reset || a.code != http2.ErrCodeProtocol {
				t.Errorf("PRIORITY: got %+v, want RST_STREAM PROTOCOL_ERROR", a)
			}
			c.hb.Reset()
			for _, f := range head("/v1/self") {
				c.enc.WriteField(f)
			}
			c.write(func() {
				c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: c.hb.Bytes(), EndStream: true, EndHeaders: true,
					Priority: http2.PriorityParam{StreamDep: 3, Weight: 15}})
			})
			if a := c.read(3); !a.reset || a.code != http2.ErrCodeProtocol {
				t.Errorf("HEADERS: got %+v, want RST_STREAM PROTOCOL_ERROR", a)
			}
			// A well-formed stream after it is served: the connection lives.
			c.headers(5, head("/v1/ok"), true, false)
			if a := c.read(5); a.status != 200 {
				t.Errorf("the next stream: %+v, want 200", a)
			}
			if n := selfSeen.Load(); n != 0 {
				t.Errorf("the self-dependent request reached the upstream %d times", n)
			}
		})
	}
}
