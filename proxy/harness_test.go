package proxy_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/authproxy/authproxy/ca"
	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/internal/syncbuf"
	"github.com/authproxy/authproxy/metrics"
	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/sim"
)

// The secret every test injects; no log line or error body may contain it.
const secretToken = "s3cr3t-T0KEN-value"

// envProxy is the address HTTPS_PROXY names for the whole test binary:
// grpc-go reads HTTPS_PROXY through http.ProxyFromEnvironment, which caches
// the environment on first use. It relays each connection to the forward
// listener of the proxy the current test started (useEnvProxy).
var envProxyTarget atomic.Value // string

func TestMain(m *testing.M) {
	if os.Getenv(inNetnsEnv) == "1" {
		if err := loopbackUp(); err != nil {
			fmt.Fprintln(os.Stderr, "bringing up lo in the network namespace:", err)
			os.Exit(1)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go relay(ln)
	os.Setenv("HTTPS_PROXY", "http://"+ln.Addr().String())
	os.Unsetenv("NO_PROXY")
	os.Unsetenv("no_proxy")
	code := m.Run()
	ln.Close()
	os.Exit(code)
}

func relay(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			target, _ := envProxyTarget.Load().(string)
			if target == "" {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			defer u.Close()
			go func() { _, _ = io.Copy(u, c); u.(*net.TCPConn).CloseWrite() }()
			_, _ = io.Copy(c, u)
		}()
	}
}

// useEnvProxy points HTTPS_PROXY (through the relay) at addr for this test.
func useEnvProxy(t testing.TB, addr string) {
	envProxyTarget.Store(addr)
	t.Cleanup(func() { envProxyTarget.Store("") })
}

// env is one test's world: an upstream PKI, a proxy CA, and a temp dir.
type env struct {
	injEnv  injectors.Env    // for injectors.BuildAll (a test may set a clock or cache)
	metrics *metrics.Metrics // for proxy.Options (nil: none)
	t       testing.TB
	dir     string
	pki     *sim.PKI
	caCert  string
	caKey   string
	proxyCA *x509.CertPool
}

func newEnv(t testing.TB) *env {
	t.Helper()
	dir := t.TempDir()
	pki, err := sim.NewPKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, pki: pki, caCert: filepath.Join(dir, "ca.crt"), caKey: filepath.Join(dir, "ca.key")}
	if err := ca.Create(e.caCert, e.caKey, "test proxy CA", false); err != nil {
		t.Fatal(err)
	}
	pem, _ := os.ReadFile(e.caCert)
	e.proxyCA = x509.NewCertPool()
	e.proxyCA.AppendCertsFromPEM(pem)
	return e
}

// upstreamNames are the names simulated upstreams' certificates cover;
// configs pin *.authproxy.test to 127.0.0.1 with upstream.resolve.
var upstreamNames = []string{"api.authproxy.test", "grpc.authproxy.test", "other.authproxy.test", "upgrade.authproxy.test", "auth.authproxy.test", "odil.authproxy.test", "viss.authproxy.test", "localhost", "127.0.0.1"}

