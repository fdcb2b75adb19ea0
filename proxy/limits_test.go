package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/sim"
)

func limitsConfig(upstreamPort, handshake, idle, readHeader, shutdown string) string {
	return fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, host: api.authproxy.test, upstream: "https://api.authproxy.test:%[1]s"}
  - {name: fwd, kind: forward, address: 127.0.0.1:0}
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
upstream:
  ca_file: "{{UPSTREAM_CA}}"
  resolve: {api.authproxy.test: 127.0.0.1}
timeouts: {tls_handshake: %[2]s, idle: %[3]s, read_header: %[4]s, shutdown: %[5]s}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: %[6]q}}}
routes:
  - {name: api, match: {host: api.authproxy.test, path: /v1/*}, injector: bearer}
`, upstreamPort, handshake, idle, readHeader, shutdown, secretToken)
}

// waitClosed reads from c until the peer closes it; it fails if that does
// not happen within bound (a hang guard, far above the configured timeouts).
func waitClosed(t *testing.T, c net.Conn, bound time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(bound))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the proxy did not close the connection within %v", bound)
	}
}

func connectTo(t *testing.T, proxyAddr, target string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: "CONNECT"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	return c
}

func TestInterceptedConnectionTimeouts(t *testing.T) {
	e := newEnv(t)
	up := e.httpsUpstream(&sim.Echo{})
	p := e.start(limitsConfig(port(t, up.URL), "200ms", "300ms", "200ms", "5s"), nil, nil)
	target := "api.authproxy.test:" + port(t, up.URL)

	t.Run("handshake never started", func(t *testing.T) {
		waitClosed(t, connectTo(t, p.addr("fwd"), target), 10*time.Second)
	})
	t.Run("idle after a request", func(t *testing.T) {
		raw := connectTo(t, p.addr("fwd"), target)
		tc := tls.Client(raw, &tls.Config{ServerName: "api.authproxy.test", RootCAs: e.proxyCA, NextProtos: []string{"http/1.1"}})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(tc, "GET /v1/x HTTP/1.1\r\nHost: %s\r\n\r\n", target)
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("request: %v %v", resp, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		waitClosed(t, raw, 10*time.Second)
	})
	t.Run("HTTP/2: no preface after the handshake", func(t *testing.T) {
		raw := connectTo(t, p.addr("fwd"), target)
		tc := tls.Client(raw, &tls.Config{ServerName: "api.authproxy.test", RootCAs: e.proxyCA, NextProtos: []string{"h2"}})
		if err := tc.Handshake(); err != nil || tc.ConnectionState().NegotiatedProtocol != "h2" {
			t.Fatalf("handshake: %v (ALPN %q)", err, tc.ConnectionState().NegotiatedProtocol)
		}
		waitClosed(t, tc, 10*time.Second)
	})
	t.Run("HTTP/2: idle after a request", func(t *testing.T) {
		c := dialInterceptedH2(t, p.addr("fwd"), target, e.proxyCA)
		c.headers(1, request("GET", "https", target, "/v1/x"), true, false)
		if a := c.read(1); a.status != 200 {
			t.Fatalf("request: %+v", a)
		}
		waitClosed(t, c.nc, 10*time.Second)
	})
	t.Run("sidecar header read", func(t *testing.T) {
		c, err := net.Dial("tcp", p.addr("app"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = io.WriteString(c, "GET /v1/x HTTP/1.1\r\nHost: x\r\n") // never finished
		waitClosed(t, c, 10*time.Second)
	})
}

// gate is an upstream handler that sends half a body, then waits for
// release before sending the rest.
type gate struct {
	started chan struct{}
	release chan struct{}
	once    sync.Once
}

func newGate() *gate { return &gate{started: make(chan struct{}), release: make(chan struct{})} }

// waitStarted waits for the upstream to receive the request (hang guard).
func (g *gate) waitStarted(t *testing.T) {
	t.Helper()
	select {
	case <-g.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the request never reached the upstream")
	}
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.WriteString(w, "first half;")
	w.(http.Flusher).Flush()
	g.once.Do(func() { close(g.started) })
	select {
	case <-g.release:
		_, _ = io.WriteString(w, "second half")
	case <-r.Context().Done():
	}
}

func TestGracefulShutdownDrainsInFlightRequests(t *testing.T) {
	for _, via := range []string{"sidecar", "forward"} {
		t.Run(via, func(t *testing.T) {
			e := newEnv(t)
			g := newGate()
			up := e.httpsUpstream(g)
			p := e.start(limitsConfig(port(t, up.URL), "5s", "30s", "5s", "10s"), nil, nil)
			c := h1Client()
			url := "http://" + p.addr("app") + "/v1/slow"
			if via == "forward" {
				c = proxiedClient(p.addr("fwd"), &tlsRoots{e.proxyCA}, true)
				url = "https://api.authproxy.test:" + port(t, up.URL) + "/v1/slow"
			}
			type result struct {
				body string
				err  error
			}
			got := make(chan result, 1)
			go func() {
				resp, err := c.Get(url)
				if err != nil {
					got <- result{err: err}
					return
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				got <- result{string(b), err}
			}()
			g.waitStarted(t)
			stopped := make(chan error, 1)
			go func() { stopped <- p.stop() }()
			// New connections are refused once shutdown has begun.
			waitRefused(t, p.addr("app"))
			select {
			case err := <-stopped:
				t.Fatalf("Run returned (%v) while a request was in flight", err)
			default:
			}
			close(g.release)
			r := <-got
			if r.err != nil || r.body != "first half;second half" {
				t.Errorf("in-flight request: %q, %v; want it completed", r.body, r.err)
			}
			if err := <-stopped; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
}

func TestShutdownBoundCutsHungRequests(t *testing.T) {
	e := newEnv(t)
	g := newGate() // never released
	up := e.httpsUpstream(g)
	p := e.start(limitsConfig(port(t, up.URL), "5s", "30s", "5s", "300ms"), nil, nil)
	errc := make(chan error, 2)
	go func() {
		resp, err := h1Client().Get("http://" + p.addr("app") + "/v1/slow")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		errc <- err
	}()
	go func() {
		resp, err := proxiedClient(p.addr("fwd"), &tlsRoots{e.proxyCA}, true).Get("https://api.authproxy.test:" + port(t, up.URL) + "/v1/slow")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		errc <- err
	}()
	g.waitStarted(t)
	time.Sleep(100 * time.Millisecond) // let the second request reach the upstream too
	if err := p.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := <-errc; err == nil {
			t.Errorf("a hung request completed normally after the drain bound")
		}
	}
}

// observingInjector is a hand-written fake of an injector that watches
// responses and runs background work, as later injectors do.
type observingInjector struct {
	observed atomic.Int64
	lastHdr  atomic.Value
	running  atomic.Bool
	stopped  chan struct{}
}

func (o *observingInjector) Headers() []string { return []string{"X-Session"} }
func (o *observingInjector) Inject(r *injectors.Request) error {
	if !o.running.Load() {
		return fmt.Errorf("%w: background work not running", injectors.ErrCredentialUnavailable)
	}
	r.Header.Set("X-Session", "session-1")
	return nil
}
func (o *observingInjector) ObserveResponse(r *injectors.Request, resp *http.Response) bool {
	o.observed.Add(1)
	o.lastHdr.Store(resp.Header.Get("Content-Type") + " for " + r.Route)
	return false
}

var _ injectors.ResponseObserver = (*observingInjector)(nil)

func (o *observingInjector) Run(ctx context.Context) error {
	o.running.Store(true)
	<-ctx.Done()
	o.running.Store(false)
	close(o.stopped)
	return ctx.Err()
}

func TestInjectorSeams(t *testing.T) {
	e := newEnv(t)
	up := e.httpsUpstream(&sim.Echo{})
	obs := &observingInjector{stopped: make(chan struct{})}
	p := e.start(limitsConfig(port(t, up.URL), "5s", "30s", "5s", "5s"), map[string]injectors.Injector{"bearer": obs}, nil)
	deadline := time.Now().Add(10 * time.Second)
	for !obs.running.Load() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	req, _ := http.NewRequest("GET", "http://"+p.addr("app")+"/v1/x", nil)
	req.Header.Set("X-Session", "spoofed")
	resp, err := h1Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	seen := decodeSeen(t, resp)
	if seen.Header.Get("X-Session") != "session-1" {
		t.Errorf("upstream got X-Session %q", seen.Header.Get("X-Session"))
	}
	if obs.observed.Load() != 1 || obs.lastHdr.Load() != "application/json for api" {
		t.Errorf("observer saw %d responses, last %v", obs.observed.Load(), obs.lastHdr.Load())
	}
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-obs.stopped:
	default:
		t.Error("Run returned before the injector's background work stopped")
	}
	if strings.Contains(p.logs.String(), "background work ended") {
		t.Errorf("a clean stop was logged as a failure:\n%s", p.logs.String())
	}
}
