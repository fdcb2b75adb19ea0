package proxy_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/sim"
)

// forwardConfig serves a forward listener for the HTTPS upstream
// (tlsPort) and a plain one (plainPort).
func forwardConfig(unmatched string) string {
	if unmatched == "tunnel" { // the test upstreams are on loopback, closed by default
		unmatched += `, tunnel_allow: ["*.authproxy.test"]`
	}
	return fmt.Sprintf(`
listeners:
  - {name: fwd, kind: forward, address: 127.0.0.1:0, unmatched: %s}
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
upstream:
  ca_file: "{{UPSTREAM_CA}}"
  resolve:
    api.authproxy.test: 127.0.0.1
    other.authproxy.test: 127.0.0.1
    plain.authproxy.test: 127.0.0.1
    strict.authproxy.test: 127.0.0.1
    upgrade.authproxy.test: 127.0.0.1
timeouts: {shutdown: 5s}
injectors:
  bearer:
    kind: static
    headers:
      Authorization: {value: %q, prefix: "Bearer "}
routes:
  - {name: api, match: {host: api.authproxy.test, path: /v1/*}, injector: bearer}
  - {name: plain, match: {host: plain.authproxy.test}, injector: bearer, allow_plaintext: true}
  - {name: strict, match: {host: strict.authproxy.test}, injector: bearer}
  - {name: upgrade, match: {host: upgrade.authproxy.test}, injector: bearer, tls_upgrade: true}
`, unmatched, secretToken)
}

// proxiedClient sends every request through the forward proxy at addr,
// trusting only roots, speaking HTTP/2 when h2 is set.
func proxiedClient(addr string, roots *tlsRoots, h2 bool) *http.Client {
	tr := &http.Transport{
		Proxy:              http.ProxyURL(&url.URL{Scheme: "http", Host: addr}),
		TLSClientConfig:    &tls.Config{RootCAs: roots.pool},
		DisableCompression: true,
		Protocols:          new(http.Protocols),
	}
	tr.Protocols.SetHTTP1(true)
	if h2 {
		tr.Protocols.SetHTTP1(false)
		tr.Protocols.SetHTTP2(true)
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

type tlsRoots struct{ pool *x509.CertPool }

func TestForwardInterceptsHTTPSForGoClients(t *testing.T) {
	e := newEnv(t)
	echo := &sim.Echo{}
	up := e.httpsUpstream(echo)
	p := e.start(forwardConfig("deny"), nil, nil)
	base := "https://api.authproxy.test:" + port(t, up.URL)

	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			c := proxiedClient(p.addr("fwd"), &tlsRoots{e.proxyCA}, h2)
			req, _ := http.NewRequest("POST", base+"/v1/things?x=1", strings.NewReader("hello"))
			req.Header.Set("Authorization", "Bearer spoofed")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			wantProto := map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[h2]
			if resp.Proto != wantProto {
				t.Errorf("client to proxy: %s, want %s", resp.Proto, wantProto)
			}
			issuer := resp.TLS.PeerCertificates[0].Issuer.CommonName
			seen := decodeSeen(t, resp)
			if issuer != "test proxy CA" {
				t.Errorf("client saw a certificate from %q, want the proxy CA", issuer)
			}
			if got := seen.Header.Values("Authorization"); len(got) != 1 || got[0] != "Bearer "+secretToken {
				t.Errorf("upstream got Authorization %q", got)
			}
			// upstream_protocol auto: the client's protocol (the upstream has both).
			if seen.Proto != wantProto || seen.Path != "/v1/things" || seen.RawQuery != "x=1" || seen.BodyBytes != 5 {
				t.Errorf("upstream saw %+v", seen)
			}

			// :authority naming another host than the CONNECT target.
			req, _ = http.NewRequest("GET", base+"/v1/things", nil)
			req.Host = "other.authproxy.test"
			resp, err = c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusMisdirectedRequest {
				t.Errorf("mismatched authority: %d %q, want 421", resp.StatusCode, body)
			}

			// An intercepted host, but a path no route matches.
			resp, err = c.Get(base + "/admin")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("unmatched path on an intercepted host: %d, want 404", resp.StatusCode)
			}
		})
	}
	if n := echo.Requests(); n != 2 {
		t.Errorf("upstream served %d requests, want 2 (refused ones must not be forwarded)", n)
	}
}

