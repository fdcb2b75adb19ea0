package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/proctest"
	"github.com/authproxy/authproxy/sim"
)

type statusJSON struct {
	Version        string  `json:"version"`
	Started        string  `json:"started"`
	Uptime         float64 `json:"uptime_seconds"`
	Ready          *bool   `json:"ready"`
	NotReadyReason string  `json:"not_ready_reason"`
	Config         struct {
		Fingerprint string `json:"fingerprint"`
		LoadedAt    string `json:"loaded_at"`
		LastReload  *struct {
			At, Trigger, Outcome, Error string
		} `json:"last_reload"`
	} `json:"config"`
	Injectors []struct {
		Name        string
		Kind        string
		Warm        bool
		Credentials []struct {
			State       string
			ExpiresIn   *float64 `json:"expires_in_seconds"`
			NextRefresh *float64 `json:"next_refresh_seconds"`
			Age         *float64 `json:"age_seconds"`
			NextAttempt *float64 `json:"next_attempt_seconds"`
			Failures    int
		}
	}
}

const statusConfig = `
admin: {address: "127.0.0.1:0"}
reload: {watch: false}
listeners:
  - {name: app, kind: sidecar, address: "127.0.0.1:0", upstream: "https://api.status.test:%[1]s"}
upstream: {ca_file: %[2]q, resolve: {api.status.test: 127.0.0.1, auth.status.test: 127.0.0.1}}
token_cache: {min_backoff: 30s, max_backoff: 30s}
injectors:
  api:
    kind: oauth2
    token_url: "https://auth.status.test:%[3]s/token"
    client_id: {value: status-app}
    client_secret: %[4]s
    warm: true
  key: {kind: static, headers: {X-Key: {value: k}}}
routes:
  - {name: api, match: {path: /v1/*}, injector: api}
  - {name: keyed, match: {path: /k/*}, injector: key}
%[5]s`

