package proxy_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/sim"
)

// relayConfig is sidecarConfig on an h2c: relay listener.
func relayConfig(upstreamPort, unmatched string) string {
	return strings.Replace(sidecarConfig(upstreamPort, unmatched), "    unmatched: ", "    h2c: relay\n    unmatched: ", 1)
}

// An h2c: relay listener relays HTTP/2 frame by frame: the credential is
// injected and the client's stripped, everything else arrives as sent, and
// HTTP/1.1 on the same port still goes through net/http.
func TestRelayInjectsAndStrips(t *testing.T) {
	e := newEnv(t)
	up := e.httpsUpstream(&sim.Echo{})
	p := e.start(relayConfig(port(t, up.URL), "deny"), nil, nil)
	for _, tc := range []struct {
		name                  string
		client                *http.Client
		wantProto, upstreamIs string
	}{
		{"h2c, relayed", h2cClient(), "HTTP/2.0", "HTTP/2.0"},
		{"http1 on the same port", h1Client(), "HTTP/1.1", "HTTP/1.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkInjectsAndStrips(t, tc.client, "http://"+p.addr("app")+"/v1/things?q=1", tc.wantProto, tc.upstreamIs, port(t, up.URL))
		})
	}
	t.Run("unmatched is denied by the proxy", func(t *testing.T) {
		resp, err := h2cClient().Get("http://" + p.addr("app") + "/other")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || string(body) != "authproxy: no route matches this request\n" {
			t.Errorf("got %d %q, want 404 naming the missing route", resp.StatusCode, body)
		}
	})
}

// Bodies far larger than the relay's windows pass whole, both ways, on
// several streams of one connection at once: flow control on each hop
// neither loses nor stalls data.
func TestRelayStreamsLargeBodies(t *testing.T) {
	const size = 24 << 20
	e := newEnv(t)
	up := e.httpsUpstream(&sim.Echo{})
	p := e.start(relayConfig(port(t, up.URL), "deny"), nil, nil)
	want := sha256.New()
	if _, err := io.Copy(want, io.LimitReader(&sim.Pattern{}, size)); err != nil {
		t.Fatal(err)
	}
	wantSum := hex.EncodeToString(want.Sum(nil))
	client := h2cClient() // one connection for every stream
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() {
			req, _ := http.NewRequest("POST", "http://"+p.addr("app")+"/v1/upload", io.LimitReader(&sim.Pattern{}, size))
			req.ContentLength = -1
			resp, err := client.Do(req)
			if err != nil {
				t.Errorf("upload %d: %v", i, err)
				return
			}
			if seen := decodeSeen(t, resp); seen.BodyBytes != size || seen.BodySHA != wantSum {
				t.Errorf("upload %d: upstream got %d bytes, sha match %v", i, seen.BodyBytes, seen.BodySHA == wantSum)
			}
		})
		wg.Go(func() {
			resp, err := client.Get(fmt.Sprintf("http://%s/v1/download?size=%d", p.addr("app"), size))
			if err != nil {
				t.Errorf("download %d: %v", i, err)
				return
			}
			defer resp.Body.Close()
			h := sha256.New()
			n, err := io.Copy(h, resp.Body)
			if err != nil || n != size || hex.EncodeToString(h.Sum(nil)) != wantSum {
				t.Errorf("download %d: %d bytes (err %v), sha match %v", i, n, err, hex.EncodeToString(h.Sum(nil)) == wantSum)
			}
		})
	}
	wg.Wait()
}

// A client that reads slowly holds the upstream back (flow control on each
// hop, no unbounded queue in between), and a client that goes away
// mid-response ends the upstream's stream.
func TestRelayBackpressureAndCancel(t *testing.T) {
	e := newEnv(t)
	var written atomic.Int64
	upstreamDone := make(chan struct{})
	up := e.httpsUpstream(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/download" {
			return // 200, empty
		}
		defer close(upstreamDone)
		chunk := make([]byte, 32<<10)
		for written.Load() < 256<<20 {
			n, err := w.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	}))
	p := e.start(relayConfig(port(t, up.URL), "deny"), nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+p.addr("app")+"/v1/download", nil)
	resp, err := h2cClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 32<<10)); err != nil {
		t.Fatal(err)
	}
	// The client stops reading; the windows on both hops and the socket
	// buffers fill, then the upstream's writes block.
	var last int64
	for i := 0; ; i++ {
		time.Sleep(100 * time.Millisecond)
		n := written.Load()
		if n == last {
			break
		}
		if i == 50 {
			t.Fatalf("the upstream is still writing (%d MiB) to a client that stopped reading", n>>20)
		}
		last = n
	}
	if last > 32<<20 {
		t.Errorf("the upstream wrote %d MiB to a client that read 32 KiB: something buffers without bound", last>>20)
	}
	t.Logf("the upstream stalled after %d KiB", last>>10)
	cancel()
	resp.Body.Close()
	select {
	case <-upstreamDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream's handler still runs after the client went away")
	}
	if err := getOK(h2cClient(), "http://"+p.addr("app")+"/v1/after"); err != nil {
		t.Errorf("after a cancelled stream: %v", err)
	}
}

