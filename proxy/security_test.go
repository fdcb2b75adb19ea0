package proxy_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// credSink is an upstream that counts the requests it gets and how many
// of them carry the test's credential.
type credSink struct {
	requests, withCred atomic.Int64
	paths              atomic.Value // the last path, for messages
}

func (s *credSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	s.paths.Store(r.RequestURI)
	if strings.Contains(r.Header.Get("Authorization"), secretToken) {
		s.withCred.Add(1)
	}
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "text/plain")
	_, _ = io.WriteString(w, "ok "+r.URL.Path)
}

// traversalPaths are spellings of a way out of /api/ (route /api/*) that a
// normalising upstream resolves: none may get the credential.
var traversalPaths = []string{
	"/api/../admin/x",
	"/api/./x",
	"/api/x/..",
	"/api//../admin",
	"/api/%2e%2e/admin",
	"/api/%2E%2E/admin",
	"/api/.%2e/admin",
	"/api/%2e./admin",
	"/api/%2e/admin",
	"/api/..;/admin",
	"/api/..;jsessionid=1/admin",
	"/api/%252e%252e/admin",
	"/api/..%2Fadmin",
	"/api/..%2fadmin",
	"/api/x%2F..%2F..%2Fadmin",
	"/api/..%5Cadmin",
	"/api/..%5cadmin",
	"/api/%C0%AE%C0%AE/admin",
	"/api/%c0%ae%c0%ae/admin",
	"/api/%E0%80%AE%E0%80%AE/admin",
	"/api/%C0%AF",
	"/api/x%00.json",
}

// rawRequest sends one HTTP/1.1 request as written (no client cleans its
// target) on conn and returns the status code.
func rawRequest(t *testing.T, conn net.Conn, target, host string) int {
	t.Helper()
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer client-own\r\n\r\n", target, host)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s: %v", target, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func TestTraversalNeverGetsACredential(t *testing.T) {
	e := newEnv(t)
	sink := &credSink{}
	up := e.httpsUpstream(sink)
	plain := httptest.NewServer(sink)
	t.Cleanup(plain.Close)
	upPort, plainPort := port(t, up.URL), port(t, plain.URL)
	p := e.start(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, host: api.authproxy.test, upstream: "https://api.authproxy.test:%[1]s"}
  - {name: relay, kind: sidecar, address: 127.0.0.1:0, host: api.authproxy.test, upstream: "https://api.authproxy.test:%[1]s", h2c: relay}
  - {name: fwd, kind: forward, address: 127.0.0.1:0}
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1, plain.authproxy.test: 127.0.0.1}}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: %[2]q, prefix: "Bearer "}}}
routes:
  - {name: api, listeners: [app, relay], match: {path: /api/*}, injector: bearer}
  - {name: fwd-api, listeners: [fwd], match: {host: api.authproxy.test, path: /api/*}, injector: bearer}
  - {name: fwd-plain, listeners: [fwd], match: {host: plain.authproxy.test, path: /api/*}, injector: bearer, allow_plaintext: true}
`, upPort, secretToken), nil, nil)

	fwdClient := func(h2 bool) *http.Client { return proxiedClient(p.addr("fwd"), &tlsRoots{e.proxyCA}, h2) }
	kinds := []struct {
		name string
		get  func(t *testing.T, path string) int
	}{
		{"sidecar HTTP/1.1", func(t *testing.T, path string) int {
			c, err := net.Dial("tcp", p.addr("app"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			return rawRequest(t, c, path, "localhost")
		}},
		{"sidecar h2c", func(t *testing.T, path string) int { return statusOf(t, h2cClient(), "http://"+p.addr("app")+path) }},
		{"relay h2c", func(t *testing.T, path string) int { return statusOf(t, h2cClient(), "http://"+p.addr("relay")+path) }},
		{"forward plain HTTP", func(t *testing.T, path string) int {
			c, err := net.Dial("tcp", p.addr("fwd"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			return rawRequest(t, c, "http://plain.authproxy.test:"+plainPort+path, "plain.authproxy.test:"+plainPort)
		}},
		{"forward intercepted HTTP/1.1", func(t *testing.T, path string) int {
			return statusOf(t, fwdClient(false), "https://api.authproxy.test:"+upPort+path)
		}},
		{"forward intercepted HTTP/2", func(t *testing.T, path string) int {
			return statusOf(t, fwdClient(true), "https://api.authproxy.test:"+upPort+path)
		}},
		{"forward intercepted, raw HTTP/1.1", func(t *testing.T, path string) int {
			c, err := net.Dial("tcp", p.addr("fwd"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			target := "api.authproxy.test:" + upPort
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %v %v", resp, err)
			}
			tc := tls.Client(c, &tls.Config{ServerName: "api.authproxy.test", RootCAs: e.proxyCA, NextProtos: []string{"http/1.1"}})
			return rawRequest(t, tc, path, target)
		}},
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			sink.requests.Store(0)
			sink.withCred.Store(0)
			for _, path := range traversalPaths {
				if st := k.get(t, path); st != http.StatusBadRequest {
					t.Errorf("%s: status %d, want 400", path, st)
				}
				if n := sink.withCred.Load(); n != 0 {
					last, _ := sink.paths.Load().(string)
					t.Fatalf("%s: the upstream got the credential (last path %s)", path, last)
				}
			}
			if n := sink.requests.Load(); n != 0 {
				t.Errorf("the upstream got %d requests; refused ones must not be forwarded", n)
			}
			// The same listener still serves a clean path with the credential.
			if st := k.get(t, "/api/x/y.json"); st != http.StatusOK || sink.withCred.Load() != 1 {
				t.Errorf("a clean path: status %d, %d with the credential", st, sink.withCred.Load())
			}
		})
	}
	if logs := p.logs.String(); !strings.Contains(logs, "request path could leave the route: it has a dot segment") ||
		!strings.Contains(logs, "it has an encoded slash or backslash") || !strings.Contains(logs, "it has an overlong UTF-8 sequence") {
		t.Errorf("refusals are not logged with their reason:\n%.3000s", logs)
	}
}

func statusOf(t *testing.T, c *http.Client, url string) int {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatalf("%s: %v", url, err)
	}
	req.Header.Set("Authorization", "Bearer client-own")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", url, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// A route that opts in takes encoded slashes inside its {name} values,
// never a dot segment between them.
func TestEncodedSlashOptIn(t *testing.T) {
	e := newEnv(t)
	sink := &credSink{}
	up := e.httpsUpstream(sink)
	p := e.start(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, host: api.authproxy.test, upstream: "https://api.authproxy.test:%[1]s"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1}}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: %[2]q, prefix: "Bearer "}}}
routes:
  - {name: repos, match: {path: "/repos/{name}/files", allow_encoded_slash: true}, injector: bearer}
  - {name: api, match: {path: /api/*}, injector: bearer}
`, port(t, up.URL), secretToken), nil, nil)
	for _, tc := range []struct {
		path string
		want int
	}{
		{"/repos/org%2Frepo/files", 200},
		{"/repos/org%2F..%2Fadmin/files", 400},
		{"/repos/org%5Crepo/files", 400},
		{"/api/org%2Frepo", 400}, // another route: no opt-in
	} {
		if st := statusOf(t, h1Client(), "http://"+p.addr("app")+tc.path); st != tc.want {
			t.Errorf("%s: %d, want %d", tc.path, st, tc.want)
		}
	}
	if n := sink.withCred.Load(); n != 1 {
		t.Errorf("%d requests reached the upstream with the credential, want 1", n)
	}
}
