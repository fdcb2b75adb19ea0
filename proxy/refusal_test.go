package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/sim"
)

// A scanner sending requests no route matches (to a sidecar over HTTP/1.1
// and h2c, and to a forward listener with absolute URIs) gets its 404s,
// and floods no log: each refusal is a sampled line at info, never a
// warning.
func TestUnmatchedRequestsAreRefusedQuietly(t *testing.T) {
	e := newEnv(t)
	up := e.httpsUpstream(&sim.Echo{})
	cfg := sidecarConfig(port(t, up.URL), "deny")
	cfg = strings.Replace(cfg, "listeners:\n", "listeners:\n  - {name: fwd, kind: forward, address: 127.0.0.1:0}\n", 1)
	cfg = strings.Replace(cfg, "upstream:\n", "ca: {cert_file: \"{{CA_CERT}}\", key_file: \"{{CA_KEY}}\"}\nupstream:\n", 1)
	cfg = strings.Replace(cfg, "    match: {path: /v1/*}\n", "    listeners: [app]\n    match: {path: /v1/*}\n", 1)
	cfg = strings.Replace(cfg, "    match: {path: /v2/*}\n", "    listeners: [app]\n    match: {path: /v2/*}\n", 1)
	p := e.start(cfg, nil, nil)
	const each = 40
	start := time.Now()
	clients := map[string]func(i int) (*http.Response, error){
		"sidecar http1": func(i int) (*http.Response, error) {
			return h1Client().Get(fmt.Sprintf("http://%s/admin/%d", p.addr("app"), i))
		},
		"sidecar h2c": func(i int) (*http.Response, error) {
			return h2cClient().Get(fmt.Sprintf("http://%s/.env/%d", p.addr("app"), i))
		},
		"forward absolute URI": func(i int) (*http.Response, error) {
			return proxiedClient(p.addr("fwd"), &tlsRoots{e.proxyCA}, false).Get(fmt.Sprintf("http://scan.example.test/wp-login.php?i=%d", i))
		},
	}
	for name, get := range clients {
		for i := range each {
			resp, err := get(i)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusForbidden {
				t.Fatalf("%s: %d, want a refusal", name, resp.StatusCode)
			}
		}
	}
	elapsed := time.Since(start)
	logs := p.logs.String()
	if n := strings.Count(logs, "level=WARN"); n != 0 {
		t.Errorf("%d warnings for %d refused requests:\n%.3000s", n, 3*each, logs)
	}
	lines := strings.Count(logs, `level=INFO msg="request refused: no route matches"`)
	if bound := 10 + int(elapsed.Seconds()) + 1; lines == 0 || lines > bound {
		t.Errorf("%d info lines for %d refused requests in %v, want 1 to %d", lines, 3*each, elapsed, bound)
	}
}
