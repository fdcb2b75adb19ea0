package proxy_test

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/authproxy/authproxy/metrics"
	"github.com/authproxy/authproxy/sim"
)

func adminGet(t *testing.T, r *running, path string) (int, string) {
	t.Helper()
	resp, err := h1Client().Get("http://" + r.srv.AdminAddr().String() + path)
	if err != nil {
		t.Fatalf("admin %s: %v", path, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(body)
}

// The admin listener answers liveness and readiness; on shutdown readiness
// turns false at once while the listeners keep serving for
// timeouts.shutdown_delay (a probe loop sees 503 while a request through
// the sidecar still succeeds), and only then do they stop. The profiler is
// served only when asked for.
func TestAdminHealthReadinessAndShutdownDelay(t *testing.T) {
	e := newEnv(t)
	up := e.httpsUpstream(&sim.Echo{})
	cfg := strings.Replace(sidecarConfig(port(t, up.URL), "deny"), "listeners:\n", "admin: {address: 127.0.0.1:0}\ntimeouts: {shutdown_delay: 1s}\nlisteners:\n", 1)
	p := e.start(cfg, nil, nil)
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/debug/pprof/": 404, "/metrics-or-anything": 404} {
		if st, body := adminGet(t, p, path); st != want {
			t.Errorf("%s: %d %q, want %d", path, st, body, want)
		}
	}
	stopped := make(chan error, 1)
	go func() { stopped <- p.stop() }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, body := adminGet(t, p, "/readyz")
		if st == http.StatusServiceUnavailable && body == "not ready: shutting down\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readiness still %d %q after 5 s of shutdown", st, body)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Not ready, still serving: the delay is for load balancers to notice.
	if err := getOK(h1Client(), "http://"+p.addr("app")+"/v1/during-the-delay"); err != nil {
		t.Errorf("a request during the shutdown delay: %v", err)
	}
	if st, _ := adminGet(t, p, "/healthz"); st != 200 {
		t.Errorf("liveness during shutdown: %d", st)
	}
	select {
	case err := <-stopped:
		t.Fatalf("Run returned (%v) before the shutdown delay ended", err)
	default:
	}
	if err := <-stopped; err != nil {
		t.Errorf("Run: %v", err)
	}
	waitRefused(t, p.addr("app"))
	if !strings.Contains(p.logs.String(), "shutting down: not ready") {
		t.Errorf("the delay is not logged:\n%s", p.logs.String())
	}
}

func TestAdminProfilerIsOptIn(t *testing.T) {
	e := newEnv(t)
	up := e.httpsUpstream(&sim.Echo{})
	cfg := strings.Replace(sidecarConfig(port(t, up.URL), "deny"), "listeners:\n", "admin: {address: 127.0.0.1:0, pprof: true}\nlisteners:\n", 1)
	p := e.start(cfg, nil, nil)
	st, body := adminGet(t, p, "/debug/pprof/")
	if st != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/: %d %.200q", st, body)
	}
	if st, body := adminGet(t, p, "/debug/pprof/heap?debug=1"); st != 200 || strings.Contains(body, secretToken) {
		t.Errorf("heap profile: %d (or it shows the secret)", st)
	}
}

// No answer of the admin listener is for a cache to keep (docs/operations.md).
func TestAdminAnswersAreNeverCached(t *testing.T) {
	e := newEnv(t)
	e.metrics = metrics.New("test")
	up := e.httpsUpstream(&sim.Echo{})
	cfg := strings.Replace(sidecarConfig(port(t, up.URL), "deny"), "listeners:\n", "admin: {address: 127.0.0.1:0, pprof: true}\nlisteners:\n", 1)
	p := e.start(cfg, nil, nil)
	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/status", "/status?format=json", "/logging", "/debug/pprof/", "/debug/pprof/heap", "/nowhere"} {
		resp, err := h1Client().Get("http://" + p.srv.AdminAddr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
			t.Errorf("%s: Cache-Control %q, want no-store", path, cc)
		}
	}
}