// An upstream that does not speak HTTP/2 gets the client a 502 with the
// proxy's short message, and the log says why.
func TestRelayUpstreamWithoutHTTP2(t *testing.T) {
	e := newEnv(t)
	tlsCfg, err := e.pki.ServerTLS(upstreamNames...)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg.NextProtos = nil // no ALPN at all, as an HTTP/1.1-only server has
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsCfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: &sim.Echo{}}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	up := struct{ URL string }{"https://" + ln.Addr().String()}
	p := e.start(relayConfig(port(t, up.URL), "deny"), nil, nil)
	resp, err := h2cClient().Get("http://" + p.addr("app") + "/v1/things")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || string(body) != "authproxy: upstream unavailable (route \"api\")\n" {
		t.Errorf("got %d %q, want 502 from the proxy", resp.StatusCode, body)
	}
	if logs := p.logs.String(); !strings.Contains(logs, "did not negotiate HTTP/2") {
		t.Errorf("the log lacks the cause:\n%s", logs)
	}
}

// bodyObserver is an injector that observes response bodies, which the
// relay cannot serve.
// messageObserver is an injector that reads responses' gRPC messages, as
// openOBD's does.
type messageObserver struct{ injectors.Injector }

func (messageObserver) ObserveResponse(*injectors.Request, *http.Response) bool { return false }
func (messageObserver) ObservesMessages()                                       {}

// A listener with h2c: relay refuses, at start, routes it could not serve
// faithfully, naming the YAML path.
func TestRelayRefusesRoutesItCannotServe(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name, yaml string
		override   map[string]injectors.Injector
		want       string
	}{
		{"an injector that reads gRPC messages", `
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.example.com", h2c: relay}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: x}}}
routes:
  - {name: api, match: {path: "/*"}, injector: bearer}
`, map[string]injectors.Injector{"bearer": messageObserver{failingInjector{nil}}},
			`listeners[0].h2c: relay cannot serve route "api": its injector "bearer" reads the gRPC messages of responses, which the frame relay never decodes (use h2c: grpc or http on this listener)`},
		{"an HTTP/1.1 upstream", `
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "http://api.example.com", h2c: relay}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: x}}}
routes:
  - {name: api, match: {path: "/*"}, injector: bearer, allow_plaintext: true}
`, nil, `listeners[0].h2c: relay cannot serve route "api": its upstream http://api.example.com is HTTP/1.1 (the relay needs https or h2c upstreams)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseConfig(e, tc.yaml)
			if err != nil {
				t.Fatal(err)
			}
			injs, err := injectors.BuildAll(cfg, injectors.Env{})
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.override {
				injs[k] = v
			}
			if _, err := proxy.New(cfg, injs, proxy.Options{}); err == nil || err.Error() != tc.want {
				t.Errorf("got %v\nwant %s", err, tc.want)
			}
		})
	}
	// The same routes with an OAuth2 injector (it reads only the head) and
	// an h2c upstream are served.
	cfg, err := parseConfig(e, `
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "h2c://api.example.com", h2c: relay}
injectors:
  tok: {kind: oauth2, token_url: "https://auth.example.com/token", client_id: {value: c}, client_secret: {value: s}}
routes:
  - {name: api, match: {path: "/*"}, injector: tok, allow_plaintext: true}
`)
	if err != nil {
		t.Fatal(err)
	}
	injs, err := injectors.BuildAll(cfg, injectors.Env{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := proxy.New(cfg, injs, proxy.Options{}); err != nil {
		t.Errorf("an OAuth2 route to an h2c upstream: %v", err)
	}
}

// Upstream connections without a stream close after
// upstream.idle_conn_timeout.
func TestRelayClosesIdleUpstreamConnections(t *testing.T) {
	e := newEnv(t)
	closed := make(chan struct{}, 1)
	tlsCfg, err := e.pki.ServerTLS(upstreamNames...)
	if err != nil {
		t.Fatal(err)
	}
	up := httptest.NewUnstartedServer(&sim.Echo{})
	up.TLS, up.EnableHTTP2 = tlsCfg, true
	up.Config.ConnState = func(_ net.Conn, st http.ConnState) { // set before it serves
		if st == http.StateClosed {
			select {
			case closed <- struct{}{}:
			default:
			}
		}
	}
	up.StartTLS()
	defer up.Close()
	cfg := strings.Replace(relayConfig(port(t, up.URL), "deny"), "upstream:\n", "upstream:\n  idle_conn_timeout: 300ms\n", 1)
	p := e.start(cfg, nil, nil)
	if err := getOK(h2cClient(), "http://"+p.addr("app")+"/v1/things"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	select {
	case <-closed:
		if d := time.Since(start); d < 200*time.Millisecond {
			t.Errorf("the upstream connection closed after %v, before idle_conn_timeout (300ms)", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the idle upstream connection is still open")
	}
}
