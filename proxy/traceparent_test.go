package proxy_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/sim"
)

// With tracing off, on both listener kinds and both engines: a client's
// traceparent reaches the upstream unchanged and a request without one
// gets none; every access-log line names the request (the trace id, or an
// id the proxy makes), and the proxy's own error answers carry that id as
// X-Request-Id.
func TestTraceContextPassesThroughWithTracingOff(t *testing.T) {
	e := newEnv(t)
	up := e.httpsUpstream(&sim.Echo{})
	cfg := fmt.Sprintf(`
log: {access: true}
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.authproxy.test:%s"}
  - {name: fwd, kind: forward, address: 127.0.0.1:0}
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1}}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: %q, prefix: "Bearer "}}}
routes:
  - {name: side, listeners: [app], match: {path: /v1/*}, injector: bearer}
  - {name: api, listeners: [fwd], match: {host: api.authproxy.test, path: /v1/*}, injector: bearer}
`, port(t, up.URL), secretToken)
	p := e.start(cfg, nil, nil)
	base := map[string]string{
		"sidecar": "http://" + p.addr("app"),
		"forward": "https://api.authproxy.test:" + port(t, up.URL),
	}
	clients := map[string]map[string]*http.Client{
		"sidecar": {"http1": h1Client(), "h2": h2cClient()},
		"forward": {"http1": proxiedClient(p.addr("fwd"), &tlsRoots{e.proxyCA}, false), "h2": proxiedClient(p.addr("fwd"), &tlsRoots{e.proxyCA}, true)},
	}
	n := 0
	for listener, byProto := range clients {
		for proto, c := range byProto {
			t.Run(listener+"/"+proto, func(t *testing.T) {
				n++
				trace := fmt.Sprintf("0af7651916cd43dd8448eb211c80319%x", n)
				tp := "00-" + trace + "-b7ad6b7169203331-01"
				do := func(path, traceparent string) (*http.Response, sim.Seen) {
					req, _ := http.NewRequest("GET", base[listener]+path, nil)
					if traceparent != "" {
						req.Header.Set("Traceparent", traceparent)
						req.Header.Set("Tracestate", "vendor=opaque")
					}
					resp, err := c.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					defer resp.Body.Close()
					body, _ := io.ReadAll(resp.Body)
					var seen sim.Seen
					if resp.StatusCode == 200 {
						json.Unmarshal(body, &seen)
					}
					return resp, seen
				}
				_, seen := do("/v1/traced", tp)
				if seen.Header.Get("Traceparent") != tp || seen.Header.Get("Tracestate") != "vendor=opaque" {
					t.Errorf("the upstream got traceparent %q, tracestate %q: want the client's unchanged", seen.Header.Get("Traceparent"), seen.Header.Get("Tracestate"))
				}
				_, seen = do("/v1/untraced", "")
				if v := seen.Header.Values("Traceparent"); len(v) != 0 {
					t.Errorf("the upstream got traceparent %q for a request without one", v)
				}
				refused := "/nowhere-" + listener + "-" + proto // each subtest's own line
				resp, _ := do(refused, "")
				id := resp.Header.Get("X-Request-Id")
				if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusForbidden || !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(id) {
					t.Fatalf("a refused request: %d, X-Request-Id %q", resp.StatusCode, id)
				}
				waitFor(t, "the access-log lines", func() bool {
					return regexp.MustCompile(`msg=request .*path=`+refused+` .*request_id=`).MatchString(p.logs.String()) && strings.Contains(p.logs.String(), "request_id="+trace)
				})
				logs := p.logs.String()
				if !regexp.MustCompile(`path=` + refused + ` .*request_id=` + id).MatchString(logs) {
					t.Errorf("the refused request's access-log line does not name X-Request-Id %s:\n%s", id, logs)
				}
				if !regexp.MustCompile(`path=/v1/traced .*protocol=` + map[string]string{"http1": "http1", "h2": "h2"}[proto] + ` .*request_id=` + trace).MatchString(logs) {
					t.Errorf("the traced request's access-log line does not name its trace %s", trace)
				}
			})
		}
	}
}
