package proxy_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/authproxy/authproxy/sim"
)

// sidecarConfig serves one sidecar in front of an https upstream, adding
// the static bearer on /v1/*, and an h2c and a plain listener for the
// failure cases.
func sidecarConfig(upstreamPort string, unmatched string) string {
	return fmt.Sprintf(`
listeners:
  - name: app
    kind: sidecar
    address: 127.0.0.1:0
    upstream: https://api.authproxy.test:%[1]s
    unmatched: %[2]s
upstream:
  ca_file: {{UPSTREAM_CA}}
  resolve: {api.authproxy.test: 127.0.0.1}
injectors:
  bearer:
    kind: static
    headers:
      Authorization: {value: %[3]q, prefix: "Bearer "}
      X-Api-Key: {value: "key-1"}
routes:
  - name: api
    match: {path: /v1/*}
    injector: bearer
    strip_headers: [X-Client-Secret]
  - name: api-h2
    match: {path: /v2/*}
    injector: bearer
    strip_headers: [X-Client-Secret]
    upstream_protocol: http2
`, upstreamPort, unmatched, secretToken)
}

func TestSidecarInjectsAndStripsOverHTTP1AndH2C(t *testing.T) {
	e := newEnv(t)
	up := e.httpsUpstream(&sim.Echo{})
	p := e.start(sidecarConfig(port(t, up.URL), "deny"), nil, nil)

	for _, tc := range []struct {
		name      string
		client    *http.Client
		wantProto string
	}{
		{"http1", h1Client(), "HTTP/1.1"},
		{"h2c", h2cClient(), "HTTP/2.0"},
	} {
		for _, route := range []struct{ path, upstreamProto string }{
			{"/v1/things", tc.wantProto}, // upstream_protocol: auto: the client's protocol, as the upstream has both
			{"/v2/things", "HTTP/2.0"},   // upstream_protocol: http2
		} {
			t.Run(tc.name+route.path, func(t *testing.T) {
				checkInjectsAndStrips(t, tc.client, "http://"+p.addr("app")+route.path+"?q=1", tc.wantProto, route.upstreamProto, port(t, up.URL))
			})
		}
	}
}

// checkInjectsAndStrips sends a GET with the client's own credentials and
// checks what the upstream (sim.Echo behind sidecarConfig's /v1 or /v2
// route) saw: only the injected credentials, the stripped header gone, the
// rest as sent, nothing added, over TLS with the protocol expected.
func checkInjectsAndStrips(t *testing.T, client *http.Client, target, wantProto, upstreamProto, upstreamPort string) {
	t.Helper()
	req, _ := http.NewRequest("GET", target, nil)
	req.Header.Set("Authorization", "Bearer spoofed-by-client")
	req.Header.Set("X-Api-Key", "spoofed-key")
	req.Header.Set("X-Client-Secret", "should-not-leave")
	req.Header.Set("X-Request-Id", "abc")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Proto != wantProto {
		t.Errorf("client spoke %s, want %s", resp.Proto, wantProto)
	}
	seen := decodeSeen(t, resp)
	if got := seen.Header.Values("Authorization"); len(got) != 1 || got[0] != "Bearer "+secretToken {
		t.Errorf("upstream got Authorization %q, want only the injected one", got)
	}
	if got := seen.Header.Values("X-Api-Key"); len(got) != 1 || got[0] != "key-1" {
		t.Errorf("upstream got X-Api-Key %q", got)
	}
	if got := seen.Header.Get("X-Client-Secret"); got != "" {
		t.Errorf("strip_headers header reached upstream: %q", got)
	}
	if seen.Header.Get("X-Request-Id") != "abc" {
		t.Errorf("ordinary header lost: %v", seen.Header)
	}
	if seen.Header.Get("X-Forwarded-For") != "" {
		t.Errorf("proxy added X-Forwarded-For: %v", seen.Header)
	}
	if seen.Proto != upstreamProto || !seen.TLS {
		t.Errorf("upstream saw %s tls=%v, want %s over TLS", seen.Proto, seen.TLS, upstreamProto)
	}
	if wantHost := "api.authproxy.test:" + upstreamPort; seen.Host != wantHost || seen.Path != req.URL.Path || seen.RawQuery != req.URL.RawQuery {
		t.Errorf("upstream saw host %q path %q query %q, want %s %s", seen.Host, seen.Path, seen.RawQuery, wantHost, req.URL.RequestURI())
	}
}

