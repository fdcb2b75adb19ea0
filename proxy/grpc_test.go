package proxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/sim"
	"github.com/authproxy/authproxy/tokencache"
)

// grpcUpstream starts a real grpc-go TLS server that rejects calls without
// the injected bearer.
func (e *env) grpcUpstream() (*sim.GRPCEcho, string) {
	e.t.Helper()
	tlsCfg, err := e.pki.ServerTLS(upstreamNames...)
	if err != nil {
		e.t.Fatal(err)
	}
	echo := &sim.GRPCEcho{Authorization: "Bearer " + secretToken}
	srv := echo.NewServer(tlsCfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	e.t.Cleanup(srv.Stop)
	return echo, port(e.t, ln.Addr().String())
}

// grpcConfig serves the gRPC upstream through a sidecar listener and a
// forward listener, with upstream_protocol auto.
func grpcConfig(grpcPort string) string { return grpcConfigWith(grpcPort, "auto") }

// grpcConfigWith is grpcConfig with the route's upstream_protocol (auto:
// HTTP/2 by ALPN, bridged to HTTP/1.1 if the upstream lacks it; http2:
// HTTP/2 or a failure).
func grpcConfigWith(grpcPort, protocol string) string {
	return fmt.Sprintf(`
listeners:
  - name: grpc
    kind: sidecar
    address: 127.0.0.1:0
    host: grpc.authproxy.test
    upstream: https://grpc.authproxy.test:%[1]s
  - name: fwd
    kind: forward
    address: 127.0.0.1:0
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
upstream:
  ca_file: "{{UPSTREAM_CA}}"
  resolve: {grpc.authproxy.test: 127.0.0.1}
timeouts: {shutdown: 5s}
injectors:
  bearer:
    kind: static
    headers:
      Authorization: {value: %[2]q, prefix: "Bearer "}
routes:
  - name: grpc
    match: {host: grpc.authproxy.test, path: /grpc.testing.TestService/*}
    injector: bearer
    upstream_protocol: %[3]s
`, grpcPort, secretToken, protocol)
}

// grpcModes are the route's upstream_protocol settings that carry gRPC.
var grpcModes = []struct{ name, protocol string }{
	{"upstream_protocol auto", "auto"},
	{"upstream_protocol http2", "http2"},
}

// The gRPC exercise on a sidecar (h2c) and through the forward listener
// (HTTPS_PROXY, interception), with a static, an oauth2 and an odil route,
// and for the static route with both upstream_protocol settings that
// carry gRPC. (openOBD's own calls are covered by the openOBD tests, on
// both listeners.)
func TestGRPCExerciseOnBothListenersAndCredentialKinds(t *testing.T) {
	for _, kind := range []string{"static", "oauth2", "odil"} {
		modes := grpcModes
		if kind != "static" {
			modes = modes[:1]
		}
		for _, m := range modes {
			for _, listener := range []string{"sidecar", "forward"} {
				t.Run(kind+"/"+m.name+"/"+listener, func(t *testing.T) {
					e := newEnv(t)
					e.injEnv = injectors.Env{Cache: tokencache.New(tokencache.Options{})}
					echo, grpcPort := e.grpcUpstream()
					yaml, valid := credentialKinds(t, e)[kind]()
					echo.AuthorizeMD = func(md metadata.MD) bool {
						h := http.Header{}
						for k, vs := range md {
							for _, v := range vs {
								h.Add(k, v)
							}
						}
						return valid(h)
					}
					cfg := grpcConfigWith(grpcPort, m.protocol)
					cfg = cfg[:strings.Index(cfg, "injectors:\n")] + "injectors:\n" + yaml + "\n" + cfg[strings.Index(cfg, "routes:\n"):]
					cfg = strings.Replace(cfg, "resolve: {grpc.authproxy.test: 127.0.0.1}", "resolve: {grpc.authproxy.test: 127.0.0.1, auth.authproxy.test: 127.0.0.1, odil.authproxy.test: 127.0.0.1}", 1)
					p := e.start(cfg, nil, nil)
					var conn *grpc.ClientConn
					if listener == "sidecar" {
						conn = dialPlain(t, p.addr("grpc"))
					} else {
						conn = e.forwardGRPC(t, p, grpcPort) // only the proxy's CA: every call is intercepted
					}
					user := func(u string) bool { return valid(http.Header{"Authorization": {u}}) }
					if kind == "odil" {
						user = func(u string) bool { return u == "" } // no authorization at all
					}
					exerciseGRPC(t, conn, echo, user)
				})
			}
		}
	}
}

// exerciseGRPC makes every kind of call the proxy must carry, and checks
// that a stream's headers reach the client before any message.
// user says whether the authorization the upstream saw is the route's.
func exerciseGRPC(t *testing.T, conn *grpc.ClientConn, echo *sim.GRPCEcho, user func(string) bool) {
	client := testpb.NewTestServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("unary with spoofed credential", func(t *testing.T) {
		octx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer spoofed")
		resp, err := client.UnaryCall(octx, &testpb.SimpleRequest{FillUsername: true, Payload: &testpb.Payload{Body: []byte("ping")}})
		if err != nil {
			t.Fatal(err)
		}
		if !user(resp.GetUsername()) || string(resp.GetPayload().GetBody()) != "ping" {
			t.Errorf("upstream saw authorization %q, payload %q", resp.GetUsername(), resp.GetPayload().GetBody())
		}
	})

	t.Run("metadata both ways and the deadline", func(t *testing.T) {
		binValue := "\x00\xffbinary\r\n"
		type seen struct {
			md       metadata.MD
			deadline time.Duration
		}
		calls := make(chan seen, 2)
		echo.OnCall = func(ctx context.Context) {
			md, _ := metadata.FromIncomingContext(ctx)
			dl, _ := ctx.Deadline()
			calls <- seen{md, time.Until(dl)}
		}
		defer func() { echo.OnCall = nil }()
		dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
		defer dcancel()
		octx := metadata.AppendToOutgoingContext(dctx, "x-grpc-test-echo-initial", "hello",
			"x-grpc-test-echo-trailing-bin", binValue, "x-app-bin", binValue, "x-app", "a", "x-app", "b")
		check := func(call string, header, trailer metadata.MD) {
			t.Helper()
			got := <-calls
			if v := got.md.Get("x-app-bin"); len(v) != 1 || v[0] != binValue {
				t.Errorf("%s: upstream got x-app-bin %q", call, v)
			}
			if v := got.md.Get("x-app"); len(v) != 2 || v[0] != "a" || v[1] != "b" {
				t.Errorf("%s: upstream got x-app %q", call, v)
			}
			if got.deadline <= 10*time.Second || got.deadline > 20*time.Second {
				t.Errorf("%s: upstream deadline in %v, want the client's 20s less the trip", call, got.deadline)
			}
			if v := header.Get("x-grpc-test-echo-initial"); len(v) != 1 || v[0] != "hello" {
				t.Errorf("%s: client got initial metadata %v", call, header)
			}
			if v := trailer.Get("x-grpc-test-echo-trailing-bin"); len(v) != 1 || v[0] != binValue {
				t.Errorf("%s: client got trailing metadata %v", call, trailer)
			}
		}
		var header, trailer metadata.MD
		if _, err := client.UnaryCall(octx, &testpb.SimpleRequest{}, grpc.Header(&header), grpc.Trailer(&trailer)); err != nil {
			t.Fatal(err)
		}
		check("unary", header, trailer)

		stream, err := client.FullDuplexCall(octx)
		if err != nil {
			t.Fatal(err)
		}
		// The client waits for the headers before it sends: the proxy must
		// pass them on before any message.
		if header, err = stream.Header(); err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("x")}}); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		_ = stream.CloseSend()
		if _, err := stream.Recv(); err != io.EOF {
			t.Fatalf("end of stream: %v", err)
		}
		check("bidi", header, stream.Trailer())
	})

	t.Run("compressed messages", func(t *testing.T) {
		body := bytes.Repeat([]byte("compressible "), 1000)
		resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{FillUsername: true, Payload: &testpb.Payload{Body: body}}, grpc.UseCompressor(gzip.Name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(resp.GetPayload().GetBody(), body) || !user(resp.GetUsername()) {
			t.Errorf("echoed %d bytes, upstream saw %q", len(resp.GetPayload().GetBody()), resp.GetUsername())
		}
	})

	t.Run("server streaming delivers each message as sent", func(t *testing.T) {
		received := make(chan int, 1)
		echo.StreamGate = func(sctx context.Context, i int) error {
			select {
			case got := <-received:
				if got != i {
					return status.Errorf(codes.Internal, "client reported message %d, want %d", got, i)
				}
				return nil
			case <-sctx.Done():
				return sctx.Err()
			case <-time.After(10 * time.Second):
				return status.Errorf(codes.DeadlineExceeded, "message %d did not reach the client while the stream was open", i)
			}
		}
		defer func() { echo.StreamGate = nil }()
		stream, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
			ResponseParameters: []*testpb.ResponseParameters{{Size: 10}, {Size: 20}, {Size: 30}, {Size: 40}},
		})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 4; i++ {
			msg, err := stream.Recv()
			if err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
			if body := msg.GetPayload().GetBody(); body[0] != byte(i) || len(body) != (i+1)*10 {
				t.Fatalf("message %d: got index %d, %d bytes", i, body[0], len(body))
			}
			if i < 3 {
				received <- i
			}
		}
		if _, err := stream.Recv(); err != io.EOF {
			t.Fatalf("end of stream: %v", err)
		}
	})

	t.Run("bidi ping-pong", func(t *testing.T) {
		stream, err := client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 50; i++ {
			want := []byte(fmt.Sprintf("ping-%d", i))
			if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: want}}); err != nil {
				t.Fatal(err)
			}
			msg, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(msg.GetPayload().GetBody(), want) {
				t.Fatalf("round %d: got %q", i, msg.GetPayload().GetBody())
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != io.EOF {
			t.Fatalf("end of stream: %v", err)
		}
	})

	t.Run("error status in trailers", func(t *testing.T) {
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.FailedPrecondition), Message: "präcondition failed"}})
		if st := status.Convert(err); st.Code() != codes.FailedPrecondition || st.Message() != "präcondition failed" {
			t.Errorf("unary: got %v", err)
		}
		stream, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
			ResponseParameters: []*testpb.ResponseParameters{{Size: 1}, {Size: 1}},
			ResponseStatus:     &testpb.EchoStatus{Code: int32(codes.ResourceExhausted), Message: "after two"},
		})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			if _, err := stream.Recv(); err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
		}
		if _, err := stream.Recv(); status.Code(err) != codes.ResourceExhausted {
			t.Errorf("status after messages: %v", err)
		}
	})

	t.Run("server ends a bidi stream while the client still sends", func(t *testing.T) {
		stream, err := client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("a")}}); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		// The client keeps its side open; the server ends the call.
		if err := stream.Send(&testpb.StreamingOutputCallRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.Aborted), Message: "server done"}}); err != nil {
			t.Fatal(err)
		}
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		defer scancel()
		got := make(chan error, 1)
		go func() { _, err := stream.Recv(); got <- err }()
		select {
		case err := <-got:
			if st := status.Convert(err); st.Code() != codes.Aborted || st.Message() != "server done" {
				t.Errorf("got %v, want the server's ABORTED", err)
			}
		case <-sctx.Done():
			t.Fatal("the server's status never reached the client")
		}
	})

	t.Run("cancel mid-stream leaves no goroutine behind", func(t *testing.T) {
		// Warm up the connection, then take the baseline.
		if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
		waitGoroutines(t, runtime.NumGoroutine(), 0)
		baseline := runtime.NumGoroutine()
		for i := 0; i < 5; i++ {
			sctx, scancel := context.WithCancel(ctx)
			stream, err := client.FullDuplexCall(sctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("x")}}); err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err != nil {
				t.Fatal(err)
			}
			scancel()
			if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
				t.Fatalf("after cancel: %v", err)
			}
		}
		waitGoroutines(t, baseline, 2)
	})
}

