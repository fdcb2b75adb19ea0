package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/authproxy/authproxy/internal/proctest"
	"github.com/authproxy/authproxy/sim"
)

// otlpReceiver is an OTLP/HTTP trace receiver on loopback: it decodes
// every export request (protobuf) and keeps its spans.
type otlpReceiver struct {
	mu    sync.Mutex
	spans []*tracepb.Span
	attrs []string // every attribute value of every span and resource
	paths []string
}

func (o *otlpReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	var req collectortrace.ExportTraceServiceRequest
	if err == nil {
		err = proto.Unmarshal(body, &req)
	}
	if err != nil || r.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "not an OTLP protobuf export", http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.paths = append(o.paths, r.URL.Path)
	for _, rs := range req.ResourceSpans {
		for _, a := range rs.GetResource().GetAttributes() {
			o.attrs = append(o.attrs, a.GetKey()+"="+a.GetValue().String())
		}
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				o.spans = append(o.spans, s)
				for _, a := range s.Attributes {
					o.attrs = append(o.attrs, a.GetKey()+"="+a.GetValue().String())
				}
			}
		}
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
	w.Write(out)
}

// span returns the first span that f accepts (nil: none yet).
func (o *otlpReceiver) span(f func(*tracepb.Span) bool) *tracepb.Span {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, s := range o.spans {
		if f(s) {
			return s
		}
	}
	return nil
}

func attr(s *tracepb.Span, key string) string {
	for _, a := range s.Attributes {
		if a.Key == key {
			if v, ok := a.Value.Value.(*commonpb.AnyValue_StringValue); ok {
				return v.StringValue
			}
			return a.Value.String()
		}
	}
	return ""
}

