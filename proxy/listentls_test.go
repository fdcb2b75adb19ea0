package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/metrics"
	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/sim"
)

// tlsClients are the client certificates of the TLS listener tests: files
// under dir, from the clients' CA (pki) unless said otherwise.
type tlsClients struct {
	pki                    *sim.PKI // the client CA
	listenerCert, listener string   // the listeners' certificate and key (from the env's upstream PKI)
	good, goodKey          string   // URI SAN spiffe://cluster.local/ns/garage/sa/app
	dns, dnsKey            string   // DNS SAN app.office.internal
	other, otherKey        string   // the same SAN, from another CA
	expired, expiredKey    string   // the same SAN, expired
	noSAN, noSANKey        string   // a common name, no SAN
}

const garageID = "spiffe://cluster.local/ns/garage/sa/app"

func newTLSClients(t *testing.T, e *env) *tlsClients {
	t.Helper()
	dir := filepath.Join(e.dir, "clients")
	os.MkdirAll(dir, 0o755)
	pki, err := sim.NewPKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	otherDir := filepath.Join(e.dir, "other")
	os.MkdirAll(otherDir, 0o755)
	other, err := sim.NewPKI(otherDir)
	if err != nil {
		t.Fatal(err)
	}
	garage, _ := url.Parse(garageID)
	c := &tlsClients{pki: pki}
	must := func(a, b string, err error) (string, string) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a, b
	}
	c.listenerCert, c.listener = must(e.pki.ServerCertFiles(e.dir, "listener", "proxy.authproxy.test", "127.0.0.1"))
	c.good, c.goodKey = must(pki.ClientCert(dir, "garage", x509.Certificate{Subject: pkix.Name{CommonName: "garage"}, URIs: []*url.URL{garage}}))
	c.dns, c.dnsKey = must(pki.ClientCert(dir, "office", x509.Certificate{Subject: pkix.Name{CommonName: "office"}, DNSNames: []string{"app.office.internal"}}))
	c.other, c.otherKey = must(other.ClientCert(dir, "other-ca", x509.Certificate{Subject: pkix.Name{CommonName: "garage"}, URIs: []*url.URL{garage}}))
	c.expired, c.expiredKey = must(pki.ClientCert(dir, "expired", x509.Certificate{Subject: pkix.Name{CommonName: "garage"}, URIs: []*url.URL{garage},
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}))
	c.noSAN, c.noSANKey = must(pki.ClientCert(dir, "no-san", x509.Certificate{Subject: pkix.Name{CommonName: garageID}}))
	return c
}

// clientTLS is a client config presenting certFile (none: "") and
// trusting the env's upstream CA (the listeners' certificate) and the
// proxy's interception CA.
func (c *tlsClients) clientTLS(t *testing.T, e *env, certFile, keyFile string) *tls.Config {
	t.Helper()
	roots := e.pki.Pool.Clone()
	pem, _ := os.ReadFile(e.caCert)
	roots.AppendCertsFromPEM(pem)
	cfg := &tls.Config{RootCAs: roots}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}

const tlsListenersConfig = `
log: {access: true}
admin: {address: 127.0.0.1:0}
clients:
  garage: {tls: {uri_san: %[4]q}}
  office: {tls: {dns_san: app.office.internal}}
  billing: {basic: {username: billing, password: {value: "pw-billing-1"}}}
listeners:
  - {name: gw, kind: forward, address: 127.0.0.1:0, tls: {cert_file: %[5]q, key_file: %[6]q, client_ca_file: %[7]q}}
  - {name: gwb, kind: forward, address: 127.0.0.1:0, tls: {cert_file: %[5]q, key_file: %[6]q}}
  - {name: app, kind: sidecar, address: 127.0.0.1:0, host: grpc.authproxy.test, upstream: "https://grpc.authproxy.test:%[3]s",
     tls: {cert_file: %[5]q, key_file: %[6]q, client_ca_file: %[7]q}}
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1, grpc.authproxy.test: 127.0.0.1}}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: %[2]q, prefix: "Bearer "}}}
routes:
  - {name: garage, listeners: [gw], match: {host: api.authproxy.test, path: /garage/*}, injector: bearer, clients: [garage]}
  - {name: billing, listeners: [gwb], match: {host: api.authproxy.test, path: /billing/*}, injector: bearer, clients: [billing]}
  - {name: grpc, listeners: [app], match: {path: /grpc.testing.TestService/*}, injector: bearer, clients: [garage]}
  - {name: sidecar-h1, listeners: [app], match: {path: /h1/*}, injector: bearer, upstream: "https://api.authproxy.test:%[1]s", clients: [garage]}
`

