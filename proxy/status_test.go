package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/openobd/pb"
	"github.com/authproxy/authproxy/sim"
	"github.com/authproxy/authproxy/tokencache"
)

// The admin listener's /status shows, for a person in a real browser and
// as JSON, each injector with the credentials it holds (key, state,
// lifetime) and openOBD's sessions with their token streams, the routes
// with request counts and the listeners; never a token or the secret.
func TestStatusPageInARealBrowser(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is needed (bash .ci/deps installs it as root)")
	}
	w := newOBDWorld(t, true, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	app := dialPlain(t, w.p.addr("obd"))
	info, err := pb.NewSessionControllerClient(app).StartSessionOnTicket(ctx, &pb.TicketId{Value: "status-page"})
	if err != nil {
		t.Fatal(err)
	}
	session := dialPlain(t, info.GrpcEndpoint)
	pingPong(t, ctx, pb.NewCanClient(session), 300*time.Millisecond) // the token stream rotates meanwhile

	var view struct {
		Ready     bool
		Injectors []struct {
			Name, Kind  string
			Credentials []struct{ Key, State string }
			Sessions    []struct {
				ID, Stream string
				Rotations  int
			}
		}
		Routes []struct {
			Name     string
			Requests int64
		}
		Listeners []struct{ Name, Kind, Address string }
	}
	st, body := adminGet(t, w.p, "/status?format=json")
	if st != 200 || json.Unmarshal([]byte(body), &view) != nil {
		t.Fatalf("/status?format=json: %d %.500s", st, body)
	}
	if len(view.Injectors) != 1 || view.Injectors[0].Name != "obd" || view.Injectors[0].Kind != "openobd" {
		t.Fatalf("injectors: %+v", view.Injectors)
	}
	in := view.Injectors[0]
	if len(in.Credentials) != 1 || in.Credentials[0].Key != tokencache.KeyFingerprint("obd\x00controller") || in.Credentials[0].State != "valid" {
		t.Errorf("credentials: %+v", in.Credentials)
	}
	if len(in.Sessions) != 1 || in.Sessions[0].ID != info.Id || in.Sessions[0].Stream != "open" || in.Sessions[0].Rotations < 1 {
		t.Errorf("sessions: %+v", in.Sessions)
	}
	if len(view.Routes) != 1 || view.Routes[0].Name != "openobd" || view.Routes[0].Requests < 1 {
		t.Errorf("routes: %+v", view.Routes)
	}
	if len(view.Listeners) != 2 || view.Listeners[0].Address != w.p.addr("obd") {
		t.Errorf("listeners: %+v", view.Listeners)
	}

	// The same world, as the metrics see it.
	fams := scrape(t, w.p)
	for _, c := range []struct {
		family string
		labels map[string]string
		min    float64
	}{
		{"authproxy_openobd_sessions", map[string]string{"injector": "obd", "state": "live"}, 1},
		{"authproxy_openobd_token_streams_open", map[string]string{"injector": "obd"}, 1},
		{"authproxy_injector_events_total", map[string]string{"injector": "obd", "event": "rotation"}, 1},
		{"authproxy_token_fetches_total", map[string]string{"injector": "obd", "outcome": "ok"}, 1},
	} {
		if got := value(fams, c.family, c.labels); got < c.min {
			t.Errorf("%s%v = %v, want at least %v", c.family, c.labels, got, c.min)
		}
	}

	url := "http://" + w.p.srv.AdminAddr().String() + "/status"
	run := func(args ...string) []byte {
		t.Helper()
		cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
		defer ccancel()
		cmd := exec.CommandContext(cctx, browser, append([]string{"--headless", "--no-sandbox", "--disable-gpu",
			"--user-data-dir=" + t.TempDir()}, args...)...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("chromium %v: %v", args, err)
		}
		return out
	}
	dom := string(run("--dump-dom", url))
	for _, want := range []string{"<h3>obd", "openobd", tokencache.KeyFingerprint("obd\x00controller"), "valid", info.Id, "open", "Routes", "openobd</td>", w.p.addr("obd")} {
		if !strings.Contains(dom, want) {
			t.Errorf("the rendered page lacks %q", want)
		}
	}
	var secrets []string
	secrets = append(secrets, secretToken)
	if tok, ok := w.e.injEnv.Cache.Peek("obd\x00controller"); ok {
		secrets = append(secrets, tok.Value.Reveal())
	}
	for _, s := range secrets {
		if strings.Contains(dom, s) || strings.Contains(body, s) {
			t.Errorf("the status page shows a token or the secret")
		}
	}
	shot := filepath.Join(t.TempDir(), "status.png")
	run("--screenshot="+shot, "--window-size=1200,800", "--hide-scrollbars", url)
	png, err := os.ReadFile(shot)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 10_000 {
		t.Errorf("screenshot: %d bytes, err %v", len(png), err)
	}
	if dst := os.Getenv("AUTHPROXY_STATUS_SCREENSHOT"); dst != "" { // docs/status.png is made this way
		_ = os.WriteFile(dst, png, 0o644)
	}
}