// With tracing on, the proxy exports over OTLP/HTTP (the SDK's exporter, a
// receiver on loopback decoding it) a span per request, a child of the
// client's traceparent when it sent one, and a span per token fetch; the
// upstream gets a traceparent of the same trace whose parent is the
// proxy's span; no span carries a path, a header value or a secret; the
// access log and the proxy's own error answers name the trace.
func TestTracingExportsSpansOverOTLP(t *testing.T) {
	dir := t.TempDir()
	pki, serve := testTLS(t, dir, "auth.trace.test", "api.trace.test")
	ts := &sim.TokenServer{ClientID: "trace-app", ClientSecret: "trace-s3cret-value", Auth: "basic", ExpiresIn: 3600}
	authPort, apiPort := serve(ts), serve(ts.RequireToken(&sim.Echo{}))
	recv := &otlpReceiver{}
	collector := httptest.NewServer(recv)
	t.Cleanup(collector.Close)
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
log: {access: true}
tracing: {otlp_endpoint: %q, sample_ratio: 1, service_name: egress-test}
listeners:
  - {name: app, kind: sidecar, address: "127.0.0.1:0", upstream: "https://api.trace.test:%s"}
upstream: {ca_file: %q, resolve: {api.trace.test: 127.0.0.1, auth.trace.test: 127.0.0.1}}
injectors:
  api:
    kind: oauth2
    token_url: "https://auth.trace.test:%s/token"
    client_id: {value: trace-app}
    client_secret: {env: TRACE_SECRET}
    scopes: ["mount:{mount}"]
routes:
  - {name: mounts, match: {path: "/mounts/{mount}/*"}, injector: api}
`, collector.URL, apiPort, pki.CAFile, authPort)), 0o644)
	cmd := exec.Command(binary, "run", cfg)
	cmd.Env = []string{"TRACE_SECRET=trace-s3cret-value", "PATH=" + os.Getenv("PATH")}
	p := proctest.Start(t, cmd)
	app := "http://" + p.Await(t, regexp.MustCompile(`listener=app kind=sidecar address=(\S+)`), 20*time.Second)[1]

	get := func(client *http.Client, path, traceparent string) (*http.Response, sim.Seen) {
		t.Helper()
		req, _ := http.NewRequest("GET", app+path, nil)
		if traceparent != "" {
			req.Header.Set("Traceparent", traceparent)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var seen sim.Seen
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == 200 {
			json.Unmarshal(body, &seen)
		}
		return resp, seen
	}
	h1 := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 30 * time.Second}
	h2c := &http.Client{Transport: &http.Transport{Proxy: nil, Protocols: new(http.Protocols)}, Timeout: 30 * time.Second}
	h2c.Transport.(*http.Transport).Protocols.SetUnencryptedHTTP2(true)

	// A client's trace, over HTTP/1.1.
	const clientTrace, clientSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	resp, seen := get(h1, "/mounts/m-secret-path-7/x?vin=WVWZZZ1JZXW000001", "00-"+clientTrace+"-"+clientSpan+"-01")
	if resp.StatusCode != 200 {
		t.Fatalf("traced request: %d", resp.StatusCode)
	}
	up := regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-01$`).FindStringSubmatch(seen.Header.Get("Traceparent"))
	if up == nil || up[1] != clientTrace || up[2] == clientSpan {
		t.Errorf("the upstream got traceparent %q: want the client's trace, with the proxy's span as parent", seen.Header.Get("Traceparent"))
	}
	// A request with no trace context, over h2c: the proxy starts one.
	resp, seen = get(h2c, "/mounts/m2/y", "")
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("untraced h2c request: %d %s", resp.StatusCode, resp.Proto)
	}
	fresh := regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-01$`).FindStringSubmatch(seen.Header.Get("Traceparent"))
	if fresh == nil || fresh[1] == clientTrace {
		t.Errorf("the upstream got traceparent %q for a request without one: want a new trace of the proxy's", seen.Header.Get("Traceparent"))
	}
	// A request no route matches: its answer names the trace it started.
	resp, _ = get(h1, "/nowhere", "00-"+clientTrace+"-"+clientSpan+"-01")
	if resp.StatusCode != http.StatusNotFound || resp.Header.Get("X-Request-Id") != clientTrace {
		t.Errorf("unmatched: %d, X-Request-Id %q, want 404 naming the client's trace", resp.StatusCode, resp.Header.Get("X-Request-Id"))
	}

	// The spans arrive (the exporter batches for up to 2 s).
	var traced, started, fetch *tracepb.Span
	waitUntil(t, "the spans at the collector", func() bool {
		traced = recv.span(func(s *tracepb.Span) bool {
			return hex.EncodeToString(s.TraceId) == clientTrace && s.Name == "authproxy request"
		})
		if up != nil {
			started = recv.span(func(s *tracepb.Span) bool { return fresh != nil && hex.EncodeToString(s.TraceId) == fresh[1] })
		}
		fetch = recv.span(func(s *tracepb.Span) bool { return s.Name == "authproxy token fetch" })
		return traced != nil && started != nil && fetch != nil
	})
	if hex.EncodeToString(traced.ParentSpanId) != clientSpan || up == nil || hex.EncodeToString(traced.SpanId) != up[2] {
		t.Errorf("the request's span: parent %x, id %x; want the client's span as parent and the upstream's parent as id", traced.ParentSpanId, traced.SpanId)
	}
	for key, want := range map[string]string{"authproxy.route": "mounts", "authproxy.injector": "api", "authproxy.outcome": "ok", "authproxy.listener": "app", "network.protocol.name": "http1"} {
		if got := attr(traced, key); got != want {
			t.Errorf("span attribute %s = %q, want %q", key, got, want)
		}
	}
	if attr(started, "network.protocol.name") != "h2" || len(started.ParentSpanId) != 0 {
		t.Errorf("the h2c request's span: %v, want a root span over h2", started)
	}
	if attr(fetch, "authproxy.injector") != "api" || attr(fetch, "authproxy.outcome") != "ok" {
		t.Errorf("the token fetch span: %v", fetch)
	}
	recv.mu.Lock()
	all := strings.Join(recv.attrs, "\n")
	paths := recv.paths
	recv.mu.Unlock()
	if paths[0] != "/v1/traces" || !strings.Contains(all, "egress-test") {
		t.Errorf("exports to %v with resource %q", paths, all)
	}
	for _, secret := range append(ts.Issued(), "trace-s3cret-value", "m-secret-path-7", "WVWZZZ1JZXW000001", "/mounts", "trace.test") {
		if strings.Contains(all, secret) {
			t.Errorf("a span carries %q:\n%s", secret, all)
		}
	}
	// The access log names each request's trace.
	logs := p.Logs()
	for _, id := range []string{clientTrace, fresh[1]} {
		if !regexp.MustCompile(`msg=request .* request_id=` + id).MatchString(logs) {
			t.Errorf("no access-log line with request_id=%s:\n%s", id, logs)
		}
	}
}