// An injector with warm: true fetches its token as the proxy starts, with
// no request, and readiness waits for it: while the issuer fails, /readyz
// names the injector; once it answers, the proxy is ready and the first
// request costs no fetch.
func TestWarmInjectorsGateReadiness(t *testing.T) {
	e := newEnv(t)
	ts := &sim.TokenServer{ClientID: "fleet-app", ClientSecret: secretToken}
	var down atomic.Bool
	down.Store(true)
	auth := e.httpsUpstream(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "maintenance", http.StatusServiceUnavailable)
			return
		}
		ts.ServeHTTP(w, r)
	}))
	up := e.httpsUpstream(ts.RequireToken(&sim.Echo{}))
	p := e.start(fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
token_cache: {min_backoff: 20ms, max_backoff: 50ms}
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.authproxy.test:%s"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1, auth.authproxy.test: 127.0.0.1}}
injectors:
  fleet:
    kind: oauth2
    warm: true
    token_url: "https://auth.authproxy.test:%s/token"
    client_id: {value: fleet-app}
    client_secret: {value: %q}
  plain: {kind: static, warm: true, headers: {X-Key: {value: k}}}
routes:
  - {name: api, match: {path: /v1/*}, injector: fleet}
  - {name: other, match: {path: /v2/*}, injector: plain}
`, port(t, up.URL), port(t, auth.URL), secretToken), nil, nil)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st, body := adminGet(t, p, "/readyz")
		if st != http.StatusServiceUnavailable || body != "not ready: injector \"fleet\" does not hold its credentials yet\n" {
			t.Fatalf("while the issuer fails: %d %q", st, body)
		}
		if strings.Contains(p.logs.String(), "token fetch failing") || time.Now().After(deadline) {
			break
		}
	}
	down.Store(false)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if st, _ := adminGet(t, p, "/readyz"); st == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not ready 5 s after the issuer recovered")
		}
	}
	if n := ts.Calls(); n != 1 {
		t.Errorf("%d token requests before any request, want 1", n)
	}
	if err := getOK(h1Client(), "http://"+p.addr("app")+"/v1/x"); err != nil {
		t.Fatal(err)
	}
	if n := ts.Calls(); n != 1 {
		t.Errorf("%d token requests after the first request, want still 1", n)
	}
	if !strings.Contains(p.logs.String(), `injector warm: its credentials are held" injector=fleet`) {
		t.Errorf("warming is not logged:\n%s", p.logs.String())
	}
}

// admin.clients: Prometheus scrapes /metrics with basic auth (its
// basic_auth sends Authorization: Basic), everyone else gets 401 (a wrong
// password too) or 403 (a known client not named), and the probes'
// /healthz and /readyz stay open.
func TestAdminClients(t *testing.T) {
	e := newEnv(t)
	e.metrics = metrics.New("test")
	up := e.httpsUpstream(&sim.Echo{})
	cfg := strings.Replace(sidecarConfig(port(t, up.URL), "deny"), "listeners:\n", `clients:
  prom: {basic: {username: prometheus, password: {value: scrape-pw}}}
  apps: {basic: {username: apps, password: {value: apps-pw}}}
admin: {address: 127.0.0.1:0, clients: [prom]}
listeners:
`, 1)
	p := e.start(cfg, nil, nil)
	get := func(path, auth string) (int, http.Header) {
		req, _ := http.NewRequest("GET", "http://"+p.srv.AdminAddr().String()+path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := h1Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header
	}
	basic := func(u, pw string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+pw)) }
	for _, path := range []string{"/healthz", "/readyz"} {
		if st, _ := get(path, ""); st != 200 {
			t.Errorf("%s without credentials: %d, want 200 (probes)", path, st)
		}
	}
	for _, path := range []string{"/metrics", "/status", "/status?format=json", "/logging"} {
		if st, h := get(path, ""); st != http.StatusUnauthorized || h.Get("WWW-Authenticate") == "" {
			t.Errorf("%s without credentials: %d %v, want 401 with WWW-Authenticate", path, st, h)
		}
		if st, _ := get(path, basic("prometheus", "wrong")); st != http.StatusUnauthorized {
			t.Errorf("%s with a wrong password: %d, want 401", path, st)
		}
		if st, _ := get(path, basic("apps", "apps-pw")); st != http.StatusForbidden {
			t.Errorf("%s as a client admin.clients does not name: %d, want 403", path, st)
		}
		// (/logging answers 501 here: the test's logger has a fixed level.)
		if st, _ := get(path, basic("prometheus", "scrape-pw")); st != 200 && !(path == "/logging" && st == http.StatusNotImplemented) {
			t.Errorf("%s as prometheus: %d, want it served", path, st)
		}
	}
}
