package proxy_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/hostile"
)

// An upstream that leaves an answer queued behind the one it was asked for
// (a body on HEAD, 204, 304 or 1xx; two answers; a chunked answer whose
// Content-Length runs past its last chunk; differing Content-Lengths), at
// once or while the connection sits idle, never answers another client:
// through the sidecar's HTTP/1.1 engine, its HTTP/2 engine bridged to an
// HTTP/1.1 upstream, the forward listener's interception and its
// absolute-URI requests, the trigger's client gets what net/http gives it
// (a 502 where net/http fails), and three clients after it, each on a
// connection of its own, get their own answers.
func TestHostileUpstreamNeverAnswersAnotherClient(t *testing.T) {
	log.SetOutput(io.Discard) // http.Transport's "Unsolicited response" lines
	t.Cleanup(func() { log.SetOutput(os.Stderr) })
	for _, late := range []bool{false, true} {
		for _, tr := range hostile.Triggers {
			t.Run(fmt.Sprintf("late=%v/%s", late, tr.Name), func(t *testing.T) {
				answer, tail := tr.Answer, ""
				if late {
					answer, tail = tr.Late()
				}
				wantStatus, wantBody := referenceAnswer(t, tr.Method, answer)

				e := newEnv(t)
				tlsCfg, err := e.pki.ServerTLS(upstreamNames...)
				if err != nil {
					t.Fatal(err)
				}
				secure, err := hostile.Start(tlsCfg, answer, tail)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(secure.Close)
				plain, err := hostile.Start(nil, answer, tail)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(plain.Close)
				p := e.start(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, host: api.authproxy.test, upstream: "https://api.authproxy.test:%[1]s"}
  - {name: fwd, kind: forward, address: 127.0.0.1:0}
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1, plain.authproxy.test: 127.0.0.1}}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: %[3]q, prefix: "Bearer "}}}
routes:
  - {name: api, listeners: [app], match: {path: "/*"}, injector: bearer}
  - {name: fwd-api, listeners: [fwd], match: {host: api.authproxy.test}, injector: bearer}
  - {name: fwd-plain, listeners: [fwd], match: {host: plain.authproxy.test}, injector: bearer, allow_plaintext: true}
`, port(t, secure.Addr()), port(t, plain.Addr()), secretToken), nil, nil)

				fwd := &url.URL{Scheme: "http", Host: p.addr("fwd")}
				paths := []struct {
					name     string
					upstream *hostile.Server
					base     string
					client   func() *http.Client
				}{
					{"sidecar HTTP/1.1", secure, "http://" + p.addr("app"), h1Client},
					{"sidecar h2c bridged to HTTP/1.1", secure, "http://" + p.addr("app"), h2cClient},
					{"forward, intercepted", secure, "https://api.authproxy.test:" + port(t, secure.Addr()), func() *http.Client {
						return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
							Proxy: http.ProxyURL(fwd), TLSClientConfig: &tls.Config{RootCAs: e.proxyCA}, DisableCompression: true}}
					}},
					{"forward, absolute URI", plain, "http://plain.authproxy.test:" + port(t, plain.Addr()), func() *http.Client {
						return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(fwd), DisableCompression: true}}
					}},
				}
				for _, path := range paths {
					c := path.client()
					status, body := send(t, c, tr.Method, path.base+"/hostile")
					c.CloseIdleConnections()
					if status != wantStatus || body != wantBody {
						t.Errorf("%s: the trigger's client got %d %q, want %d %q", path.name, status, body, wantStatus, wantBody)
					}
					if !path.upstream.SendTail() {
						t.Fatalf("%s: the upstream never wrote its tail", path.name)
					}
					for i := 1; i <= 3; i++ {
						m := fmt.Sprintf("client-%d", i)
						c := path.client()
						req, _ := http.NewRequest(http.MethodGet, path.base+"/m/"+m, nil)
						resp, err := c.Do(req)
						if err != nil {
							t.Fatalf("%s: %s: %v", path.name, m, err)
						}
						b, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						c.CloseIdleConnections()
						if resp.StatusCode != 200 || resp.Header.Get("X-Marker") != m || string(b) != m {
							t.Fatalf("%s: %s after the trigger got %d marker %q body %q", path.name, m, resp.StatusCode, resp.Header.Get("X-Marker"), b)
						}
					}
				}
			})
		}
	}
}

// referenceAnswer is what net/http's client gets for answer to method (a
// failure as 502, the gateway's status for it).
func referenceAnswer(t *testing.T, method, answer string) (int, string) {
	t.Helper()
	ref, err := hostile.Start(nil, answer, "")
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	c := h1Client()
	defer c.CloseIdleConnections()
	return send(t, c, method, ref.URL()+"/hostile")
}

// send makes one request and reads its answer; a failed request is a 502.
func send(t *testing.T, c *http.Client, method, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := c.Do(req)
	if err != nil {
		return http.StatusBadGateway, ""
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return http.StatusBadGateway, string(b)
	}
	if resp.StatusCode == http.StatusBadGateway {
		return resp.StatusCode, "" // the proxy's message, not the upstream's
	}
	return resp.StatusCode, string(b)
}
