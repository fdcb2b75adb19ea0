package proxy_test

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/authproxy/authproxy/sim"
)

// mtlsUpstream is a TLS server (h2 and http/1.1) that requires a client
// certificate from its CA and answers with the certificate's common name
// and serial, the Authorization it got, and the protocol. It counts the
// handshakes that failed.
type mtlsUpstream struct {
	srv      *httptest.Server
	failures atomic.Int64
}

func newMTLSUpstream(t *testing.T, e *env, clientCA *sim.PKI) *mtlsUpstream {
	u := &mtlsUpstream{}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaf := r.TLS.PeerCertificates[0]
		json.NewEncoder(w).Encode(map[string]string{"cn": leaf.Subject.CommonName, "serial": leaf.SerialNumber.String(),
			"authorization": r.Header.Get("Authorization"), "proto": r.Proto})
	}))
	cfg, err := e.pki.ServerTLS(upstreamNames...)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ClientCAs, cfg.ClientAuth = clientCA.Pool, tls.RequireAndVerifyClientCert
	u.srv.TLS = cfg
	u.srv.EnableHTTP2 = true
	u.srv.Config.ErrorLog = log.New(countingWriter{&u.failures, "TLS handshake error"}, "", 0)
	u.srv.StartTLS()
	t.Cleanup(u.srv.Close)
	return u
}

// A route's client certificate (routes[].tls_client) is presented to its
// upstream, over the sidecar's HTTP/1.1 pool and HTTP/2 relay and through
// the forward listener (HTTP/1.1 and HTTP/2 in the tunnel), and by no
// other route: a route to the same upstream without one is refused by the
// upstream's handshake. Renewed on disk, the certificate is presented by
// the next requests, none failing meanwhile; the old connections are
// retired. An oauth2 injector's tls_client is presented to its token
// endpoint, which requires it.
func TestUpstreamClientCertificates(t *testing.T) {
	e := newEnv(t)
	clientCA, err := sim.NewPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	certDir := filepath.Join(e.dir, "client")
	os.MkdirAll(certDir, 0o755)
	issue := func(dir, cn string) (string, string) {
		t.Helper()
		c, k, err := clientCA.ClientCert(dir, "tls", x509.Certificate{Subject: pkix.Name{CommonName: cn}})
		if err != nil {
			t.Fatal(err)
		}
		return c, k
	}
	cert, key := issue(certDir, "route-client")
	issuerCert, issuerKey := issue(filepath.Join(e.dir), "issuer-client")
	up := newMTLSUpstream(t, e, clientCA)

	// A token endpoint that requires a client certificate.
	var tokenCN atomic.Value
	tokens := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tokenCN.Store(r.TLS.PeerCertificates[0].Subject.CommonName)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":%q,"token_type":"Bearer","expires_in":3600}`, secretToken)
	}))
	tcfg, _ := e.pki.ServerTLS(upstreamNames...)
	tcfg.ClientCAs, tcfg.ClientAuth = clientCA.Pool, tls.RequireAndVerifyClientCert
	tokens.TLS = tcfg
	tokens.StartTLS()
	t.Cleanup(tokens.Close)

	p := e.start(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.authproxy.test:%[1]s"}
  - {name: fwd, kind: forward, address: 127.0.0.1:0}
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1, auth.authproxy.test: 127.0.0.1}}
injectors:
  tok:
    kind: oauth2
    token_url: "https://auth.authproxy.test:%[4]s/token"
    client_id: {value: proxy}
    client_secret: {value: unused-by-this-issuer}
    tls_client: {cert_file: %[5]q, key_file: %[6]q}