func TestSidecarUnmatchedDenyAndPass(t *testing.T) {
	e := newEnv(t)
	up := e.httpsUpstream(&sim.Echo{})
	deny := e.start(sidecarConfig(port(t, up.URL), "deny"), nil, nil)
	resp, err := h1Client().Get("http://" + deny.addr("app") + "/other")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "no route") {
		t.Errorf("unmatched on deny: %d %q, want 404 naming the missing route", resp.StatusCode, body)
	}

	pass := e.start(sidecarConfig(port(t, up.URL), "pass"), nil, nil)
	req, _ := http.NewRequest("GET", "http://"+pass.addr("app")+"/other", nil)
	req.Header.Set("Authorization", "Bearer client-own")
	resp, err = h1Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	seen := decodeSeen(t, resp)
	if got := seen.Header.Get("Authorization"); got != "Bearer client-own" {
		t.Errorf("pass-through changed Authorization to %q", got)
	}
}

// TestSidecarStreamsLargeBodies sends and receives 64 MiB through the
// sidecar and checks that the heap never grows by anything near that.
func TestSidecarStreamsLargeBodies(t *testing.T) {
	const size = 64 << 20
	e := newEnv(t)
	up := e.httpsUpstream(&sim.Echo{})
	p := e.start(sidecarConfig(port(t, up.URL), "deny"), nil, nil)

	want := sha256.New()
	if _, err := io.Copy(want, io.LimitReader(&sim.Pattern{}, size)); err != nil {
		t.Fatal(err)
	}
	wantSum := hex.EncodeToString(want.Sum(nil))

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()

	for _, tc := range []struct {
		name   string
		client *http.Client
	}{{"http1", h1Client()}, {"h2c", h2cClient()}} {
		t.Run(tc.name+"/upload", func(t *testing.T) {
			req, _ := http.NewRequest("POST", "http://"+p.addr("app")+"/v1/upload", io.LimitReader(&sim.Pattern{}, size))
			req.ContentLength = -1 // stream it, chunked
			resp, err := tc.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			seen := decodeSeen(t, resp)
			if seen.BodyBytes != size || seen.BodySHA != wantSum {
				t.Errorf("upstream got %d bytes sha %s, want %d sha %s", seen.BodyBytes, seen.BodySHA, size, wantSum)
			}
		})
		t.Run(tc.name+"/download", func(t *testing.T) {
			resp, err := tc.client.Get(fmt.Sprintf("http://%s/v1/download?size=%d", p.addr("app"), size))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			h := sha256.New()
			n, err := io.Copy(h, resp.Body)
			if err != nil || n != size || hex.EncodeToString(h.Sum(nil)) != wantSum {
				t.Errorf("downloaded %d bytes (err %v), sha match %v", n, err, hex.EncodeToString(h.Sum(nil)) == wantSum)
			}
		})
	}
	close(stop)
	<-sampled
	growth := int64(peak.Load()) - int64(base.HeapInuse)
	t.Logf("heap in use: base %d MiB, peak %d MiB over 4 transfers of %d MiB", base.HeapInuse>>20, peak.Load()>>20, size>>20)
	if growth > 24<<20 {
		t.Errorf("heap grew by %d MiB while streaming %d MiB bodies: something buffers", growth>>20, size>>20)
	}
}

func TestSidecarRefusesPlaintextUpstreamUnlessAllowed(t *testing.T) {
	e := newEnv(t)
	_, err := parseConfig(e, `
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: http://api.authproxy.test:8080}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: x}}}
routes:
  - {name: api, match: {path: /v1/*}, injector: bearer}
`)
	if err == nil || !strings.Contains(err.Error(), "routes[0].allow_plaintext") {
		t.Fatalf("want an error at routes[0].allow_plaintext, got %v", err)
	}
}

// TestSidecarVerifiesUpstreamCertificates points the sidecar at an upstream
// whose certificate is not signed by any trusted CA: nothing may be sent.
func TestSidecarVerifiesUpstreamCertificates(t *testing.T) {
	e := newEnv(t)
	echo := &sim.Echo{}
	untrusted := httptest.NewUnstartedServer(echo) // httptest's own certificate
	untrusted.EnableHTTP2 = true
	untrusted.StartTLS()
	t.Cleanup(untrusted.Close)
	p := e.start(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://127.0.0.1:%s"}
upstream: {ca_file: "{{UPSTREAM_CA}}"}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: %q}}}
routes:
  - {name: api, match: {path: /v1/*}, injector: bearer}
`, port(t, untrusted.URL), secretToken), nil, nil)
	resp, err := h1Client().Get("http://" + p.addr("app") + "/v1/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "upstream unavailable") {
		t.Errorf("untrusted upstream: %d %q, want 502", resp.StatusCode, body)
	}
	if echo.Requests() != 0 {
		t.Error("a request reached an upstream whose certificate is not trusted")
	}
	if !strings.Contains(p.logs.String(), "certificate") {
		t.Errorf("the log does not say why:\n%s", p.logs.String())
	}
}