func TestForwardPlainHTTP(t *testing.T) {
	e := newEnv(t)
	plain := httptest.NewServer(&sim.Echo{})
	t.Cleanup(plain.Close)
	tlsEcho := &sim.Echo{}
	up := e.httpsUpstream(tlsEcho)
	p := e.start(forwardConfig("deny"), nil, nil)
	c := proxiedClient(p.addr("fwd"), &tlsRoots{e.proxyCA}, false)

	t.Run("allow_plaintext", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "http://plain.authproxy.test:"+port(t, plain.URL)+"/x", nil)
		req.Header.Set("Authorization", "Bearer spoofed")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		seen := decodeSeen(t, resp)
		if seen.Header.Get("Authorization") != "Bearer "+secretToken || seen.TLS {
			t.Errorf("upstream saw %+v", seen)
		}
	})
	t.Run("tls_upgrade", func(t *testing.T) {
		resp, err := c.Get("http://upgrade.authproxy.test:" + port(t, up.URL) + "/x")
		if err != nil {
			t.Fatal(err)
		}
		seen := decodeSeen(t, resp)
		if !seen.TLS || seen.Header.Get("Authorization") != "Bearer "+secretToken {
			t.Errorf("upgraded request reached upstream as %+v", seen)
		}
	})
	t.Run("plaintext refused", func(t *testing.T) {
		before := tlsEcho.Requests()
		resp, err := c.Get("http://strict.authproxy.test:" + port(t, plain.URL) + "/x")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "plaintext") {
			t.Errorf("got %d %q, want 403 about plaintext", resp.StatusCode, body)
		}
		if tlsEcho.Requests() != before {
			t.Errorf("refused request was forwarded")
		}
	})
	t.Run("unmatched host denied", func(t *testing.T) {
		resp, err := c.Get("http://nowhere.authproxy.test/x")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("got %d, want 404", resp.StatusCode)
		}
	})
	t.Run("not a proxy request", func(t *testing.T) {
		resp, err := h1Client().Get("http://" + p.addr("fwd") + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("got %d, want 400", resp.StatusCode)
		}
	})
}

func TestForwardUnmatchedConnect(t *testing.T) {
	e := newEnv(t)
	up := e.httpsUpstream(&sim.Echo{})
	target := "https://other.authproxy.test:" + port(t, up.URL) + "/x"

	t.Run("deny", func(t *testing.T) {
		p := e.start(forwardConfig("deny"), nil, nil)
		_, err := proxiedClient(p.addr("fwd"), &tlsRoots{e.pki.Pool}, false).Get(target)
		if err == nil || !strings.Contains(err.Error(), "Forbidden") {
			t.Errorf("CONNECT to an unmatched host: %v, want 403 Forbidden", err)
		}
	})
	t.Run("tunnel", func(t *testing.T) {
		p := e.start(forwardConfig("tunnel"), nil, nil)
		// Trusting only the upstream's own CA proves nothing intercepts.
		req, _ := http.NewRequest("GET", target, nil)
		req.Header.Set("Authorization", "Bearer client-own")
		resp, err := proxiedClient(p.addr("fwd"), &tlsRoots{e.pki.Pool}, false).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		issuer := resp.TLS.PeerCertificates[0].Issuer.CommonName
		seen := decodeSeen(t, resp)
		if issuer != "authproxy sim CA" || seen.Header.Get("Authorization") != "Bearer client-own" {
			t.Errorf("tunnel: issuer %q, upstream Authorization %q", issuer, seen.Header.Get("Authorization"))
		}
	})
}

// TestForwardWithCurl drives the forward proxy with curl -x, as a legacy
// application configured with HTTPS_PROXY would.
func TestForwardWithCurl(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is required (apt-get install curl)")
	}
	e := newEnv(t)
	up := e.httpsUpstream(&sim.Echo{})
	plain := httptest.NewServer(&sim.Echo{})
	t.Cleanup(plain.Close)
	p := e.start(forwardConfig("deny"), nil, nil)
	caFile := e.caCert

	curl := func(args ...string) (string, string, error) {
		cmd := exec.Command("curl", append([]string{"-sS", "--max-time", "20", "-x", "http://" + p.addr("fwd")}, args...)...)
		cmd.Env = []string{"PATH=/usr/bin:/bin"}
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return out.String(), errb.String(), err
	}
	checkInjected := func(t *testing.T, out string) {
		var seen sim.Seen
		if err := json.Unmarshal([]byte(out), &seen); err != nil {
			t.Fatalf("curl output %q: %v", out, err)
		}
		if got := seen.Header.Values("Authorization"); len(got) != 1 || got[0] != "Bearer "+secretToken {
			t.Errorf("upstream got Authorization %q", got)
		}
	}
	t.Run("https", func(t *testing.T) {
		out, stderr, err := curl("--cacert", caFile, "-H", "Authorization: Bearer spoofed",
			"https://api.authproxy.test:"+port(t, up.URL)+"/v1/x")
		if err != nil {
			t.Fatalf("%v: %s", err, stderr)
		}
		checkInjected(t, out)
	})
	t.Run("http", func(t *testing.T) {
		out, stderr, err := curl("http://plain.authproxy.test:" + port(t, plain.URL) + "/x")
		if err != nil {
			t.Fatalf("%v: %s", err, stderr)
		}
		checkInjected(t, out)
	})
	t.Run("unmatched CONNECT refused", func(t *testing.T) {
		_, stderr, err := curl("--cacert", e.pki.CAFile, "https://other.authproxy.test:"+port(t, up.URL)+"/x")
		if err == nil || !strings.Contains(stderr, "403") {
			t.Errorf("curl: %v %s, want a refused CONNECT (403)", err, stderr)
		}
	})
}
