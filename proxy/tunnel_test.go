package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/authproxy/authproxy/sim"
)

// countConns counts the connections a test server accepts.
func countConns(srv *httptest.Server, n *atomic.Int64) {
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			n.Add(1)
		}
	}
}

// connectStatus sends CONNECT target to the forward proxy at proxyAddr and
// returns the status and body of its answer.
func connectStatus(t *testing.T, proxyAddr, target string) (int, string) {
	return proxyExchange(t, proxyAddr, fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target), http.MethodConnect)
}

// absoluteStatus sends GET url (absolute form) to the forward proxy.
func absoluteStatus(t *testing.T, proxyAddr, url string) (int, string) {
	host := strings.SplitN(strings.TrimPrefix(url, "http://"), "/", 2)[0]
	return proxyExchange(t, proxyAddr, fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", url, host), http.MethodGet)
}

// proxyExchange writes one request as given on a new connection to
// proxyAddr and returns the answer's status and body (none for a CONNECT
// that was accepted: the tunnel follows).
func proxyExchange(t *testing.T, proxyAddr, request, method string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(c, request)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%q: %v", request, err)
	}
	if method == http.MethodConnect && resp.StatusCode == http.StatusOK {
		return resp.StatusCode, ""
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

// Tunnels and untouched forwards are refused, before any dial, to
// loopback, link-local, private and unique local addresses and to the
// proxy itself, by address or by a name that resolves there; tunnel_allow
// opens what a user names. Run in a network namespace with nothing but
// loopback, so that a dial that should not happen cannot leave the machine.
func TestTunnelDestinationsAreRefusedByDefault(t *testing.T) {
	if !runInNetns(t) {
		return
	}
	e := newEnv(t)
	var tlsConns, plainConns atomic.Int64
	local := httptest.NewUnstartedServer(&sim.Echo{})
	countConns(local, &tlsConns)
	local.StartTLS()
	t.Cleanup(local.Close)
	plain := httptest.NewUnstartedServer(&sim.Echo{})
	countConns(plain, &plainConns)
	plain.Start()
	t.Cleanup(plain.Close)
	tlsPort, plainPort := port(t, local.URL), port(t, plain.URL)

	p := e.start(fmt.Sprintf(`
listeners:
  - {name: fwd, kind: forward, address: 127.0.0.1:0, unmatched: tunnel}
  - {name: open, kind: forward, address: 127.0.0.1:0, unmatched: tunnel, tunnel_allow: [127.0.0.0/8, "*.internal.test"]}
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
upstream:
  ca_file: "{{UPSTREAM_CA}}"
  dial_timeout: 2s
  resolve: {private.example.test: 10.1.2.3, loop.example.test: 127.0.0.1, svc.internal.test: 127.0.0.1, meta.example.test: 169.254.169.254}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: %q, prefix: "Bearer "}}}
routes:
  - {name: api, match: {host: api.authproxy.test, path: /v1/*}, injector: bearer}
`, secretToken), nil, nil)

	for _, tc := range []struct{ target, why string }{
		{"127.0.0.1:" + tlsPort, "a loopback address"},
		{"127.9.9.9:" + tlsPort, "a loopback address"},
		{"localhost:" + tlsPort, "a loopback address"},
		{"loop.example.test:" + tlsPort, "a loopback address"},
		{"[::1]:" + tlsPort, "a loopback address"},
		{"[::ffff:127.0.0.1]:" + tlsPort, "a loopback address"},
		{"0.0.0.0:" + tlsPort, "an unspecified address"},
		{"169.254.169.254:80", "a link-local address"},
		{"meta.example.test:80", "a link-local address"},
		{"[fe80::1]:443", "a link-local address"},
		{"10.0.0.1:443", "a private address"},
		{"172.16.5.4:443", "a private address"},
		{"192.168.1.1:443", "a private address"},
		{"private.example.test:443", "a private address"},
		{"[fd00::1]:443", "a unique local address"},
		{"100.64.0.1:443", "a carrier-grade NAT address"},
		{p.addr("fwd"), "the proxy's own address"},
		{p.addr("open"), "the proxy's own address"},
		{"no-such-host.invalid:443", "does not resolve"},
	} {
		st, body := connectStatus(t, p.addr("fwd"), tc.target)
		if st != http.StatusForbidden || !strings.Contains(body, tc.why) {
			t.Errorf("CONNECT %s: %d %q, want 403 saying %q", tc.target, st, body, tc.why)
		}
	}
	for _, tc := range []struct{ url, why string }{
		{"http://127.0.0.1:" + plainPort + "/x", "a loopback address"},
		{"http://loop.example.test:" + plainPort + "/x", "a loopback address"},
		{"http://10.0.0.1/x", "a private address"},
		{"http://169.254.169.254/latest/meta-data/", "a link-local address"},
	} {
		st, body := absoluteStatus(t, p.addr("fwd"), tc.url)
		if st != http.StatusForbidden || !strings.Contains(body, tc.why) {
			t.Errorf("GET %s: %d %q, want 403 saying %q", tc.url, st, body, tc.why)
		}
	}
	if n, m := tlsConns.Load(), plainConns.Load(); n != 0 || m != 0 {
		t.Errorf("refused destinations were dialled: %d and %d connections", n, m)
	}
	logs := p.logs.String()
	for _, want := range []string{"CONNECT refused", "untouched forward refused", "a link-local address", "the proxy's own address"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log does not say %q:\n%.3000s", want, logs)
		}
	}

	// tunnel_allow opens a CIDR and a host pattern, never the proxy itself.
	if st, body := connectStatus(t, p.addr("open"), "127.0.0.1:"+tlsPort); st != http.StatusOK {
		t.Errorf("CONNECT to an allowed CIDR: %d %q", st, body)
	}
	if st, body := absoluteStatus(t, p.addr("open"), "http://svc.internal.test:"+plainPort+"/x"); st != http.StatusOK {
		t.Errorf("GET by an allowed name: %d %q", st, body)
	}
	if st, body := absoluteStatus(t, p.addr("open"), "http://127.0.0.1:"+plainPort+"/x"); st != http.StatusOK {
		t.Errorf("GET to an allowed CIDR: %d %q", st, body)
	}
	if st, _ := connectStatus(t, p.addr("open"), p.addr("open")); st != http.StatusForbidden {
		t.Errorf("CONNECT to the proxy itself through tunnel_allow: %d, want 403", st)
	}
	if st, _ := connectStatus(t, p.addr("open"), "10.0.0.1:443"); st != http.StatusForbidden {
		t.Errorf("CONNECT to a range tunnel_allow does not name: %d, want 403", st)
	}
	// A server counts a connection when its Accept returns, which can be
	// after the proxy's dial has completed and the client has its answer.
	for deadline := time.Now().Add(5 * time.Second); (tlsConns.Load() < 1 || plainConns.Load() < 2) && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if tlsConns.Load() != 1 || plainConns.Load() != 2 {
		t.Errorf("allowed destinations: %d and %d connections, want 1 and 2", tlsConns.Load(), plainConns.Load())
	}
}

// The admin listener is the proxy's own like every listener: no CONNECT
// or absolute-URI request through a forward listener reaches its /metrics,
// /status or pprof, whatever tunnel_allow says, before and after a reload.
func TestAdminListenerIsClosedToForwards(t *testing.T) {
	e := newEnv(t)
	yamlText := fmt.Sprintf(`
admin: {address: 127.0.0.1:0, pprof: true}
listeners:
  - {name: open, kind: forward, address: 127.0.0.1:0, unmatched: tunnel, tunnel_allow: [127.0.0.0/8, "::1/128"]}
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
upstream: {ca_file: "{{UPSTREAM_CA}}"}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: %q, prefix: "Bearer "}}}
routes:
  - {name: api, match: {host: api.authproxy.test, path: /v1/*}, injector: bearer}
`, secretToken)
	p := e.start(yamlText, nil, nil)
	admin := p.srv.AdminAddr().String()
	_, adminPort, _ := net.SplitHostPort(admin)
	check := func(when string) {
		t.Helper()
		for _, target := range []string{admin, "localhost:" + adminPort} {
			if st, body := connectStatus(t, p.addr("open"), target); st != http.StatusForbidden || !strings.Contains(body, "the proxy's own address") {
				t.Errorf("%s: CONNECT %s: %d %q, want 403 naming the proxy's own address", when, target, st, body)
			}
		}
		for _, path := range []string{"/metrics", "/status", "/debug/pprof/"} {
			if st, body := absoluteStatus(t, p.addr("open"), "http://"+admin+path); st != http.StatusForbidden || !strings.Contains(body, "the proxy's own address") {
				t.Errorf("%s: GET %s through the forward listener: %d %q, want 403", when, path, st, body)
			}
		}
	}
	check("at start")
	reloadText(t, e, p, yamlText)
	check("after a reload")
}