// /status tells the truth in a shape programs can use: readiness as a
// boolean with its reason, durations in seconds, a failing key's next
// attempt, a static injector warm; the running configuration's
// fingerprint and load time, and the last reload's outcome and error
// (never a secret) after a rejected reload; version and uptime.
func TestStatusTellsTheTruth(t *testing.T) {
	dir := t.TempDir()
	pki, serve := testTLS(t, dir, "auth.status.test", "api.status.test")
	ts := &sim.TokenServer{ClientID: "status-app", ClientSecret: "s3cret-for-status", Auth: "basic", ExpiresIn: 3600}
	ts.SetDown(http.StatusServiceUnavailable)
	authPort, apiPort := serve(ts), serve(&sim.Echo{})
	cfg := filepath.Join(dir, "c.yaml")
	write := func(secret, extra string) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte(fmt.Sprintf(statusConfig, apiPort, pki.CAFile, authPort, secret, extra)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("{env: STATUS_SECRET}", "")
	cmd := exec.Command(binary, "run", "-config", cfg)
	cmd.Env = []string{"STATUS_SECRET=s3cret-for-status", "PATH=" + os.Getenv("PATH")}
	p := proctest.Start(t, cmd)
	admin := "http://" + p.Await(t, regexp.MustCompile(`listener=admin address=(\S+)`), 20*time.Second)[1]
	status := func() (v statusJSON, html string) {
		t.Helper()
		st, body := doReq(t, "GET", admin+"/status?format=json")
		if st != 200 || json.Unmarshal([]byte(body), &v) != nil {
			t.Fatalf("/status?format=json: %d %s", st, body)
		}
		if strings.Contains(body, `"expires_in"`) || strings.Contains(body, "h0m") || strings.Contains(body, "| |") {
			t.Errorf("the JSON has a duration that is not in seconds: %s", body)
		}
		_, html = doReq(t, "GET", admin+"/status")
		for _, page := range []string{body, html} {
			for _, secret := range []string{"s3cret-for-status", "hunter2-in-the-wrong-place"} {
				if strings.Contains(page, secret) {
					t.Errorf("/status shows a secret: %s", page)
				}
			}
		}
		return v, html
	}

	// The issuer is down: not ready, and why; the key's next attempt
	// (within the backoff of 30 s ± 50% jitter).
	var v statusJSON
	waitUntil(t, "a failed warm fetch on /status", func() bool {
		v, _ = status()
		return len(v.Injectors) == 2 && len(v.Injectors[0].Credentials) == 1 && v.Injectors[0].Credentials[0].Failures > 0
	})
	if v.Ready == nil || *v.Ready || v.NotReadyReason != `injector "api" does not hold its credentials yet` {
		t.Errorf("ready %v, not_ready_reason %q", v.Ready, v.NotReadyReason)
	}
	c := v.Injectors[0].Credentials[0]
	if c.State != "failing" || c.NextAttempt == nil || *c.NextAttempt <= 0 || *c.NextAttempt > 45 || c.ExpiresIn != nil || c.NextRefresh != nil {
		t.Errorf("a failing key: %+v (next attempt %v)", c, c.NextAttempt)
	}
	if in := v.Injectors[1]; in.Name != "key" || in.Kind != "static" || !in.Warm {
		t.Errorf("the static injector: %+v, want warm", in)
	}
	out, _, _ := runBinary(t, nil, "version")
	if want := strings.TrimSpace(strings.TrimPrefix(out, "authproxy ")); v.Version != want || want == "" {
		t.Errorf("version %q, want %q", v.Version, want)
	}
	if started, err := time.Parse(time.RFC3339, v.Started); err != nil || time.Since(started) > time.Minute || v.Uptime < 0 {
		t.Errorf("started %q, uptime %v", v.Started, v.Uptime)
	}
	if v.Config.Fingerprint == "" || v.Config.LoadedAt == "" || v.Config.LastReload != nil {
		t.Errorf("config before any reload: %+v", v.Config)
	}
	first := v.Config

	// The issuer answers (a restart of the proxy would be needed to try
	// at once: the backoff is 30 s, so a reload with a new injector does).
	ts.SetDown(0)

	// A rejected reload: a secret written in the wrong place.
	write("hunter2-in-the-wrong-place", "")
	syscall.Kill(p.Cmd.Process.Pid, syscall.SIGHUP)
	p.Await(t, regexp.MustCompile(`msg="reload rejected`), 20*time.Second)
	v, html := status()
	r := v.Config.LastReload
	if r == nil || r.Outcome != "rejected" || r.Trigger != "SIGHUP" || !strings.Contains(r.Error, "injectors.api.client_secret: ") {
		t.Fatalf("after a rejected reload: %+v", r)
	}
	if v.Config.Fingerprint != first.Fingerprint || v.Config.LoadedAt != first.LoadedAt {
		t.Errorf("a rejected reload changed the running config's fingerprint or load time: %+v, was %+v", v.Config, first)
	}
	if !strings.Contains(html, "rejected") || !strings.Contains(html, first.Fingerprint) || !strings.Contains(html, "injectors.api.client_secret") {
		t.Errorf("the page does not show the rejected reload:\n%s", html)
	}

	// An applied reload with one more route: a new fingerprint, a new
	// load time, and the api injector (its block unchanged) keeps trying.
	time.Sleep(1100 * time.Millisecond) // load times are to the second
	write("{env: STATUS_SECRET}", "  - {name: more, match: {path: /more/*}, injector: key}\n")
	syscall.Kill(p.Cmd.Process.Pid, syscall.SIGHUP)
	p.Await(t, regexp.MustCompile(`msg="reload applied"`), 20*time.Second)
	v, _ = status()
	if r := v.Config.LastReload; r == nil || r.Outcome != "applied" || r.Error != "" {
		t.Errorf("after an applied reload: %+v", r)
	}
	if v.Config.Fingerprint == first.Fingerprint || v.Config.LoadedAt == first.LoadedAt {
		t.Errorf("an applied reload left the fingerprint or load time: %+v, was %+v", v.Config, first)
	}
}
