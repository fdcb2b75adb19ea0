package proxy_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/authproxy/authproxy/internal/proctest"
	"github.com/authproxy/authproxy/metrics"
	"github.com/authproxy/authproxy/sim"
)

const clientsConfig = `
log: {access: true}
admin: {address: 127.0.0.1:0}
clients:
  billing: {basic: {username: billing, password: {value: "pw-billing-1"}}}
  reports: {basic: {username: reports, password: {value: "pw-reports-2"}}}
  office:  {sources: ["127.0.0.2"]}
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.authproxy.test:%[1]s"}
  - {name: fwd, kind: forward, address: 127.0.0.1:0}
  - {name: grpc, kind: sidecar, address: 127.0.0.1:0, host: grpc.authproxy.test, upstream: "https://grpc.authproxy.test:%[3]s"}
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1, grpc.authproxy.test: 127.0.0.1}}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: %[2]q, prefix: "Bearer "}}}
routes:
  - {name: billing, listeners: [app], match: {path: /billing/*}, injector: bearer, clients: [billing]}
  - {name: office, listeners: [app], match: {path: /office/*}, injector: bearer, clients: [office, billing]}
  - {name: public, listeners: [app], match: {path: /public/*}, injector: bearer, clients: [anyone]}
  - {name: open, listeners: [app], match: {path: /open/*}, injector: bearer}
  - {name: fwd-billing, listeners: [fwd], match: {host: api.authproxy.test, path: /billing/*}, injector: bearer, clients: [billing]}
  - {name: grpc-billing, listeners: [grpc], match: {path: /grpc.testing.TestService/*}, injector: bearer, clients: [billing]}
`

