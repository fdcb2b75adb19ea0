package proxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/sim"
)

// trickleConn writes its first n bytes one at a time, with a pause after
// each, as a slow client might send the HTTP/2 preface.
type trickleConn struct {
	net.Conn
	n int
}

func (c *trickleConn) Write(p []byte) (int, error) {
	written := 0
	for c.n > 0 && len(p) > 0 {
		if _, err := c.Conn.Write(p[:1]); err != nil {
			return written, err
		}
		p, written, c.n = p[1:], written+1, c.n-1
		time.Sleep(2 * time.Millisecond)
	}
	n, err := c.Conn.Write(p)
	return written + n, err
}

// rawGRPC makes a unary call as plain HTTP/2 (framed body, status in the
// trailers), through dial.
func rawGRPC(t *testing.T, addr string, dial func(string) (net.Conn, error), req proto.Message) (*http.Response, []byte) {
	t.Helper()
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(_ context.Context, _, a string, _ *tls.Config) (net.Conn, error) { return dial(a) }}
	defer tr.CloseIdleConnections()
	msg, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	body := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg)))
	r, _ := http.NewRequest("POST", "http://"+addr+"/grpc.testing.TestService/UnaryCall", bytes.NewReader(append(body, msg...)))
	r.Header.Set("Content-Type", "application/grpc")
	r.Header.Set("Te", "trailers")
	resp, err := tr.RoundTrip(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func TestGRPCListenerSplitsConnections(t *testing.T) {
	e := newEnv(t)
	echo, grpcPort := e.grpcUpstream()
	cfg := strings.Replace(grpcConfig(grpcPort), "timeouts: {shutdown: 5s}", "timeouts: {shutdown: 5s, read_header: 300ms}", 1)
	p := e.start(cfg, nil, nil)
	addr := p.addr("grpc")

	t.Run("HTTP/1.1 is served by net/http", func(t *testing.T) {
		resp, err := h1Client().Get("http://" + addr + "/not/a/route")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || !strings.HasPrefix(string(b), "authproxy: no route") {
			t.Errorf("got %d %q, want the sidecar's 404", resp.StatusCode, b)
		}
	})

	t.Run("h2c that is not gRPC is served by the relay", func(t *testing.T) {
		resp, err := h2cClient().Get("http://" + addr + "/not/a/route")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || resp.ProtoMajor != 2 || !strings.HasPrefix(string(b), "authproxy: no route") {
			t.Errorf("got %s %d %q, want the sidecar's 404 over HTTP/2", resp.Proto, resp.StatusCode, b)
		}
		if n := echo.Calls(); n != 0 {
			t.Errorf("%d calls reached the upstream", n)
		}
	})

	t.Run("a preface sent byte by byte", func(t *testing.T) {
		dial := func(a string) (net.Conn, error) {
			c, err := net.Dial("tcp", a)
			return &trickleConn{Conn: c, n: 24}, err
		}
		resp, body := rawGRPC(t, addr, dial, &testpb.SimpleRequest{FillUsername: true, Payload: &testpb.Payload{Body: []byte("slow")}})
		if resp.StatusCode != 200 || resp.Trailer.Get("Grpc-Status") != "0" || len(body) < 5 {
			t.Fatalf("got %d, trailers %v, %d body bytes", resp.StatusCode, resp.Trailer, len(body))
		}
		var out testpb.SimpleResponse
		if err := proto.Unmarshal(body[5:], &out); err != nil {
			t.Fatal(err)
		}
		if string(out.GetPayload().GetBody()) != "slow" || out.GetUsername() != "Bearer "+secretToken {
			t.Errorf("got payload %q, upstream saw %q", out.GetPayload().GetBody(), out.GetUsername())
		}
	})

	for _, tc := range []struct{ name, send string }{
		{"a silent connection is closed at read_header", ""},
		{"a stalled preface is closed at read_header", "PRI * HTTP/2.0\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_, _ = io.WriteString(c, tc.send)
			start := time.Now()
			waitClosed(t, c, 10*time.Second)
			if d := time.Since(start); d < 200*time.Millisecond {
				t.Errorf("closed after %v, before read_header (300ms)", d)
			}
		})
	}
}