routes:
  - {name: mtls, listeners: [app], match: {path: /mtls/*}, injector: tok, tls_client: {cert_file: %[2]q, key_file: %[3]q}}
  - {name: plain, listeners: [app], match: {path: /plain/*}, injector: tok}
  - {name: fwd-mtls, listeners: [fwd], match: {host: api.authproxy.test}, injector: tok, tls_client: {cert_file: %[2]q, key_file: %[3]q}}
`, port(t, up.srv.URL), cert, key, port(t, tokens.URL), issuerCert, issuerKey), nil, nil)

	type answer struct{ CN, Serial, Authorization, Proto string }
	decode := func(resp *http.Response, err error) (answer, error) {
		if err != nil {
			return answer{}, err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var a answer
		if resp.StatusCode != 200 || json.Unmarshal(body, &a) != nil {
			return a, fmt.Errorf("%d %s", resp.StatusCode, body)
		}
		if a.Authorization != "Bearer "+secretToken {
			return a, fmt.Errorf("the upstream got Authorization %q", a.Authorization)
		}
		return a, nil
	}
	fwdClient := func(h2 bool) *http.Client {
		tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: p.addr("fwd")}),
			TLSClientConfig: &tls.Config{RootCAs: e.proxyCA}, ForceAttemptHTTP2: h2}
		return &http.Client{Transport: tr, Timeout: 30 * time.Second}
	}
	fwd1, fwd2, h1, h2c := fwdClient(false), fwdClient(true), h1Client(), h2cClient()
	target := "https://api.authproxy.test:" + port(t, up.srv.URL)
	// Each client, and the protocol the upstream must see from it (HTTP/2
	// through the relay, HTTP/1.1 through the keep-alive pool).
	clients := map[string]struct {
		get   func(path string) (answer, error)
		proto string
	}{
		"sidecar/http1": {func(path string) (answer, error) { return decode(h1.Get("http://" + p.addr("app") + path)) }, "HTTP/1.1"},
		"sidecar/h2c":   {func(path string) (answer, error) { return decode(h2c.Get("http://" + p.addr("app") + path)) }, "HTTP/2.0"},
		"forward/http1": {func(path string) (answer, error) { return decode(fwd1.Get(target + path)) }, "HTTP/1.1"},
		"forward/h2":    {func(path string) (answer, error) { return decode(fwd2.Get(target + path)) }, "HTTP/2.0"},
	}
	first := map[string]string{}
	for name, c := range clients {
		t.Run(name, func(t *testing.T) {
			a, err := c.get("/mtls/x")
			if err != nil {
				t.Fatal(err)
			}
			if a.CN != "route-client" || a.Proto != c.proto {
				t.Errorf("the upstream saw %q over %s, want route-client over %s", a.CN, a.Proto, c.proto)
			}
			first[name] = a.Serial
		})
	}
	if cn, _ := tokenCN.Load().(string); cn != "issuer-client" {
		t.Errorf("the token endpoint saw client certificate %q, want the injector's", cn)
	}

	t.Run("other-route", func(t *testing.T) {
		before := up.failures.Load()
		resp, err := h1Client().Get("http://" + p.addr("app") + "/plain/x")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("a route without tls_client: %d, want 502 (the upstream refuses the handshake)", resp.StatusCode)
		}
		waitFor(t, "the upstream's refused handshake", func() bool { return up.failures.Load() > before })
	})

	t.Run("renewal", func(t *testing.T) {
		// Requests run while the certificate is renewed in place (a new
		// file renamed over the old, as cert-manager's writer does).
		var wg sync.WaitGroup
		var failed atomic.Int64
		var firstErr atomic.Value
		stop := make(chan struct{})
		for name, c := range clients {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := c.get("/mtls/" + name); err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err)
					}
				}
			})
		}
		time.Sleep(100 * time.Millisecond)
		renewed := t.TempDir()
		c2, k2 := issue(renewed, "route-client")
		if err := os.Rename(k2, key); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(c2, cert); err != nil {
			t.Fatal(err)
		}
		pair, _ := tls.X509KeyPair(mustRead(t, cert), mustRead(t, key))
		leaf, _ := x509.ParseCertificate(pair.Certificate[0])
		newSerial := leaf.SerialNumber.String()
		for name, c := range clients {
			waitFor(t, name+" presenting the renewed certificate", func() bool {
				a, err := c.get("/mtls/y")
				return err == nil && a.Serial == newSerial
			})
		}
		close(stop)
		wg.Wait()
		if failed.Load() > 0 {
			t.Errorf("%d requests failed during the renewal, the first: %v", failed.Load(), firstErr.Load())
		}
		// The old connections are retired: no request goes over one.
		for name, c := range clients {
			for range 10 {
				if a, err := c.get("/mtls/z"); err != nil || a.Serial != newSerial {
					t.Errorf("%s after the renewal: %v, serial %s", name, err, a.Serial)
				}
			}
		}
		for name, serial := range first {
			if serial == newSerial {
				t.Errorf("%s: the first certificate is the renewed one", name)
			}
		}
	})
}

// countingWriter counts the lines written that hold what.
type countingWriter struct {
	n    *atomic.Int64
	what string
}

func (w countingWriter) Write(p []byte) (int, error) {
	if strings.Contains(string(p), w.what) {
		w.n.Add(1)
	}
	return len(p), nil
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The client certificate's key must be the proxy's alone, as the CA's.
func TestUpstreamClientCertificateKeyMode(t *testing.T) {
	e := newEnv(t)
	clientCA, _ := sim.NewPKI(t.TempDir())
	cert, key, err := clientCA.ClientCert(e.dir, "c", x509.Certificate{Subject: pkix.Name{CommonName: "c"}})
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(key, 0o644)
	err = newServerErr(t, fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.authproxy.test"}
injectors:
  tok: {kind: static, headers: {Authorization: {value: x}}}
routes:
  - {name: mtls, match: {path: /mtls/*}, injector: tok, tls_client: {cert_file: %q, key_file: %q}}
`, cert, key))
	if err == nil || !strings.Contains(err.Error(), "routes[0].tls_client.key_file") || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("New: %v", err)
	}
}