func basicAuth(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// Who may use a route's credential (clients, routes[].clients), on the
// sidecar (HTTP/1.1, h2c, gRPC) and the forward listener (CONNECT with
// HTTP/1.1 and HTTP/2 inside, absolute URIs; Go's transport and curl with
// user info in the proxy URL): the allowed caller gets the credential and
// the upstream never sees its Proxy-Authorization; a caller with no or a
// wrong identity gets 407 with Proxy-Authenticate (gRPC UNAUTHENTICATED),
// a known caller the route does not name 403 (PERMISSION_DENIED); and the
// upstream counts nothing from those.
func TestRoutesGiveTheirCredentialOnlyToTheirClients(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed (bash .ci/deps installs it as root)")
	}
	e := newEnv(t)
	e.metrics = metrics.New("test")
	echo := &sim.Echo{}
	up := e.httpsUpstream(echo)
	_, grpcPort := e.grpcUpstream()
	p := e.start(fmt.Sprintf(clientsConfig, port(t, up.URL), secretToken, grpcPort), nil, nil)

	var allowed int64
	check := func(t *testing.T, resp *http.Response, err error, want int) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("status %d, want %d: %s", resp.StatusCode, want, body)
		}
		switch want {
		case 200:
			allowed++
			var seen sim.Seen
			json.Unmarshal(body, &seen)
			if seen.Header.Get("Authorization") != "Bearer "+secretToken || seen.Header.Get("Proxy-Authorization") != "" {
				t.Errorf("the upstream got Authorization %q, Proxy-Authorization %q", seen.Header.Get("Authorization"), seen.Header.Get("Proxy-Authorization"))
			}
		case 407:
			if resp.Header.Get("Proxy-Authenticate") != `Basic realm="authproxy"` {
				t.Errorf("407 without Proxy-Authenticate: %v", resp.Header)
			}
		}
	}

	// The sidecar: Proxy-Authorization on each request, or the source.
	office := &http.Transport{Proxy: nil, DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext}
	for _, c := range []struct {
		proto string
		tr    *http.Transport
	}{{"http1", h1Client().Transport.(*http.Transport)}, {"h2c", h2cClient().Transport.(*http.Transport)}} {
		t.Run("sidecar/"+c.proto, func(t *testing.T) {
			get := func(path, auth string) (*http.Response, error) {
				req, _ := http.NewRequest("GET", "http://"+p.addr("app")+path, nil)
				if auth != "" {
					req.Header.Set("Proxy-Authorization", auth)
				}
				return (&http.Client{Transport: c.tr, Timeout: 30 * time.Second}).Do(req)
			}
			resp, err := get("/billing/a", basicAuth("billing", "pw-billing-1"))
			check(t, resp, err, 200)
			resp, err = get("/billing/a", "")
			check(t, resp, err, 407)
			resp, err = get("/billing/a", basicAuth("billing", "wrong"))
			check(t, resp, err, 407)
			resp, err = get("/billing/a", basicAuth("nobody", "pw-billing-1"))
			check(t, resp, err, 407)
			resp, err = get("/billing/a", "Bearer some-token")
			check(t, resp, err, 407)
			resp, err = get("/billing/a", basicAuth("reports", "pw-reports-2"))
			check(t, resp, err, 403)
			resp, err = get("/public/a", "")
			check(t, resp, err, 200)
			resp, err = get("/open/a", basicAuth("reports", "pw-reports-2")) // no clients: as before, and the header is not sent on
			check(t, resp, err, 200)
			resp, err = get("/office/a", "")
			check(t, resp, err, 407)
		})
	}
	t.Run("sidecar/source", func(t *testing.T) {
		cl := &http.Client{Transport: office, Timeout: 30 * time.Second}
		resp, err := cl.Get("http://" + p.addr("app") + "/office/a")
		check(t, resp, err, 200)
		resp, err = cl.Get("http://" + p.addr("app") + "/billing/a")
		check(t, resp, err, 403)
	})

	// The forward listener: the CONNECT's identity holds for its tunnel.
	target := "https://api.authproxy.test:" + port(t, up.URL)
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("forward/h2=%v", h2), func(t *testing.T) {
			via := func(user *url.Userinfo) *http.Client {
				c := proxiedClient(p.addr("fwd"), &tlsRoots{e.proxyCA}, h2)
				c.Transport.(*http.Transport).Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: p.addr("fwd"), User: user})
				return c
			}
			resp, err := via(url.UserPassword("billing", "pw-billing-1")).Get(target + "/billing/x")
			check(t, resp, err, 200)
			resp, err = via(nil).Get(target + "/billing/x")
			check(t, resp, err, 407)
			resp, err = via(url.UserPassword("reports", "pw-reports-2")).Get(target + "/billing/x")
			check(t, resp, err, 403)
			// Wrong credentials are refused at the CONNECT.
			if _, err := via(url.UserPassword("billing", "wrong")).Get(target + "/billing/x"); err == nil || !strings.Contains(err.Error(), "Proxy Authentication Required") {
				t.Errorf("a CONNECT with a wrong password: %v", err)
			}
		})
	}
	t.Run("forward/curl", func(t *testing.T) {
		curl := func(user string) (string, error) {
			out, err := exec.Command("curl", "-sS", "--max-time", "20", "--cacert", e.caCert, "-o", "/dev/null", "-w", "%{http_code}",
				"-x", "http://"+user+p.addr("fwd"), target+"/billing/x").CombinedOutput()
			return string(out), err
		}
		if out, err := curl("billing:pw-billing-1@"); err != nil || out != "200" {
			t.Errorf("curl as billing: %s %v", out, err)
		} else {
			allowed++
		}
		if out, _ := curl("reports:pw-reports-2@"); out != "403" {
			t.Errorf("curl as reports: %s", out)
		}
		if out, _ := curl(""); out != "407" {
			t.Errorf("curl with no identity: %s", out)
		}
	})

	// gRPC on the sidecar: the codes a gRPC client understands.
	t.Run("sidecar/grpc", func(t *testing.T) {
		client := grpcClient(t, p.addr("grpc"))
		call := func(auth string) error {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if auth != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "proxy-authorization", auth)
			}
			_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
			return err
		}
		if err := call(basicAuth("billing", "pw-billing-1")); err != nil {
			t.Errorf("billing: %v", err)
		}
		if err := call(""); status.Code(err) != codes.Unauthenticated {
			t.Errorf("no identity: %v, want UNAUTHENTICATED", err)
		}
		if err := call(basicAuth("reports", "pw-reports-2")); status.Code(err) != codes.PermissionDenied {
			t.Errorf("reports: %v, want PERMISSION_DENIED", err)
		}
	})
	if got := echo.Requests(); got != allowed {
		t.Errorf("the upstream served %d requests, want the %d allowed ones only", got, allowed)
	}
	// Who asked is in the metrics (bounded: client names, anyone,
	// unknown) and the access log.
	waitFor(t, "the last requests counted", func() bool {
		return value(scrape(t, p), "authproxy_requests_total", map[string]string{"listener": "grpc", "route": "grpc-billing", "protocol": "h2", "client": "reports", "status_class": "2xx"}) == 1
	})
	fams := scrape(t, p)
	for _, c := range []struct {
		labels map[string]string
		want   float64
	}{
		{map[string]string{"listener": "app", "route": "billing", "protocol": "http1", "client": "billing", "status_class": "2xx"}, 1},
		{map[string]string{"listener": "app", "route": "billing", "protocol": "h2", "client": "unknown", "status_class": "4xx"}, 3},
		{map[string]string{"listener": "app", "route": "billing", "protocol": "http1", "client": "anyone", "status_class": "4xx"}, 1},
		{map[string]string{"listener": "app", "route": "billing", "protocol": "http1", "client": "office", "status_class": "4xx"}, 1},
		{map[string]string{"listener": "fwd", "route": "fwd-billing", "protocol": "h2", "client": "reports", "status_class": "4xx"}, 2}, // Go over h2, and curl (which takes h2 by ALPN)
	} {
		if got := value(fams, "authproxy_requests_total", c.labels); got != c.want {
			t.Errorf("authproxy_requests_total%v = %v, want %v", c.labels, got, c.want)
		}
	}
	// And on /status: each route's clients, each caller's requests and
	// refusals.
	var status struct {
		Routes []struct {
			Name    string
			Clients []string
		}
		Clients []struct {
			Name              string
			Requests, Refused int64
		}
	}
	if st, body := adminGet(t, p, "/status?format=json"); st != 200 || json.Unmarshal([]byte(body), &status) != nil {
		t.Fatalf("/status: %d %s", st, body)
	}
	got := map[string][2]int64{}
	for _, c := range status.Clients {
		got[c.Name] = [2]int64{c.Requests, c.Refused}
	}
	// billing: 2 sidecar + 2 forward + 1 curl + 1 gRPC, none refused;
	// reports: refused everywhere but on the open route (2).
	if got["billing"] != [2]int64{6, 0} || got["reports"][1] == 0 || got["unknown"][0] != got["unknown"][1] || got["unknown"][0] == 0 {
		t.Errorf("/status clients: %v", got)
	}
	for _, r := range status.Routes {
		if r.Name == "office" && strings.Join(r.Clients, ",") != "billing,office" || r.Name == "open" && r.Clients != nil {
			t.Errorf("/status route %s: clients %v", r.Name, r.Clients)
		}
	}
	logs := p.logs.String()
	for _, want := range []string{"route=billing injector=bearer client=billing method=GET", "client=reports method=GET", "reason=proxy_auth", "reason=client_not_allowed"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the access log lacks %q", want)
		}
	}
	for _, s := range []string{"pw-billing-1", "pw-reports-2", base64.StdEncoding.EncodeToString([]byte("billing:pw-billing-1"))} {
		if strings.Contains(p.logs.String(), s) {
			t.Errorf("the log shows a client's password")
		}
	}
}

