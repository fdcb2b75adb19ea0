package proxy_test

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/sim"
	"github.com/authproxy/authproxy/tokencache"
)

// certSeen records the common name of the client certificate each request
// came with ("" for none).
type certSeen struct {
	mu   sync.Mutex
	seen []string
}

func (c *certSeen) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cn := ""
		if len(r.TLS.PeerCertificates) > 0 {
			cn = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		c.mu.Lock()
		c.seen = append(c.seen, cn)
		c.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}

func (c *certSeen) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.seen...)
}

// The VISS reference servers with serverCertOpt ClientCertVerification
// (sim.WAIIClientAuth, as w3c/automotive-viss2 applies it: on the ATS and
// the data server; its AGT server takes no TLS option, so here it only
// asks for a certificate, to see what the proxy presents). The viss
// injector's tls_client is presented to the AGT and the ATS, the route's to
// the data server, through the sidecar (HTTP/1.1 and h2c) and the forward
// listener. Without them, or with a certificate of another CA, the
// servers' refusal reaches the client as a clear error.
func TestVISSWithClientCertificateVerification(t *testing.T) {
	e := newEnv(t)
	clientCA, err := sim.NewPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	other, _ := sim.NewPKI(t.TempDir())
	dir := filepath.Join(e.dir, "mtls")
	os.MkdirAll(dir, 0o755)
	cert, key, err := clientCA.ClientCert(dir, "fleet", x509.Certificate{Subject: pkix.Name{CommonName: "fleet-gateway"}})
	if err != nil {
		t.Fatal(err)
	}
	wrongCert, wrongKey, _ := other.ClientCert(dir, "wrong", x509.Certificate{Subject: pkix.Name{CommonName: "fleet-gateway"}})

	viss := sim.NewVISS()
	t.Cleanup(viss.Close)
	var agtSeen, atsSeen, dataSeen certSeen
	serve := func(h http.Handler, opt string) *httptest.Server {
		srv := httptest.NewUnstartedServer(h)
		cfg, err := e.pki.ServerTLS(upstreamNames...)
		if err != nil {
			t.Fatal(err)
		}
		cfg.ClientAuth, cfg.ClientCAs = sim.WAIIClientAuth(opt, clientCA.Pool)
		if opt == "" { // the reference AGT server: no TLS option; asked here only to see
			cfg.ClientAuth, cfg.ClientCAs = tls.RequestClientCert, nil
		}
		srv.TLS = cfg
		srv.EnableHTTP2 = true
		srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes of the subtests
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv
	}
	agts := serve(agtSeen.wrap(viss.AGTS()), "")
	ats := serve(atsSeen.wrap(viss.ATS()), "ClientCertVerification")
	data := serve(dataSeen.wrap(viss.Data()), "ClientCertVerification")

	start := func(injectorCert, routeCert [2]string) *running {
		tlsClient := func(c [2]string) string {
			if c[0] == "" {
				return ""
			}
			return fmt.Sprintf("tls_client: {cert_file: %q, key_file: %q}", c[0], c[1])
		}
		routeExtra := ""
		if routeCert[0] != "" {
			routeExtra = ", " + tlsClient(routeCert)
		}
		e.injEnv = injectors.Env{Cache: tokencache.New(tokencache.Options{FetchTimeout: 10 * time.Second})}
		injectorExtra := ""
		if injectorCert[0] != "" {
			injectorExtra = "    " + tlsClient(injectorCert)
		}
		return e.start(vissConfig(port(t, agts.URL), port(t, ats.URL), port(t, data.URL), filepath.Join(t.TempDir(), "viss-key.pem"),
			injectorExtra, routeExtra), nil, nil)
	}
	get := func(p *running, mode string) (int, string) {
		c, base := h1Client(), "http://"+p.addr("app")
		switch mode {
		case "sidecar-h2c":
			c = h2cClient()
		case "forward":
			c, base = proxiedClient(p.addr("fwd"), &tlsRoots{e.proxyCA}, true), "https://viss.authproxy.test:"+port(t, data.URL)
		}
		req, _ := http.NewRequest("GET", base+"/Vehicle/Speed", nil)
		req.Header.Set("X-Vin", "VIN-A")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	modes := []string{"sidecar", "sidecar-h2c", "forward"}

	p := start([2]string{cert, key}, [2]string{cert, key})
	for _, mode := range modes {
		if st, body := get(p, mode); st != 200 || !strings.Contains(body, `"value":"42"`) {
			t.Fatalf("%s: %d %s", mode, st, body)
		}
	}
	for name, seen := range map[string]*certSeen{"AGT": &agtSeen, "ATS": &atsSeen, "data": &dataSeen} {
		all := seen.all()
		if len(all) == 0 {
			t.Errorf("no request reached the %s server", name)
		}
		for _, cn := range all {
			if cn != "fleet-gateway" {
				t.Errorf("a request to the %s server came with certificate %q", name, cn)
			}
		}
	}

	for _, c := range []struct {
		name            string
		injector, route [2]string
		status          int
		says, logs      string
	}{
		{"no certificate for the ATS", [2]string{}, [2]string{cert, key}, http.StatusServiceUnavailable, "credential unavailable", "ATS request to https://viss.authproxy.test:"},
		{"another CA's for the ATS", [2]string{wrongCert, wrongKey}, [2]string{cert, key}, http.StatusServiceUnavailable, "credential unavailable", "ATS request to https://viss.authproxy.test:"},
		{"no certificate for the data server", [2]string{cert, key}, [2]string{}, http.StatusBadGateway, "upstream unavailable", `err="route \"vehicle\": upstream: remote error: tls: certificate required"`},
		{"another CA's for the data server", [2]string{cert, key}, [2]string{wrongCert, wrongKey}, http.StatusBadGateway, "upstream unavailable", `err="route \"vehicle\": upstream: remote error: tls: unknown certificate authority"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := start(c.injector, c.route)
			for _, mode := range modes {
				if st, body := get(p, mode); st != c.status || !strings.Contains(body, c.says) {
					t.Errorf("%s: %d %s, want %d saying %q", mode, st, body, c.status, c.says)
				}
			}
			// What failed (for the ATS, why is not always known: a server
			// that refuses the certificate after the TLS 1.3 handshake may
			// be seen to close, reset or send an alert, and Go's HTTP/2
			// client does not always keep the alert).
			if logs := p.logs.String(); !strings.Contains(logs, c.logs) {
				t.Errorf("the log does not name what failed (%s):\n%s", c.logs, logs)
			}
		})
	}
}
