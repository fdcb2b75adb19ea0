package proxy_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/metrics"
	"github.com/authproxy/authproxy/sim"
)

// connectOnly sends a CONNECT for target to the forward listener at addr
// and returns the connection once the proxy has answered 200.
func connectOnly(t *testing.T, addr, target string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT %s: %v %v", target, resp, err)
	}
	return c
}

// A client that does not trust the interception CA fails its handshake
// with the proxy: that is counted as handshake_failed, not intercepted,
// and logged at WARN with the client's address, the SNI it asked for and
// the alert it sent; a flood of them is sampled in the log and counted
// whole.
func TestInterceptionHandshakeFailuresAreVisible(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed (bash .ci/deps installs it as root)")
	}
	e := newEnv(t)
	e.metrics = metrics.New("test")
	up := e.httpsUpstream(&sim.Echo{})
	p := e.start(strings.Replace(forwardConfig("deny"), "listeners:", "admin: {address: 127.0.0.1:0}\nlisteners:", 1), nil, nil)
	target := "api.authproxy.test:" + port(t, up.URL)
	fwd := p.addr("fwd")

	// curl with only the system's CAs, over TLS 1.2 and 1.3.
	for _, v := range []string{"1.2", "1.3"} {
		out, err := exec.Command("curl", "-sS", "--max-time", "20", "--tls-max", v, "-x", "http://"+fwd, "https://"+target+"/v1/x").CombinedOutput()
		if err == nil {
			t.Fatalf("curl trusted the interception CA without being told to: %s", out)
		}
	}
	// A Go client that trusts another CA sends "bad certificate".
	c := connectOnly(t, fwd, target)
	tc := tls.Client(c, &tls.Config{ServerName: "api.authproxy.test", RootCAs: x509.NewCertPool()})
	if err := tc.Handshake(); err == nil {
		t.Fatal("a Go client trusted the interception CA without being told to")
	}
	tc.Close()
	// A client that gives up before its hello sends no alert.
	connectOnly(t, fwd, target).Close()
	// And one that trusts it is intercepted.
	if err := getOK(proxiedClient(fwd, &tlsRoots{e.proxyCA}, false), "https://"+target+"/v1/x"); err != nil {
		t.Fatal(err)
	}

	waitFor(t, "four failed handshakes in the log", func() bool {
		return strings.Count(p.logs.String(), "the client's TLS handshake with the proxy failed") == 4
	})
	logs := p.logs.String()
	// curl: TLS 1.2, then TLS 1.3 (OpenSSL's alert in the clear); Go; none.
	for _, alert := range []string{`alert="unknown certificate authority"`, `alert="unknown certificate authority (sent in the clear)"`, `alert="bad certificate"`, `alert=none`} {
		re := regexp.MustCompile(`level=WARN msg="intercepted connection: the client's TLS handshake with the proxy failed \(does it trust the interception CA\?\)" listener=fwd target=` +
			regexp.QuoteMeta(target) + ` client=127\.0\.0\.1:\d+ sni=(\S*) ` + regexp.QuoteMeta(alert))
		m := re.FindStringSubmatch(logs)
		if m == nil {
			t.Errorf("no WARN line with the client, SNI and %s:\n%s", alert, logs)
			continue
		}
		if want := map[bool]string{true: `""`, false: "api.authproxy.test"}[alert == "alert=none"]; m[1] != want {
			t.Errorf("%s: sni=%q, want %q", alert, m[1], want)
		}
	}
	if strings.Count(logs, "CONNECT intercepted") != 1 {
		t.Errorf("want one CONNECT intercepted line, for the client whose handshake succeeded:\n%s", logs)
	}
	fams := scrape(t, p)
	if v := value(fams, "authproxy_connect_total", map[string]string{"listener": "fwd", "decision": "handshake_failed"}); v != 4 {
		t.Errorf("handshake_failed %v, want 4", v)
	}
	if v := value(fams, "authproxy_connect_total", map[string]string{"listener": "fwd", "decision": "intercepted"}); v != 1 {
		t.Errorf("intercepted %v, want 1", v)
	}

	// A flood: every failure is counted, the log keeps a sample and says
	// how many it left out.
	const flood = 60
	start := time.Now()
	for range flood {
		connectOnly(t, fwd, target).Close()
	}
	elapsed := time.Since(start)
	waitFor(t, "the flood counted", func() bool {
		return value(scrape(t, p), "authproxy_connect_total", map[string]string{"listener": "fwd", "decision": "handshake_failed"}) == 4+flood
	})
	// The next line that gets through says how many were left out.
	extra := 0
	waitFor(t, "a line saying how many were suppressed", func() bool {
		if strings.Contains(p.logs.String(), "suppressed=") {
			return true
		}
		connectOnly(t, fwd, target).Close()
		extra++
		time.Sleep(200 * time.Millisecond)
		return false
	})
	logs = p.logs.String()
	lines := strings.Count(logs, "the client's TLS handshake with the proxy failed") - 4 - 1
	suppressed := 0
	for _, m := range regexp.MustCompile(`suppressed=(\d+)`).FindAllStringSubmatch(logs, -1) {
		n, _ := strconv.Atoi(m[1])
		suppressed += n
	}
	// A burst of 10, then one a second (after the 4 above), whatever the
	// time the flood took.
	if bound := 10 + int(elapsed.Seconds()) + 1; lines > bound || lines == flood {
		t.Errorf("%d lines for %d failed handshakes in %v, want at most %d", lines, flood, elapsed, bound)
	}
	if suppressed == 0 || lines+suppressed > flood+extra {
		t.Errorf("%d lines and suppressed=%d in all for %d failures", lines, suppressed, flood)
	}
}