// A reload applies clients to the next request, on connections already
// open: a tunnel whose CONNECT identified a client that the reload removes
// is refused at its next request (HTTP/1.1 and HTTP/2 inside), and a
// route that the reload opens to that caller serves it.
func TestReloadAppliesClientsToOpenTunnels(t *testing.T) {
	e := newEnv(t)
	up := e.httpsUpstream(&sim.Echo{})
	_, grpcPort := e.grpcUpstream()
	yamlText := fmt.Sprintf(clientsConfig, port(t, up.URL), secretToken, grpcPort)
	p := e.start(yamlText, nil, nil)
	target := "https://api.authproxy.test:" + port(t, up.URL) + "/billing/x"
	clients := map[bool]*http.Client{}
	for _, h2 := range []bool{false, true} {
		c := proxiedClient(p.addr("fwd"), &tlsRoots{e.proxyCA}, h2)
		c.Transport.(*http.Transport).Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: p.addr("fwd"), User: url.UserPassword("billing", "pw-billing-1")})
		clients[h2] = c
		if st := statusOf(t, c, target); st != 200 {
			t.Fatalf("h2=%v before the reload: %d", h2, st)
		}
	}
	reload := func(text string) { t.Helper(); reloadText(t, e, p, text) }
	// billing's password changes: the open tunnels' credentials match no
	// client any more.
	reload(strings.Replace(yamlText, "pw-billing-1", "pw-billing-rotated", 1))
	for h2, c := range clients {
		if st := statusOf(t, c, target); st != http.StatusProxyAuthRequired {
			t.Errorf("h2=%v, on the tunnel opened before the reload: %d, want 407", h2, st)
		}
	}
	// The route opened to anyone: the same tunnels are served again.
	reload(strings.Replace(yamlText, "path: /billing/*}, injector: bearer, clients: [billing]}\n  - {name: grpc", "path: /billing/*}, injector: bearer, clients: [anyone]}\n  - {name: grpc", 1))
	for h2, c := range clients {
		if st := statusOf(t, c, target); st != 200 {
			t.Errorf("h2=%v, after the route opened to anyone: %d, want 200", h2, st)
		}
	}
}