// On shutdown a call in flight finishes within timeouts.shutdown and is cut
// past it, on a sidecar and through the forward listener alike, while the
// listener stops accepting at once.
func TestGRPCListenerShutdown(t *testing.T) {
	for _, tc := range []struct {
		name, bound, listener string
		release               bool
	}{
		{"calls in flight finish", "10s", "sidecar", true},
		{"calls past the bound are cut", "300ms", "sidecar", false},
		{"forward: calls in flight finish", "10s", "forward", true},
		{"forward: calls past the bound are cut", "300ms", "forward", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			echo, grpcPort := e.grpcUpstream()
			started, release := make(chan struct{}), make(chan struct{})
			echo.StreamGate = func(ctx context.Context, i int) error {
				close(started)
				select {
				case <-release:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			cfg := strings.Replace(grpcConfig(grpcPort), "timeouts: {shutdown: 5s}", "timeouts: {shutdown: "+tc.bound+"}", 1)
			p := e.start(cfg, nil, nil)
			listener := "grpc"
			var client testpb.TestServiceClient
			if tc.listener == "sidecar" {
				client = grpcClient(t, p.addr("grpc"))
			} else {
				listener = "fwd"
				client = testpb.NewTestServiceClient(e.forwardGRPC(t, p, grpcPort))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() {
				stream, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
					ResponseParameters: []*testpb.ResponseParameters{{Size: 1}, {Size: 1}},
				})
				for i := 0; err == nil; i++ {
					_, err = stream.Recv()
				}
				if err == io.EOF {
					err = nil
				}
				done <- err
			}()
			select {
			case <-started:
			case <-ctx.Done():
				t.Fatal("the call never reached the upstream")
			}
			stopped := make(chan error, 1)
			go func() { stopped <- p.stop() }()
			waitRefused(t, p.addr(listener))
			if tc.release {
				select {
				case err := <-stopped:
					t.Fatalf("Run returned (%v) while a call was in flight", err)
				default:
				}
				close(release)
				if err := <-done; err != nil {
					t.Errorf("the call in flight: %v, want it completed", err)
				}
			} else if err := <-done; err == nil {
				t.Error("a hung call completed normally after the drain bound")
			}
			if err := <-stopped; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
}

// An upstream that cannot be reached gives the client UNAVAILABLE with the
// proxy's short message, whichever way each leg goes; the detail is logged.
func TestGRPCUpstreamUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := port(t, ln.Addr().String())
	ln.Close()
	for _, m := range grpcModes {
		t.Run(m.name, func(t *testing.T) {
			e := newEnv(t)
			p := e.start(grpcConfigWith(closedPort, m.protocol), nil, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := grpcClient(t, p.addr("grpc")).UnaryCall(ctx, &testpb.SimpleRequest{})
			if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != `authproxy: upstream unavailable (route "grpc")` {
				t.Errorf("got %v, want UNAVAILABLE from the proxy", err)
			}
			if logs := p.logs.String(); !strings.Contains(logs, "connection refused") {
				t.Errorf("the log lacks the cause:\n%s", logs)
			}
		})
	}
}

// With unmatched: pass, a call no route matches goes to the listener's
// upstream untouched: the client's own credential, nothing added.
func TestGRPCListenerUnmatchedPass(t *testing.T) {
	for _, m := range grpcModes {
		t.Run(m.name, func(t *testing.T) {
			e := newEnv(t)
			echo, grpcPort := e.grpcUpstream()
			cfg := strings.Replace(grpcConfigWith(grpcPort, m.protocol), "    host: grpc.authproxy.test\n", "    host: grpc.authproxy.test\n    unmatched: pass\n", 1)
			cfg = strings.Replace(cfg, "path: /grpc.testing.TestService/*", "path: /other.Service/*", 1)
			p := e.start(cfg, nil, nil)
			client := grpcClient(t, p.addr("grpc"))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); status.Code(err) != codes.Unauthenticated {
				t.Errorf("without a credential of its own: %v, want the upstream's UNAUTHENTICATED", err)
			}
			own := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+secretToken)
			resp, err := client.UnaryCall(own, &testpb.SimpleRequest{FillUsername: true})
			if err != nil || resp.GetUsername() != "Bearer "+secretToken {
				t.Errorf("with its own credential: %v, upstream saw %q", err, resp.GetUsername())
			}
			if n := echo.Calls(); n != 1 {
				t.Errorf("%d calls accepted upstream, want 1", n)
			}
		})
	}
}

// failingListener accepts nothing and fails once fail is closed, as a
// listener whose socket broke does.
type failingListener struct {
	net.Listener
	fail chan struct{}
}

func (l *failingListener) Accept() (net.Conn, error) {
	<-l.fail
	return nil, errors.New("accept: injected failure")
}

// When the socket of a sidecar listener fails, both of its servers (net/http
// and the relay) stop with the error; Run must return it rather than hang.
func TestGRPCListenerFailureEndsRun(t *testing.T) {
	e := newEnv(t)
	cfg, err := parseConfig(e, `
listeners:
  - {name: grpc, kind: sidecar, address: 127.0.0.1:0, upstream: "https://127.0.0.1:1"}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: x}}}
routes:
  - {name: all, match: {path: /*}, injector: bearer}
`)
	if err != nil {
		t.Fatal(err)
	}
	base, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &failingListener{Listener: base, fail: make(chan struct{})}
	defer ln.Close()
	injs, err := injectors.BuildAll(cfg, injectors.Env{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(cfg, injs, proxy.Options{Listeners: map[string]net.Listener{"grpc": ln}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(context.Background()) }()
	<-srv.Ready()
	close(ln.fail)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "injected failure") {
			t.Errorf("Run returned %v, want the listener's failure", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its listener failed")
	}
}

// grpcClient dials a sidecar with insecure credentials, as applications
// do; the connection is closed when the test ends.
func grpcClient(t testing.TB, addr string) testpb.TestServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return testpb.NewTestServiceClient(conn)
}

// waitRefused waits until addr refuses new connections.
func waitRefused(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the listener still accepts connections during shutdown")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A token the upstream stops accepting (UNAUTHENTICATED) is dropped and
// the call is sent once more with a fresh one, its message replayed.
func TestGRPCRetriesWithFreshToken(t *testing.T) {
	for _, m := range grpcModes {
		t.Run(m.name, func(t *testing.T) {
			e := newEnv(t)
			ts := &sim.TokenServer{ClientID: "fleet-app", ClientSecret: secretToken}
			auth := e.httpsUpstream(ts)
			echo, grpcPort := e.grpcUpstream()
			echo.Authorize = func(a string) bool { return strings.HasPrefix(a, "Bearer ") && ts.Valid(a[len("Bearer "):]) }
			cfg := strings.Replace(grpcConfigWith(grpcPort, m.protocol), `  bearer:
    kind: static
    headers:
      Authorization: {value: "`+secretToken+`", prefix: "Bearer "}`, fmt.Sprintf(`  bearer:
    kind: oauth2
    token_url: "https://127.0.0.1:%s/token"
    client_id: {value: fleet-app}
    client_secret: {value: %q}`, port(t, auth.URL), secretToken), 1)
			// A token younger than min_backoff is never dropped (a storm guard).
			cfg = strings.Replace(cfg, "timeouts: {shutdown: 5s}", "timeouts: {shutdown: 5s}\ntoken_cache: {min_backoff: 10ms}", 1)
			p := e.start(cfg, nil, nil)
			client := grpcClient(t, p.addr("grpc"))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			call := func(body string) {
				t.Helper()
				resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte(body)}})
				if err != nil {
					t.Fatalf("%s: %v", body, err)
				}
				if got := string(resp.GetPayload().GetBody()); got != body {
					t.Fatalf("%s: echoed %q", body, got)
				}
			}
			call("first")
			time.Sleep(20 * time.Millisecond) // past min_backoff
			revokeAll(ts, t)
			call("after revocation")
			call("third")
			if n := ts.Calls(); n != 2 {
				t.Errorf("%d token requests, want 2 (one at start, one after the revocation)", n)
			}
			if n := echo.Calls(); n != 3 {
				t.Errorf("%d calls accepted upstream, want 3", n)
			}
		})
	}
}