// Listeners with tls: an HTTPS proxy (curl --proxy-cacert/--proxy-cert,
// Go's transport with an https proxy URL, CONNECT and intercepted HTTP/1.1
// and HTTP/2 inside) and a TLS sidecar (grpc-go with TLS credentials,
// HTTP/1.1). A certificate that names a tls client identifies it; no
// certificate, one from another CA, an expired one and one without the
// SAN are refused by the handshake, before any request is read (the
// client reads an alert, not an HTTP answer), and the upstream counts
// nothing from them. A TLS listener without client_ca_file carries basic
// authentication (the password then crosses the network encrypted).
func TestTLSListenersIdentifyClientsByCertificate(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed (bash .ci/deps installs it as root)")
	}
	e := newEnv(t)
	e.metrics = metrics.New("test")
	certs := newTLSClients(t, e)
	echo := &sim.Echo{}
	up := e.httpsUpstream(echo)
	grpcEcho, grpcPort := e.grpcUpstream()
	p := e.start(fmt.Sprintf(tlsListenersConfig, port(t, up.URL), secretToken, grpcPort, garageID,
		certs.listenerCert, certs.listener, certs.pki.CAFile), nil, nil)
	target := "https://api.authproxy.test:" + port(t, up.URL)

	var allowed int64
	curl := func(t *testing.T, args ...string) (string, error) {
		t.Helper()
		args = append([]string{"-sS", "--max-time", "30", "--proxy-cacert", e.pki.CAFile, "--cacert", e.caCert, "-o", "-", "-w", "\n%{http_code}"}, args...)
		out, err := exec.Command("curl", args...).CombinedOutput()
		return string(out), err
	}

	t.Run("curl/https-proxy-with-certificate", func(t *testing.T) {
		out, err := curl(t, "--proxy", "https://"+p.addr("gw"), "--proxy-cert", certs.good, "--proxy-key", certs.goodKey, target+"/garage/a")
		if err != nil || !strings.HasSuffix(out, "\n200") || !strings.Contains(out, secretToken) {
			t.Fatalf("curl: %v\n%s", err, out)
		}
		allowed++
	})
	refused := []struct{ name, cert, key string }{
		{"no certificate", "", ""},
		{"another CA", certs.other, certs.otherKey},
		{"expired", certs.expired, certs.expiredKey},
		{"no SAN", certs.noSAN, certs.noSANKey},
	}
	for _, c := range refused {
		t.Run("curl/refused/"+c.name, func(t *testing.T) {
			args := []string{"--proxy", "https://" + p.addr("gw"), target + "/garage/a"}
			if c.cert != "" {
				args = append(args, "--proxy-cert", c.cert, "--proxy-key", c.key)
			}
			out, err := curl(t, args...)
			if err == nil || strings.HasSuffix(out, "\n200") {
				t.Fatalf("curl got through: %s", out)
			}
		})
		// Go: the TLS 1.3 client finishes its side of the handshake before
		// the proxy checks its certificate, so it writes a whole CONNECT;
		// what it reads back is the proxy's alert, never an HTTP answer.
		t.Run("go/refused/"+c.name, func(t *testing.T) {
			conn, err := tls.Dial("tcp", p.addr("gw"), certs.clientTLS(t, e, c.cert, c.key))
			if err == nil {
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(30 * time.Second))
				fmt.Fprintf(conn, "CONNECT api.authproxy.test:%s HTTP/1.1\r\nHost: api.authproxy.test\r\n\r\n", port(t, up.URL))
				var resp *http.Response
				if resp, err = http.ReadResponse(bufio.NewReader(conn), nil); err == nil {
					t.Fatalf("the proxy answered %s", resp.Status)
				}
			}
			if !strings.Contains(err.Error(), "remote error: tls:") {
				t.Fatalf("%v, want the proxy's TLS alert", err)
			}
			t.Logf("%v", err)
		})
	}

	t.Run("go/https-proxy", func(t *testing.T) {
		// Go's transport: an https proxy URL; its TLS config serves the
		// proxy's handshake and the target's (through CONNECT).
		for _, h2 := range []bool{false, true} {
			tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "https", Host: p.addr("gw")}),
				TLSClientConfig: certs.clientTLS(t, e, certs.good, certs.goodKey), ForceAttemptHTTP2: h2}
			resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get(target + "/garage/b")
			if err != nil {
				t.Fatal(err)
			}
			seen := decodeSeen(t, resp)
			if seen.Header.Get("Authorization") != "Bearer "+secretToken || (h2 && resp.ProtoMajor != 2) {
				t.Errorf("h2 %v: %s, the upstream saw Authorization %q", h2, resp.Proto, seen.Header.Get("Authorization"))
			}
			allowed++
			tr.CloseIdleConnections()
		}
		// The DNS SAN identifies office, which the route does not name.
		tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "https", Host: p.addr("gw")}),
			TLSClientConfig: certs.clientTLS(t, e, certs.dns, certs.dnsKey)}
		resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get(target + "/garage/b")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("office on garage's route: %d, want 403", resp.StatusCode)
		}
	})

	t.Run("curl/https-proxy-with-basic", func(t *testing.T) {
		out, err := curl(t, "--proxy", "https://billing:pw-billing-1@"+p.addr("gwb"), target+"/billing/a")
		if err != nil || !strings.HasSuffix(out, "\n200") || !strings.Contains(out, secretToken) {
			t.Fatalf("curl: %v\n%s", err, out)
		}
		allowed++
		out, err = curl(t, "--proxy", "https://billing:wrong@"+p.addr("gwb"), target+"/billing/a")
		if err == nil && !strings.HasSuffix(out, "\n407") {
			t.Fatalf("a wrong password: %s", out)
		}
	})

	t.Run("sidecar/grpc", func(t *testing.T) {
		call := func(certFile, keyFile string) error {
			cfg := certs.clientTLS(t, e, certFile, keyFile)
			cfg.ServerName = "proxy.authproxy.test"
			conn, err := grpc.NewClient(p.addr("app"), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err = testpb.NewTestServiceClient(conn).UnaryCall(ctx, &testpb.SimpleRequest{})
			return err
		}
		if err := call(certs.good, certs.goodKey); err != nil {
			t.Fatalf("garage: %v", err)
		}
		if err := call(certs.dns, certs.dnsKey); status.Code(err) != codes.PermissionDenied {
			t.Errorf("office: %v, want PERMISSION_DENIED", err)
		}
		for _, c := range refused {
			if err := call(c.cert, c.key); status.Code(err) != codes.Unavailable {
				t.Errorf("%s: %v, want UNAVAILABLE (no connection)", c.name, err)
			}
		}
		if got := grpcEcho.Calls(); got != 1 {
			t.Errorf("the gRPC upstream served %d calls, want 1", got)
		}
	})

	t.Run("sidecar/http1", func(t *testing.T) {
		cfg := certs.clientTLS(t, e, certs.good, certs.goodKey)
		cfg.ServerName = "proxy.authproxy.test"
		tr := &http.Transport{Proxy: nil, TLSClientConfig: cfg}
		resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get("https://" + p.addr("app") + "/h1/x")
		if err != nil {
			t.Fatal(err)
		}
		if seen := decodeSeen(t, resp); seen.Header.Get("Authorization") != "Bearer "+secretToken {
			t.Errorf("the upstream saw Authorization %q", seen.Header.Get("Authorization"))
		}
		allowed++
	})

	if got := echo.Requests(); got != allowed {
		t.Errorf("the upstream served %d requests, want the %d allowed ones only", got, allowed)
	}
	waitFor(t, "the refused handshakes counted", func() bool {
		return value(scrape(t, p), "authproxy_listener_tls_handshake_failures_total", map[string]string{"listener": "gw"}) == float64(2*len(refused))
	})
	if !strings.Contains(p.logs.String(), "TLS listener: a client's handshake failed") {
		t.Error("the log does not say a client's handshake failed")
	}
	if strings.Contains(p.logs.String(), "pw-billing-1") {
		t.Error("the log shows a password")
	}
}