// Failed proxy authentications are throttled per source address: after a
// burst of 10, that address gets 429 (gRPC RESOURCE_EXHAUSTED), right
// credentials included, on the sidecar and at the CONNECT; another address
// is not affected; each failure is logged with the username it claimed,
// never the password.
func TestFailedAuthenticationsAreThrottledPerSource(t *testing.T) {
	e := newEnv(t)
	up := e.httpsUpstream(&sim.Echo{})
	_, grpcPort := e.grpcUpstream()
	p := e.start(fmt.Sprintf(clientsConfig, port(t, up.URL), secretToken, grpcPort), nil, nil)
	get := func(tr *http.Transport, auth string) int {
		req, _ := http.NewRequest("GET", "http://"+p.addr("app")+"/billing/x", nil)
		req.Header.Set("Proxy-Authorization", auth)
		resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	local := h1Client().Transport.(*http.Transport)
	start, refused := time.Now(), 0
	var last time.Time
	for st := 0; st != http.StatusTooManyRequests; {
		if refused > 40 {
			t.Fatalf("%d wrong passwords in %v and no 429", refused, time.Since(start))
		}
		if st = get(local, basicAuth("billing", fmt.Sprintf("guess-%d", refused))); st == http.StatusProxyAuthRequired {
			refused++
		}
		last = time.Now()
	}
	if bound := 10 + int(time.Since(start)/(6*time.Second)) + 1; refused < 10 || refused > bound {
		t.Errorf("%d wrong passwords before 429, want 10 to %d", refused, bound)
	}
	if st := get(local, basicAuth("billing", "pw-billing-1")); st != http.StatusTooManyRequests && time.Since(last) < 6*time.Second {
		t.Errorf("the right password from the throttled address: %d, want 429", st)
	}
	// Another source address keeps its own budget.
	other := &http.Transport{Proxy: nil, DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}).DialContext}
	if st := get(other, basicAuth("billing", "pw-billing-1")); st != 200 {
		t.Errorf("another address with the right password: %d, want 200", st)
	}
	// A CONNECT with credentials from the throttled address: 429.
	c := proxiedClient(p.addr("fwd"), &tlsRoots{e.proxyCA}, false)
	c.Transport.(*http.Transport).Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: p.addr("fwd"), User: url.UserPassword("billing", "pw-billing-1")})
	if _, err := c.Get("https://api.authproxy.test:" + port(t, up.URL) + "/billing/x"); (err == nil || !strings.Contains(err.Error(), "Too Many Requests")) && time.Since(last) < 6*time.Second {
		t.Errorf("a CONNECT from the throttled address: %v, want 429", err)
	}
	logs := p.logs.String()
	if !strings.Contains(logs, `msg="proxy authentication failed: the credentials match no client" client=127.0.0.1:`) || !strings.Contains(logs, "claimed=billing") {
		t.Errorf("the failures are not logged with the claimed name:\n%.2000s", logs)
	}
	if strings.Contains(logs, "guess-") || strings.Contains(logs, "pw-billing-1") {
		t.Error("the log shows a password")
	}
}