// failingInjector is a hand-written fake that always fails.
type failingInjector struct{ err error }

func (f failingInjector) Headers() []string               { return []string{"Authorization"} }
func (f failingInjector) Inject(*injectors.Request) error { return f.err }

func TestInjectorFailureNeverForwards(t *testing.T) {
	for _, tc := range []struct {
		name       string
		err        error
		wantCode   codes.Code
		wantStatus int
	}{
		{"unavailable", fmt.Errorf("%w: token endpoint down", injectors.ErrCredentialUnavailable), codes.Unavailable, http.StatusServiceUnavailable},
		{"rejected", fmt.Errorf("%w: invalid_client", injectors.ErrCredentialRejected), codes.Unauthenticated, http.StatusBadGateway},
	} {
		t.Run(tc.name, func(t *testing.T) { injectorFailure(t, tc.err, tc.wantCode, tc.wantStatus) })
	}
}

// injectorFailure checks that a call whose injector fails never reaches the
// upstream and gets the right status, on an h2c sidecar, over HTTP/1.1,
// and through the forward proxy.
func injectorFailure(t *testing.T, injErr error, wantCode codes.Code, wantStatus int) {
	e := newEnv(t)
	echo, grpcPort := e.grpcUpstream()
	p := e.start(grpcConfig(grpcPort), map[string]injectors.Injector{"bearer": failingInjector{injErr}}, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := grpcClient(t, p.addr("grpc")).UnaryCall(ctx, &testpb.SimpleRequest{})
	st := status.Convert(err)
	if st.Code() != wantCode || !strings.Contains(st.Message(), `route "grpc"`) {
		t.Errorf("gRPC client got %v, want %v naming the route", err, wantCode)
	}

	// The same failure, seen raw: a Trailers-Only response (status in
	// the HEADERS frame, no body, no trailers).
	req, _ := http.NewRequest("POST", "http://"+p.addr("grpc")+"/grpc.testing.TestService/UnaryCall", strings.NewReader("\x00\x00\x00\x00\x00"))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	resp, err := h2cClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Grpc-Status") != fmt.Sprint(int(wantCode)) || len(body) != 0 || len(resp.Trailer) != 0 {
		t.Errorf("raw response: %d grpc-status %q body %q trailers %v", resp.StatusCode, resp.Header.Get("Grpc-Status"), body, resp.Trailer)
	}

	// Plain HTTP clients get the HTTP status and a short text.
	resp, err = h1Client().Get("http://" + p.addr("grpc") + "/grpc.testing.TestService/UnaryCall")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != wantStatus || !strings.HasPrefix(string(body), "authproxy: ") {
		t.Errorf("HTTP client got %d %q, want %d", resp.StatusCode, body, wantStatus)
	}

	// Forward-proxy (intercepted) path: the same status.
	_, err = testpb.NewTestServiceClient(e.forwardGRPC(t, p, grpcPort)).UnaryCall(ctx, &testpb.SimpleRequest{})
	if st := status.Convert(err); st.Code() != wantCode {
		t.Errorf("intercepted gRPC client got %v, want %v", err, wantCode)
	}

	if n := echo.Calls(); n != 0 {
		t.Errorf("%d calls reached the upstream without their credential", n)
	}
	if !strings.Contains(p.logs.String(), injErr.Error()) {
		t.Errorf("the log lacks the injector's detail %q:\n%s", injErr, p.logs.String())
	}
}

// forwardGRPC is a gRPC client of the upstream at grpcPort through p's
// forward listener (HTTPS_PROXY, interception), trusting only the proxy's
// CA, closed at the end of the test.
func (e *env) forwardGRPC(t testing.TB, p *running, grpcPort string) *grpc.ClientConn {
	t.Helper()
	useEnvProxy(t, p.addr("fwd"))
	conn, err := grpc.NewClient("grpc.authproxy.test:"+grpcPort, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: e.proxyCA})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
