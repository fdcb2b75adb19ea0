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

	"github.com/authproxy/authproxy/sim"
)

// A sidecar relays HTTP/2 frame by frame: the credential is
// injected and the client's stripped, everything else arrives as sent, and
// HTTP/1.1 on the same port still goes through net/http.
func TestRelayInjectsAndStrips(t *testing.T) {
	e := newEnv(t)
	up := e.httpsUpstream(&sim.Echo{})
	p := e.start(sidecarConfig(port(t, up.URL), "deny"), nil, nil)
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
	p := e.start(sidecarConfig(port(t, up.URL), "deny"), nil, nil)
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
	p := e.start(sidecarConfig(port(t, up.URL), "deny"), nil, nil)
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

// An https upstream that does not negotiate h2 is bridged to HTTP/1.1 (a
// route with upstream_protocol http2 gets 502 and the log says why), and a
// plain http:// upstream is reached over HTTP/1.1 too: every route works
// on HTTP/2 listeners. What the upstream sends arrives as sent: no Date or
// sniffed Content-Type is added, trailers pass.
func TestRelayBridgesHTTP1Upstreams(t *testing.T) {
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
	bare := func(w http.ResponseWriter, r *http.Request) { // no Date, no Content-Type, a trailer
		w.Header()["Date"] = nil
		w.Header()["Content-Type"] = nil // net/http would sniff one
		w.Header().Set("Trailer", "X-Sum")
		w.Header().Set("X-Auth-Seen", r.Header.Get("Authorization"))
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "<html>not sniffed</html>")
		w.Header().Set("X-Sum", "42")
	}
	plain := httptest.NewServer(http.HandlerFunc(bare))
	defer plain.Close()
	cfg := strings.Replace(sidecarConfig(port(t, ln.Addr().String()), "deny"), "routes:\n", fmt.Sprintf(`routes:
  - name: plain
    match: {path: /plain/*}
    injector: bearer
    upstream: http://127.0.0.1:%s
    allow_plaintext: true
`, port(t, plain.URL)), 1)
	p := e.start(cfg, nil, nil)

	for i := 0; i < 3; i++ { // the first finds out; later ones go straight to the bridge
		resp, err := h2cClient().Get("http://" + p.addr("app") + "/v1/things")
		if err != nil {
			t.Fatal(err)
		}
		seen := decodeSeen(t, resp)
		if resp.StatusCode != 200 || seen.Proto != "HTTP/1.1" || !seen.TLS || seen.Header.Get("Authorization") != "Bearer "+secretToken {
			t.Errorf("round %d: %d, upstream saw %s tls=%v authorization %q", i, resp.StatusCode, seen.Proto, seen.TLS, seen.Header.Get("Authorization"))
		}
	}
	if n := strings.Count(p.logs.String(), "upstream speaks only HTTP/1.1"); n != 1 {
		t.Errorf("the fallback was logged %d times, want once:\n%s", n, p.logs.String())
	}

	resp, err := h2cClient().Get("http://" + p.addr("app") + "/v2/things")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || string(body) != "authproxy: upstream unavailable (route \"api-h2\")\n" {
		t.Errorf("upstream_protocol http2: got %d %q, want 502 from the proxy", resp.StatusCode, body)
	}
	if logs := p.logs.String(); !strings.Contains(logs, "did not negotiate HTTP/2") {
		t.Errorf("the log lacks the cause:\n%s", logs)
	}

	resp, err = h2cClient().Get("http://" + p.addr("app") + "/plain/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "<html>not sniffed</html>" || resp.Header.Get("X-Auth-Seen") != "Bearer "+secretToken {
		t.Errorf("plain upstream: %d %q, credential seen %q", resp.StatusCode, body, resp.Header.Get("X-Auth-Seen"))
	}
	if _, ok := resp.Header["Date"]; ok {
		t.Errorf("the proxy added a Date: %v", resp.Header)
	}
	if _, ok := resp.Header["Content-Type"]; ok {
		t.Errorf("the proxy added a Content-Type: %v", resp.Header)
	}
	if resp.Trailer.Get("X-Sum") != "42" {
		t.Errorf("trailers: %v", resp.Trailer)
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
	cfg := strings.Replace(sidecarConfig(port(t, up.URL), "deny"), "upstream:\n", "upstream:\n  idle_conn_timeout: 300ms\n", 1)
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