// grpc-go (here grpcurl, whose transport is grpc-go's) through HTTPS_PROXY
// with user info sends the CONNECT's Proxy-Authorization: the named client
// lists services and calls, another gets PERMISSION_DENIED, and a client
// with no user info UNAUTHENTICATED.
func TestGRPCThroughHTTPSProxyWithUserInfo(t *testing.T) {
	bin := proctest.Tool(t, "grpcurl")
	e := newEnv(t)
	_, grpcPort := e.grpcUpstream()
	p := e.start(fmt.Sprintf(`
clients:
  billing: {basic: {username: billing, password: {value: "pw-billing-1"}}}
  reports: {basic: {username: reports, password: {value: "pw-reports-2"}}}
listeners:
  - {name: fwd, kind: forward, address: 127.0.0.1:0}
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {grpc.authproxy.test: 127.0.0.1}}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: %q, prefix: "Bearer "}}}
routes:
  - {name: grpc, match: {host: grpc.authproxy.test, path: /*}, injector: bearer, clients: [billing]}
`, secretToken), nil, nil)
	target := "grpc.authproxy.test:" + grpcPort
	run := func(user string, args ...string) (string, error) {
		cmd := exec.Command(bin, append([]string{"-cacert", e.caCert, "-max-time", "20"}, args...)...)
		cmd.Env = []string{"HTTPS_PROXY=http://" + user + p.addr("fwd"), "PATH=/usr/bin:/bin"}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run("billing:pw-billing-1@", target, "list"); err != nil || !strings.Contains(out, "grpc.testing.TestService") {
		t.Errorf("list as billing: %v\n%s", err, out)
	}
	out, err := run("billing:pw-billing-1@", "-d", `{"fill_username": true}`, target, "grpc.testing.TestService/UnaryCall")
	if err != nil || !strings.Contains(out, `"username": "Bearer `+secretToken+`"`) {
		t.Errorf("a call as billing: %v\n%s", err, out)
	}
	if out, err := run("reports:pw-reports-2@", target, "list"); err == nil || !strings.Contains(out, "PermissionDenied") {
		t.Errorf("list as reports: %v\n%s", err, out)
	}
	if out, err := run("", target, "list"); err == nil || !strings.Contains(out, "Unauthenticated") {
		t.Errorf("list with no user info: %v\n%s", err, out)
	}
}

// pythonRequests fetches url with Python's requests through proxy (a URL
// with user info), trusting caFile, and returns the status, the body, or
// the ProxyError requests raises for a refused CONNECT ("407", "403").
const pythonRequests = `
import json, sys, requests
url, proxy, ca = sys.argv[1:4]
try:
    r = requests.get(url, proxies={"http": proxy, "https": proxy}, verify=ca, timeout=30)
    print(json.dumps({"status": r.status_code, "body": r.text}))
except requests.exceptions.ProxyError as e:
    print(json.dumps({"status": 0, "body": str(e)}))
`

// Python's requests through the forward listener with user info in the
// proxy URL (CONNECT, the tunnel intercepted): the allowed caller's
// request carries the credential, a wrong password gets 407 on the
// CONNECT, another client 403 on its request in the tunnel, and the
// upstream counts only the first.
func TestPythonRequestsThroughTheGateway(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatal("python3 with requests is needed (bash .ci/deps installs python3-requests as root)")
	}
	e := newEnv(t)
	echo := &sim.Echo{}
	up := e.httpsUpstream(echo)
	_, grpcPort := e.grpcUpstream()
	p := e.start(fmt.Sprintf(clientsConfig, port(t, up.URL), secretToken, grpcPort), nil, nil)
	target := "https://api.authproxy.test:" + port(t, up.URL) + "/billing/py"
	get := func(user, pass string) (int, string) {
		t.Helper()
		proxyURL := (&url.URL{Scheme: "http", User: url.UserPassword(user, pass), Host: p.addr("fwd")}).String()
		out, err := exec.Command("python3", "-c", pythonRequests, target, proxyURL, e.caCert).CombinedOutput()
		if err != nil {
			t.Fatalf("python3: %v\n%s", err, out)
		}
		var r struct {
			Status int
			Body   string
		}
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("python3 printed %s", out)
		}
		return r.Status, r.Body
	}
	st, body := get("billing", "pw-billing-1")
	var seen sim.Seen
	if st != 200 || json.Unmarshal([]byte(body), &seen) != nil {
		t.Fatalf("billing: %d %s", st, body)
	}
	if seen.Header.Get("Authorization") != "Bearer "+secretToken || seen.Header.Get("Proxy-Authorization") != "" {
		t.Errorf("the upstream got Authorization %q, Proxy-Authorization %q", seen.Header.Get("Authorization"), seen.Header.Get("Proxy-Authorization"))
	}
	if st, body := get("billing", "wrong"); st != 0 || !strings.Contains(body, "407") {
		t.Errorf("a wrong password: %d %s, want the CONNECT refused with 407", st, body)
	}
	// A known client: the tunnel is opened, and its request refused.
	if st, body := get("reports", "pw-reports-2"); st != 403 {
		t.Errorf("reports: %d %s, want 403", st, body)
	}
	if got := echo.Requests(); got != 1 {
		t.Errorf("the upstream served %d requests, want 1", got)
	}
}
