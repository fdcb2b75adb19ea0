package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/authproxy/authproxy/internal/syncbuf"
	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/sim"
)

// rotate points dir/..data at a new directory holding token, as kubelet
// updates a mounted Secret (an atomic rename of the ..data link).
func rotate(t *testing.T, dir, version, token string) {
	t.Helper()
	v := filepath.Join(dir, version)
	if err := os.MkdirAll(v, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v, "token"), []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(version, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "token")); err != nil {
		if err := os.Symlink(filepath.Join("..data", "token"), filepath.Join(dir, "token")); err != nil {
			t.Fatal(err)
		}
	}
}

// A running proxy takes a rotated secret file (a Kubernetes-style ..data
// swap, seen by the watcher) from the next request, keeps an unchanged
// OAuth2 injector's token (no new token request), refuses a broken config
// and one that changes a listener while the old one goes on serving, and
// fails no request of a continuous HTTP/1.1 and h2c load, nor a response
// streaming across the reloads.
func TestReloadUnderLoad(t *testing.T) {
	dir := t.TempDir()
	pki, err := sim.NewPKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, _ := pki.ServerTLS("api.authproxy.test", "auth.authproxy.test")
	ts := &sim.TokenServer{ClientID: "fleet-app", ClientSecret: "fleet-secret", ExpiresIn: 3600}
	var streamStarted atomic.Bool
	mux := http.NewServeMux()
	mux.Handle("/token", ts)
	mux.HandleFunc("/static/stream", func(w http.ResponseWriter, r *http.Request) {
		streamStarted.Store(true)
		for i := 0; i < 20; i++ { // 2 s, across the reloads
			fmt.Fprintf(w, "chunk %d\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/oauth/") && !ts.Valid(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")) {
			http.Error(w, "bad token", http.StatusUnauthorized)
			return
		}
		fmt.Fprintf(w, "key=%s", r.Header.Get("X-Key"))
	})
	echo := &sim.GRPCEcho{}
	gs := echo.NewServer(tlsCfg)
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(gl) }()
	defer gs.Stop()
	grpcPort := gl.Addr().String()[strings.LastIndex(gl.Addr().String(), ":")+1:]
	up := httptest.NewUnstartedServer(mux)
	up.TLS, up.EnableHTTP2 = tlsCfg, true
	up.StartTLS()
	defer up.Close()
	port := up.Listener.Addr().(interface{ String() string }).String()
	port = port[strings.LastIndex(port, ":")+1:]

	secrets := filepath.Join(dir, "secrets")
	rotate(t, secrets, "v1", "tok-one")
	path := filepath.Join(dir, "config.yaml")
	write := func(extraListeners, extraTop string) {
		cfg := fmt.Sprintf(`
admin: {address: "127.0.0.1:0"}
%[6]s
listeners:
  - {name: app, kind: sidecar, address: "127.0.0.1:0", upstream: "https://api.authproxy.test:%[1]s"}
%[4]s
  - {name: grpc, kind: sidecar, address: "127.0.0.1:0", upstream: "https://api.authproxy.test:%[5]s"}
upstream: {ca_file: %[2]q, resolve: {api.authproxy.test: 127.0.0.1, auth.authproxy.test: 127.0.0.1}}
injectors:
  key: {kind: static, headers: {X-Key: {file: %[3]q}}}
  fleet: {kind: oauth2, token_url: "https://auth.authproxy.test:%[1]s/token", client_id: {value: fleet-app}, client_secret: {value: fleet-secret}}
routes:
  - {name: static, listeners: [app], match: {path: /static/*}, injector: key}
  - {name: oauth, listeners: [app], match: {path: /oauth/*}, injector: fleet}
  - {name: calls, listeners: [grpc], match: {path: /grpc.testing.TestService/*}, injector: key}
`, port, pki.CAFile, filepath.Join(secrets, "token"), extraListeners, grpcPort, extraTop)
		if err := os.WriteFile(path+".tmp", []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	write("", "")

	var logs syncbuf.Buffer
	cfg, injs, m, env, _, err := loadWith(path, &logs, true, false)
	if err != nil {
		t.Fatal(err)
	}
	logger := newLogger(cfg.Log, &logs)
	srv, err := proxy.New(cfg, injs, proxy.Options{Logger: logger, Metrics: m, Cache: env.Cache})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	<-srv.Ready()
	rl := newReloader(path, cfg, injs, srv, env, m, logger)
	go rl.watch(ctx)
	base := "http://" + srv.Addr("app").String()

	h1 := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 10 * time.Second}
	h2t := &http.Transport{Proxy: nil, Protocols: new(http.Protocols)}
	h2t.Protocols.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Transport: h2t, Timeout: 10 * time.Second}
	get := func(c *http.Client, p string) (int, string) {
		resp, err := c.Get(base + p)
		if err != nil {
			return 0, err.Error()
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	if st, body := get(h1, "/oauth/x"); st != 200 {
		t.Fatalf("before any reload: %d %s", st, body)
	}
	tokens := ts.Calls()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent, failed atomic.Int64
	var firstFailure atomic.Value
	for _, c := range []*http.Client{h1, h2} {
		for _, p := range []string{"/static/x", "/oauth/x"} {
			wg.Go(func() {
				for i := 0; i < 100_000; i++ { // bounded; stopped far sooner
					select {
					case <-stop:
						return
					default:
					}
					st, body := get(c, p)
					sent.Add(1)
					if st != 200 {
						failed.Add(1)
						firstFailure.CompareAndSwap(nil, fmt.Sprintf("%s: %d %s", p, st, body))
					}
					time.Sleep(2 * time.Millisecond)
				}
			})
		}
	}
	streamed := make(chan string, 1)
	go func() {
		resp, err := h2.Get(base + "/static/stream")
		if err != nil {
			streamed <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		streamed <- string(b)
	}()
	for !streamStarted.Load() {
		time.Sleep(5 * time.Millisecond)
	}
	// A gRPC bidi stream, open across every reload.
	gconn, err := grpc.NewClient(srv.Addr("grpc").String(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithNoProxy())
	if err != nil {
		t.Fatal(err)
	}
	defer gconn.Close()
	bidi, err := testpb.NewTestServiceClient(gconn).FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bidiDone := make(chan error, 1)
	var rounds atomic.Int64
	go func() {
		for {
			select {
			case <-stop:
				if err := bidi.CloseSend(); err != nil {
					bidiDone <- err
					return
				}
				_, err := bidi.Recv()
				if err == io.EOF {
					err = nil
				}
				bidiDone <- err
				return
			default:
			}
			if err := bidi.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("ping")}}); err != nil {
				bidiDone <- err
				return
			}
			if _, err := bidi.Recv(); err != nil {
				bidiDone <- err
				return
			}
			rounds.Add(1)
			time.Sleep(10 * time.Millisecond)
		}
	}()

	// 0. Other files in the watched directories do not count: a log file
	// written there must not make the proxy reload (and log, and reload…).
	for i := 0; i < 5; i++ {
		if err := os.WriteFile(filepath.Join(dir, "proxy.log"), []byte(strings.Repeat("x", i)), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(secrets, "other"), []byte(strings.Repeat("y", i)), 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(400 * time.Millisecond) // past the 300 ms a change settles for
	if strings.Contains(logs.String(), "a watched file changed") {
		t.Fatalf("a change to an unrelated file reloaded the config:\n%s", logs.String())
	}

	// 1. The secret file rotates: the watcher reloads, the next requests carry it.
	rotate(t, secrets, "v2", "tok-two")
	waitBody(t, func() string { _, b := get(h1, "/static/x"); return b }, "key=tok-two")
	if n := ts.Calls(); n != tokens {
		t.Errorf("%d token requests across the reload of an unchanged OAuth2 injector, want 0", n-tokens)
	}

	// 2. A broken config is refused, with its YAML path; the old one serves.
	if err := os.WriteFile(path, []byte("listeners:\n  - {name: app, kind: sidecar, adress: x}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitBody(t, logs.String, "listeners[0].adress: unknown key")
	if st, body := get(h1, "/static/x"); st != 200 || body != "key=tok-two" {
		t.Errorf("after a broken config: %d %s", st, body)
	}

	// 3. A new listener is bound and served, the others untouched; removed,
	// it stops accepting.
	write(`  - {name: extra, kind: sidecar, address: "127.0.0.1:0", upstream: "https://api.authproxy.test:`+port+`"}`, "")
	extraRE := regexp.MustCompile(`listening listener=extra kind=sidecar address=(\S+)`)
	waitBody(t, logs.String, "listening listener=extra")
	extra := extraRE.FindStringSubmatch(logs.String())[1]
	if resp, err := h1.Get("http://" + extra + "/static/x"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("the listener a reload added (no route is on it): %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	write("", "")
	waitBody(t, logs.String, `listener stopped by a reload; draining" listener=extra`)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := net.Dial("tcp", extra)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the removed listener still accepts connections")
		}
	}

	// 4. A change that needs a restart is refused, and said so.
	write("", "timeouts: {idle: 1m}")
	waitBody(t, logs.String, "timeouts changed (a reload applies listeners, injectors, routes, log.level, log.access and log.access_sample)")

	// 5. SIGHUP's path, with the config as it was: applied.
	write("", "")
	rl.reload("test")
	close(stop)
	wg.Wait()
	if err := <-bidiDone; err != nil || rounds.Load() < 10 {
		t.Errorf("the gRPC bidi stream across the reloads: %v after %d round trips", err, rounds.Load())
	}
	if body := <-streamed; !strings.Contains(body, "chunk 19") {
		t.Errorf("the streaming response did not survive the reloads: %q", body)
	}
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed across the reloads; first: %v", failed.Load(), sent.Load(), firstFailure.Load())
	}
	if sent.Load() < 50 {
		t.Errorf("only %d requests were sent during the reloads", sent.Load())
	}
	_, metricsText := func() (int, string) {
		resp, err := h1.Get("http://" + srv.AdminAddr().String() + "/metrics")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}()
	for outcome, least := range map[string]int{"ok": 4, "rejected": 2} { // the watcher may also see step 5's write
		var n int
		_, _ = fmt.Sscanf(metricsText[strings.Index(metricsText, `authproxy_config_reloads_total{outcome="`+outcome+`"} `)+len(`authproxy_config_reloads_total{outcome="`+outcome+`"} `):], "%d", &n)
		if !strings.Contains(metricsText, `authproxy_config_reloads_total{outcome="`+outcome+`"}`) || n < least {
			t.Errorf("/metrics counts %d %s reloads, want at least %d", n, outcome, least)
		}
	}
	if strings.Contains(logs.String(), "tok-one") || strings.Contains(logs.String(), "tok-two") || strings.Contains(logs.String(), "fleet-secret") {
		t.Errorf("a secret appears in the log")
	}
	t.Logf("%d requests and %d bidi round trips across the reloads, %d failed", sent.Load(), rounds.Load(), failed.Load())
}

// waitBody waits up to 10 s for f's result to contain want.
func waitBody(t *testing.T, f func() string, want string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		got := f()
		if strings.Contains(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s: %.2000q lacks %q", got, want)
		}
	}
}
