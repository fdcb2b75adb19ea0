package proxy_test

import (
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/metrics"
	"github.com/authproxy/authproxy/sim"
	"github.com/authproxy/authproxy/tokencache"
)

// scrape reads the admin listener's /metrics as Prometheus does.
func scrape(t *testing.T, r *running) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := h1Client().Get("http://" + r.srv.AdminAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// value is the sample of family with exactly these labels (0 if none).
func goVersion() string { return runtime.Version() }

func value(fams map[string]*dto.MetricFamily, family string, labels map[string]string) float64 {
	f := fams[family]
	if f == nil {
		return 0
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			if labels[l.GetName()] != l.GetValue() {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return 0
}

// After a known workload the metrics count it exactly: requests by
// listener, route, protocol and status class; one token fetch and every
// other lookup a hit; injections; CONNECT decisions. No label or value
// carries the token or the secret.
func TestMetricsCountAKnownWorkload(t *testing.T) {
	e := newEnv(t)
	ts := &sim.TokenServer{ClientID: "fleet-app", ClientSecret: secretToken, ExpiresIn: 3600}
	auth := e.httpsUpstream(ts)
	up := e.httpsUpstream(ts.RequireToken(&sim.Echo{}))
	e.metrics = metrics.New("test")
	opts := tokencache.Options{Observer: e.metrics}
	cache := tokencache.New(opts)
	e.metrics.WatchCache(cache)
	e.injEnv = injectors.Env{Cache: cache}
	p := e.start(fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.authproxy.test:%[1]s"}
  - {name: fwd, kind: forward, address: 127.0.0.1:0}
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1, auth.authproxy.test: 127.0.0.1}}
injectors:
  fleet:
    kind: oauth2
    token_url: "https://auth.authproxy.test:%[2]s/token"
    client_id: {value: fleet-app}
    client_secret: {value: %[3]q}
routes:
  - {name: api, listeners: [app], match: {path: /v1/*}, injector: fleet}
  - {name: fwd-api, listeners: [fwd], match: {host: api.authproxy.test, path: /v1/*}, injector: fleet}
`, port(t, up.URL), port(t, auth.URL), secretToken), nil, nil)

	h2 := h2cClient()
	for i := 0; i < 50; i++ { // one after the other: the first fetches, the rest hit
		if err := getOK(h2, "http://"+p.addr("app")+"/v1/x"); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 10; i++ {
		if err := getOK(h1Client(), "http://"+p.addr("app")+"/v1/x"); err != nil {
			t.Fatal(err)
		}
	}
	if st := statusOf(t, h1Client(), "http://"+p.addr("app")+"/nowhere"); st != http.StatusNotFound {
		t.Fatalf("unmatched: %d", st)
	}
	fwd := proxiedClient(p.addr("fwd"), &tlsRoots{e.proxyCA}, true)
	if err := getOK(fwd, "https://api.authproxy.test:"+port(t, up.URL)+"/v1/x"); err != nil {
		t.Fatal(err)
	}
	refused := proxiedClient(p.addr("fwd"), &tlsRoots{e.proxyCA}, false)
	if _, err := refused.Get("https://other.authproxy.test:" + port(t, up.URL) + "/"); err == nil {
		t.Fatal("a CONNECT to a host no route names went through")
	}
	// A stream's end is recorded just after its answer left: wait for the
	// last ones.
	fams := scrape(t, p)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); fams = scrape(t, p) {
		if value(fams, "authproxy_requests_total", map[string]string{"listener": "fwd", "route": "fwd-api", "protocol": "h2", "client": "anyone", "status_class": "2xx"}) == 1 &&
			value(fams, "authproxy_requests_total", map[string]string{"listener": "app", "route": "api", "protocol": "h2", "client": "anyone", "status_class": "2xx"}) == 50 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, c := range []struct {
		family string
		labels map[string]string
		want   float64
	}{
		{"authproxy_requests_total", map[string]string{"listener": "app", "route": "api", "protocol": "h2", "client": "anyone", "status_class": "2xx"}, 50},
		{"authproxy_requests_total", map[string]string{"listener": "app", "route": "api", "protocol": "http1", "client": "anyone", "status_class": "2xx"}, 10},
		{"authproxy_requests_total", map[string]string{"listener": "app", "route": "", "protocol": "http1", "client": "anyone", "status_class": "4xx"}, 1},
		{"authproxy_requests_total", map[string]string{"listener": "fwd", "route": "fwd-api", "protocol": "h2", "client": "anyone", "status_class": "2xx"}, 1},
		{"authproxy_request_duration_seconds", map[string]string{"listener": "app", "protocol": "h2"}, 50},
		{"authproxy_token_fetches_total", map[string]string{"injector": "fleet", "outcome": "ok"}, 1},
		// the first request looks twice (a token in hand? no; then the
		// fetch), every other once
		{"authproxy_token_cache_lookups_total", map[string]string{"injector": "fleet", "result": "miss"}, 2},
		{"authproxy_token_cache_lookups_total", map[string]string{"injector": "fleet", "result": "hit"}, 60},
		{"authproxy_injections_total", map[string]string{"injector": "fleet", "outcome": "ok"}, 61},
		{"authproxy_connect_total", map[string]string{"listener": "fwd", "decision": "intercepted"}, 1},
		{"authproxy_connect_total", map[string]string{"listener": "fwd", "decision": "refused"}, 1},
		{"authproxy_token_cache_entries", map[string]string{}, 1},
		{"authproxy_build_info", map[string]string{"version": "test", "go_version": goVersion()}, 1},
	} {
		if got := value(fams, c.family, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.family, c.labels, got, c.want)
		}
	}
	if exp := value(fams, "authproxy_token_expiry_seconds", map[string]string{"injector": "fleet"}); exp < 3500 || exp > 3600 {
		t.Errorf("token expiry in %v s, want about 3600", exp)
	}
	if fams["go_goroutines"] == nil || fams["process_resident_memory_bytes"] == nil {
		t.Error("the Go and process collectors are missing")
	}
	_, text := adminGet(t, p, "/metrics")
	if len(ts.Issued()) != 1 {
		t.Fatalf("the token server issued %d tokens, want 1", len(ts.Issued()))
	}
	for _, tok := range append(ts.Issued(), secretToken) {
		if strings.Contains(text, tok) {
			t.Errorf("/metrics shows a token or the secret")
		}
	}
}