// /status shows no value taken from a request (a mount id from the path, a
// header's value) in HTML or JSON: each credential's key is its
// fingerprint, the one fetch log lines name.
func TestStatusShowsNoValueFromARequest(t *testing.T) {
	e := newEnv(t)
	cache := tokencache.New(tokencache.Options{})
	e.injEnv = injectors.Env{Cache: cache}
	ts := &sim.TokenServer{ClientID: "app", ClientSecret: secretToken, Auth: "basic"}
	auth := e.httpsUpstream(ts)
	api := e.httpsUpstream(&sim.Echo{})
	p := e.start(fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.authproxy.test:%s"}
upstream:
  ca_file: "{{UPSTREAM_CA}}"
  resolve: {api.authproxy.test: 127.0.0.1, auth.authproxy.test: 127.0.0.1}
injectors:
  mounts:
    kind: oauth2
    token_url: "https://auth.authproxy.test:%s/token"
    client_id: {value: app}
    client_secret: {value: %q}
    scopes: ["mount:{mount}", "tenant:{header:X-Tenant}"]
routes:
  - {name: mounts, match: {path: "/mounts/{mount}/*"}, injector: mounts}
`, port(t, api.URL), port(t, auth.URL), secretToken), nil, nil)
	values := []string{"mount-7f3a9c", "mount-b21e44", "tenant-q9z8x7"}
	for _, m := range values[:2] {
		req, _ := http.NewRequest(http.MethodGet, "http://"+p.addr("app")+"/mounts/"+m+"/x", nil)
		req.Header.Set("X-Tenant", values[2])
		resp, err := h1Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d", m, resp.StatusCode)
		}
	}
	var keys []string
	for _, en := range cache.Entries() {
		keys = append(keys, en.Key)
	}
	if len(keys) != 2 {
		t.Fatalf("the cache holds %d keys, want one per mount", len(keys))
	}
	for _, format := range []string{"", "?format=json"} {
		st, body := adminGet(t, p, "/status"+format)
		if st != 200 {
			t.Fatalf("/status%s: %d", format, st)
		}
		for _, v := range values {
			if strings.Contains(body, v) {
				t.Errorf("/status%s shows %q, a value taken from a request", format, v)
			}
		}
		if !strings.Contains(body, "mounts") {
			t.Errorf("/status%s does not name the injector", format)
		}
		for _, k := range keys {
			if !strings.Contains(body, k) {
				t.Errorf("/status%s does not show the key fingerprint %s:\n%.2000s", format, k, body)
			}
		}
	}
	if logs := p.logs.String(); strings.Contains(logs, values[0]) {
		t.Errorf("the log shows a mount id:\n%s", logs)
	}
}
