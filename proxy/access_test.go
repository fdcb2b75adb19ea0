package proxy_test

import (
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/sim"
)

// With log.access every request gets one line: listener, route, injector,
// method, host, path and the query's keys (never its values), status,
// bytes each way, upstream, protocol, and why the proxy answered itself;
// never a header value. CONNECTs get a decision line.
func TestAccessLog(t *testing.T) {
	e := newEnv(t)
	up := e.httpsUpstream(&sim.Echo{})
	cfg := strings.Replace(sidecarConfig(port(t, up.URL), "deny"), "listeners:\n", "log: {access: true}\nlisteners:\n", 1)
	cfg = strings.Replace(cfg, "listeners:\n", "listeners:\n  - {name: fwd, kind: forward, address: 127.0.0.1:0}\n", 1)
	cfg = strings.Replace(cfg, "routes:\n", "ca: {cert_file: \"{{CA_CERT}}\", key_file: \"{{CA_KEY}}\"}\nroutes:\n", 1)
	cfg = strings.Replace(cfg, "  - name: api\n    match: {path: /v1/*}", "  - name: api\n    listeners: [app]\n    match: {path: /v1/*}", 1)
	cfg = strings.Replace(cfg, "  - name: api-h2\n    match: {path: /v2/*}", "  - name: api-h2\n    listeners: [app]\n    match: {path: /v2/*}", 1)
	p := e.start(cfg, nil, nil)
	const queryValue = "q-value-never-logged"
	for _, c := range []struct{ name, url string }{{"h1", "http://" + p.addr("app") + "/v1/things?token=" + queryValue + "&b=2"}} {
		if err := getOK(h1Client(), c.url); err != nil {
			t.Fatal(err)
		}
	}
	req := "http://" + p.addr("app") + "/v1/h2?x=" + queryValue
	if err := getOK(h2cClient(), req); err != nil {
		t.Fatal(err)
	}
	if st := statusOf(t, h2cClient(), "http://"+p.addr("app")+"/nowhere"); st != 404 {
		t.Fatalf("unmatched: %d", st)
	}
	if _, err := proxiedClient(p.addr("fwd"), &tlsRoots{e.proxyCA}, false).Get("https://other.authproxy.test:1/"); err == nil {
		t.Fatal("a CONNECT to a host no route names went through")
	}
	var logs string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		logs = p.logs.String()
		if strings.Count(logs, "msg=request ") >= 3 || time.Now().After(deadline) {
			break
		}
	}
	for _, want := range []string{
		`msg=request listener=app route=api injector=bearer client=anyone method=GET host=` + p.addr("app") + ` path=/v1/things query_keys=b,token status=200`,
		`route=api injector=bearer client=anyone method=GET host=` + p.addr("app") + ` path=/v1/h2 query_keys=x status=200`,
		`protocol=h2 reason=""`,
		`protocol=http1 reason=""`,
		`path=/nowhere query_keys="" status=404`,
		`protocol=h2 reason=no_route`,
		`upstream=api.authproxy.test:` + port(t, up.URL),
		`msg="CONNECT refused: no route matches the target"`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("the access log lacks %q:\n%s", want, logs)
		}
	}
	for _, leak := range []string{queryValue, secretToken, "Bearer"} {
		if strings.Contains(logs, leak) {
			t.Errorf("the log shows %q", leak)
		}
	}
	if strings.Count(logs, "bytes_out=") < 3 {
		t.Errorf("bytes are not logged:\n%s", logs)
	}
}

// log.access_sample logs about that fraction of requests (200 requests at
// 0.25: a count outside 20-80 has odds below one in a million).
func TestAccessLogSample(t *testing.T) {
	e := newEnv(t)
	up := e.httpsUpstream(&sim.Echo{})
	cfg := strings.Replace(sidecarConfig(port(t, up.URL), "deny"), "listeners:\n", "log: {access: true, access_sample: 0.25}\nlisteners:\n", 1)
	p := e.start(cfg, nil, nil)
	for i := 0; i < 200; i++ {
		if err := getOK(h1Client(), "http://"+p.addr("app")+"/v1/x"); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(p.logs.String(), "msg=request "); n < 20 || n > 80 {
		t.Errorf("%d of 200 requests logged at access_sample 0.25", n)
	}
}