// A reload applies tls clients to the next request of a connection already
// open, and a listener's certificate files are served again when they
// change, without a restart.
func TestTLSListenerReloadsClientsAndCertificate(t *testing.T) {
	e := newEnv(t)
	certs := newTLSClients(t, e)
	echo := &sim.Echo{}
	up := e.httpsUpstream(echo)
	cfgText := func(garage string) string {
		return fmt.Sprintf(`
clients:
  garage: {tls: {uri_san: %q}}
  office: {tls: {dns_san: app.office.internal}}
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.authproxy.test:%s",
     tls: {cert_file: %q, key_file: %q, client_ca_file: %q}}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1}}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: %q, prefix: "Bearer "}}}
routes:
  - {name: garage, match: {path: /garage/*}, injector: bearer, clients: [garage]}
`, garage, port(t, up.URL), certs.listenerCert, certs.listener, certs.pki.CAFile, secretToken)
	}
	p := e.start(cfgText(garageID), nil, nil)
	cfg := certs.clientTLS(t, e, certs.good, certs.goodKey)
	cfg.ServerName = "proxy.authproxy.test"
	tr := &http.Transport{Proxy: nil, TLSClientConfig: cfg, MaxConnsPerHost: 1}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var conns int
	trace := func(resp *http.Response, err error) int {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	get := func() int {
		req, _ := http.NewRequest("GET", "https://"+p.addr("app")+"/garage/x", nil)
		return trace(client.Do(req.WithContext(withConnCount(context.Background(), &conns))))
	}
	if st := get(); st != 200 {
		t.Fatalf("garage: %d", st)
	}
	// The reload gives garage's certificate no client any more: the same
	// connection's next request has no identity.
	reloadText(t, e, p, cfgText("spiffe://cluster.local/ns/garage/sa/other"))
	if st := get(); st != http.StatusProxyAuthRequired {
		t.Errorf("after the reload: %d, want 407", st)
	}
	if conns != 1 {
		t.Errorf("%d connections, want both requests on one", conns)
	}

	// The listener's certificate is renewed on disk: new handshakes get
	// the new one.
	serial := func() string {
		c, err := tls.Dial("tcp", p.addr("app"), &tls.Config{RootCAs: e.pki.Pool, ServerName: "proxy.authproxy.test",
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before := serial()
	renewed := filepath.Join(e.dir, "renewed")
	os.MkdirAll(renewed, 0o755)
	cert, key, err := e.pki.ServerCertFiles(renewed, "listener", "proxy.authproxy.test", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range [][2]string{{cert, certs.listenerCert}, {key, certs.listener}} {
		if err := os.Rename(f[0], f[1]); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the renewed certificate served", func() bool { return serial() != before })
	if !strings.Contains(p.logs.String(), "certificate files reloaded") {
		t.Error("the log does not say the certificate was reloaded")
	}
}

// withConnCount counts the connections a request's transport dials.
func withConnCount(ctx context.Context, n *int) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if !info.Reused {
			*n++
		}
	}})
}

// newServerErr is proxy.New's error for a config (nil: it built).
func newServerErr(t *testing.T, yamlText string) error {
	t.Helper()
	cfg, err := config.Parse([]byte(yamlText))
	if err != nil {
		return err
	}
	injs, err := injectors.BuildAll(cfg, injectors.Env{})
	if err != nil {
		return err
	}
	_, err = proxy.New(cfg, injs, proxy.Options{})
	return err
}

// The listener's key must be the proxy's alone, as the CA's.
func TestTLSListenerRefusesAKeyOthersCanRead(t *testing.T) {
	e := newEnv(t)
	certs := newTLSClients(t, e)
	os.Chmod(certs.listener, 0o644)
	text := strings.NewReplacer("{{CA_CERT}}", e.caCert, "{{CA_KEY}}", e.caKey, "{{UPSTREAM_CA}}", e.pki.CAFile).Replace(fmt.Sprintf(`
clients:
  garage: {tls: {uri_san: %q}}
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.authproxy.test",
     tls: {cert_file: %q, key_file: %q, client_ca_file: %q}}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: %q, prefix: "Bearer "}}}
routes:
  - {name: garage, match: {path: /garage/*}, injector: bearer, clients: [garage]}
`, garageID, certs.listenerCert, certs.listener, certs.pki.CAFile, secretToken))
	err := newServerErr(t, text)
	if err == nil || !strings.Contains(err.Error(), "listeners[0].tls.key_file") || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("New: %v, want listeners[0].tls.key_file refused with how to fix it", err)
	}
}

// A client of a TLS listener that connects and never finishes its
// handshake (silent, or stopping after a few bytes of a ClientHello) is
// cut off by timeouts.read_header, on a sidecar and on a forward listener:
// the handshake is part of reading the request's first bytes.
func TestTLSListenerBoundsTheHandshake(t *testing.T) {
	e := newEnv(t)
	certs := newTLSClients(t, e)
	p := e.start(fmt.Sprintf(`
timeouts: {read_header: 300ms}
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.authproxy.test", tls: {cert_file: %[1]q, key_file: %[2]q}}
  - {name: fwd, kind: forward, address: 127.0.0.1:0, tls: {cert_file: %[1]q, key_file: %[2]q}}
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
injectors:
  tok: {kind: static, headers: {Authorization: {value: x}}}
routes:
  - {name: a, listeners: [app], match: {path: /a/*}, injector: tok}
  - {name: f, listeners: [fwd], match: {host: api.authproxy.test}, injector: tok}
`, certs.listenerCert, certs.listener), nil, nil)
	for _, l := range []string{"app", "fwd"} {
		for _, first := range []string{"", "\x16\x03\x01\x02\x00\x01"} { // nothing; a ClientHello's first bytes
			t.Run(fmt.Sprintf("%s/%d-bytes", l, len(first)), func(t *testing.T) {
				c, err := net.Dial("tcp", p.addr(l))
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.Write([]byte(first))
				// Far beyond read_header: a connection still open then was
				// never cut off.
				c.SetReadDeadline(time.Now().Add(30 * time.Second))
				if _, err := io.Copy(io.Discard, c); err != nil {
					t.Fatalf("the proxy did not close the connection: %v", err)
				}
			})
		}
	}
}