// httpsUpstream starts a TLS (h2 + http/1.1) upstream.
func (e *env) httpsUpstream(h http.Handler) *httptest.Server {
	e.t.Helper()
	tlsCfg, err := e.pki.ServerTLS(upstreamNames...)
	if err != nil {
		e.t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = tlsCfg
	srv.EnableHTTP2 = true
	srv.StartTLS()
	e.t.Cleanup(srv.Close)
	return srv
}

func port(t testing.TB, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(strings.TrimPrefix(strings.TrimPrefix(addr, "https://"), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// running is a proxy started by env.start.
type running struct {
	srv  *proxy.Server
	logs *syncbuf.Buffer
	stop func() error // cancels Run and returns its result (once)
}

func (r *running) addr(name string) string { return r.srv.Addr(name).String() }

// start runs the proxy on a config given as YAML. {{CA_CERT}}, {{CA_KEY}}
// and {{UPSTREAM_CA}} are replaced by the env's files. override replaces
// built injectors by name (hand-written fakes); pre gives pre-bound
// listeners. The proxy is stopped, and its stop checked, at cleanup.
func (e *env) start(yamlText string, override map[string]injectors.Injector, pre map[string]net.Listener) *running {
	e.t.Helper()
	yamlText = strings.NewReplacer("{{CA_CERT}}", e.caCert, "{{CA_KEY}}", e.caKey, "{{UPSTREAM_CA}}", e.pki.CAFile).Replace(yamlText)
	cfg, err := config.Parse([]byte(yamlText))
	if err != nil {
		e.t.Fatalf("config: %v", err)
	}
	logs := &syncbuf.Buffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	injEnv := e.injEnv
	if injEnv.Log == nil {
		injEnv.Log = logger
	}
	injs, err := injectors.BuildAll(cfg, injEnv)
	if err != nil {
		e.t.Fatalf("injectors: %v", err)
	}
	for name, inj := range override {
		injs[name] = inj
	}
	srv, err := proxy.New(cfg, injs, proxy.Options{
		Logger:    logger,
		Listeners: pre,
		Metrics:   e.metrics,
		Cache:     e.injEnv.Cache,
	})
	if err != nil {
		e.t.Fatalf("proxy.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		cancel()
		e.t.Fatalf("proxy did not start: %v", err)
	}
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(20 * time.Second):
				runErr = errors.New("proxy did not stop within 20s")
			}
		})
		return runErr
	}
	r := &running{srv: srv, logs: logs, stop: stop}
	e.t.Cleanup(func() {
		if err := stop(); err != nil {
			e.t.Errorf("proxy Run: %v", err)
		}
		if strings.Contains(logs.String(), secretToken) {
			e.t.Errorf("the secret appears in the proxy log:\n%s", logs.String())
		}
	})
	return r
}

// h1Client talks HTTP/1.1 only, never through an environment proxy.
func h1Client() *http.Client {
	tr := &http.Transport{Proxy: nil, DisableCompression: true}
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// h2cClient talks cleartext HTTP/2 with prior knowledge, as grpc-go does.
func h2cClient() *http.Client {
	tr := &http.Transport{Proxy: nil, Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// decodeSeen decodes sim.Echo's description of the request it received.
func decodeSeen(t *testing.T, resp *http.Response) sim.Seen {
	t.Helper()
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var seen sim.Seen
	if err := json.Unmarshal(body, &seen); err != nil {
		t.Fatalf("decoding echo: %v: %s", err, body)
	}
	return seen
}

// getOK GETs url and reads the answer to its end; anything but a 200 is an
// error.
func getOK(c *http.Client, url string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	return err
}

// burst makes n calls of send at once, reads each answer to its end, and
// counts the answers by status; a failed call counts under status 0.
func burst(n int, send func() (*http.Response, error)) map[int]int {
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for i := 0; i < n; i++ {
		wg.Go(func() {
			status := 0
			if resp, err := send(); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				status = resp.StatusCode
			}
			mu.Lock()
			statuses[status]++
			mu.Unlock()
		})
	}
	wg.Wait()
	return statuses
}

// waitGoroutines waits (up to 10s) for the goroutine count to return to
// within slack of baseline, and fails with a dump otherwise.
func waitGoroutines(t *testing.T, baseline, slack int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= baseline+slack {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutines: %d, baseline %d (+%d allowed)\n%s", n, baseline, slack, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// parseConfig parses a config with the env's placeholders filled in.
func parseConfig(e *env, yamlText string) (*config.Config, error) {
	yamlText = strings.NewReplacer("{{CA_CERT}}", e.caCert, "{{CA_KEY}}", e.caKey, "{{UPSTREAM_CA}}", e.pki.CAFile).Replace(yamlText)
	return config.Parse([]byte(yamlText))
}

// reloadText reloads the running proxy p with a new configuration, as a
// SIGHUP would (its injectors built afresh).
func reloadText(t testing.TB, e *env, p *running, yamlText string) {
	t.Helper()
	cfg, err := parseConfig(e, yamlText)
	if err != nil {
		t.Fatal(err)
	}
	injs, err := injectors.BuildAll(cfg, injectors.Env{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.srv.Reload(cfg, injs); err != nil {
		t.Fatalf("reload: %v", err)
	}
}
