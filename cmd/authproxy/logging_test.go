package main

import (
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
	"syscall"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/proctest"
	"github.com/authproxy/authproxy/sim"
)

const loggingConfig = `
admin: {address: "127.0.0.1:0"}
log: {level: %s, access: %v, format: %s}
reload: {watch: false}
listeners:
  - {name: app, kind: sidecar, address: "127.0.0.1:0", upstream: "http://127.0.0.1:%s"}
injectors:
  tok: {kind: static, headers: {X-Key: {value: k}}}
routes:
  - {name: api, match: {path: /v1/*}, injector: tok, allow_plaintext: true}
`

func doReq(t *testing.T, method, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A reload applies log.level, log.access and log.access_sample, keeping
// the process (and its tokens); log.format still needs a restart, and the
// reload's log line says so. The admin listener's PUT /logging switches
// the level for a bounded time and it reverts by itself; the data
// listeners do not serve it.
func TestLogLevelChangesWithoutARestart(t *testing.T) {
	up := httptest.NewServer(&sim.Echo{})
	t.Cleanup(up.Close)
	upPort := up.URL[strings.LastIndex(up.URL, ":")+1:]
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	write := func(level string, access bool, format string) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte(fmt.Sprintf(loggingConfig, level, access, format, upPort)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("info", false, "text")
	p := proctest.Start(t, exec.Command(binary, "run", "-config", cfg))
	app := "http://" + p.Await(t, regexp.MustCompile(`listener=app kind=sidecar address=(\S+)`), 20*time.Second)[1]
	admin := "http://" + p.Await(t, regexp.MustCompile(`listener=admin address=(\S+)`), 20*time.Second)[1]
	pid := p.Cmd.Process.Pid
	get := func(path string) {
		t.Helper()
		if st, body := doReq(t, "GET", app+path); st != 200 {
			t.Fatalf("GET %s: %d %s", path, st, body)
		}
	}
	state := func() (s struct {
		Level       string
		ConfigLevel string `json:"config_level"`
		Override    *string
		Left        *float64 `json:"override_seconds_left"`
	}) {
		t.Helper()
		_, body := doReq(t, "GET", admin+"/logging")
		if err := json.Unmarshal([]byte(body), &s); err != nil {
			t.Fatalf("GET /logging: %q: %v", body, err)
		}
		return s
	}
	reload := func() {
		t.Helper()
		syscall.Kill(pid, syscall.SIGHUP)
	}
	accessLine := func(path string) *regexp.Regexp {
		return regexp.MustCompile(`msg=request listener=app route=api injector=tok client=anyone method=GET host=\S+ path=` + regexp.QuoteMeta(path) + ` `)
	}
	var absent []string // paths whose access line must never appear

	get("/v1/access-off") // log.access false
	absent = append(absent, "/v1/access-off")

	// Reload to debug with the access log on.
	write("debug", true, "text")
	reload()
	p.Await(t, regexp.MustCompile(`msg="configuration reloaded" .*log_level=debug log_access=true log_access_sample=1`), 20*time.Second)
	get("/v1/access-on")
	p.Await(t, accessLine("/v1/access-on"), 20*time.Second)
	if s := state(); s.Level != "debug" || s.ConfigLevel != "debug" || s.Override != nil {
		t.Errorf("after the reload to debug, /logging says %+v", s)
	}

	// Reload to warn: the access log's info lines are not logged.
	write("warn", true, "text")
	reload()
	waitUntil(t, "the reload to warn", func() bool { return state().Level == "warn" })
	get("/v1/at-warn")
	absent = append(absent, "/v1/at-warn")

	// log.format needs a restart: the reload is refused and says so.
	write("warn", true, "json")
	reload()
	p.Await(t, regexp.MustCompile(`level=ERROR msg="reload rejected; the running configuration goes on serving" trigger=SIGHUP problem=".*log\.format changed \(a reload applies listeners, injectors, routes, log\.level, log\.access and log\.access_sample\)`), 20*time.Second)
	write("warn", true, "text")

	// The admin listener switches to info for 3 s, then it reverts.
	if st, body := doReq(t, "PUT", admin+"/logging?level=info&for=3s"); st != 200 || !strings.Contains(body, `"level":"info"`) {
		t.Fatalf("PUT /logging: %d %s", st, body)
	}
	p.Await(t, regexp.MustCompile(`level=WARN msg="log level changed through the admin listener" level=info for=3s client=127\.0\.0\.1:\d+`), 20*time.Second)
	if s := state(); s.Level != "info" || s.ConfigLevel != "warn" || s.Override == nil || *s.Override != "info" || s.Left == nil || *s.Left <= 0 || *s.Left > 3 {
		t.Errorf("during the override /logging says %+v", s)
	}
	get("/v1/overridden")
	p.Await(t, accessLine("/v1/overridden"), 20*time.Second)
	p.Await(t, regexp.MustCompile(`level=WARN msg="log level back to log.level: the override's time is up" level=warn`), 30*time.Second)
	get("/v1/reverted")
	absent = append(absent, "/v1/reverted")
	if s := state(); s.Level != "warn" || s.Override != nil {
		t.Errorf("after the override /logging says %+v", s)
	}

	// DELETE ends an override at once.
	doReq(t, "PUT", admin+"/logging?level=debug&for=1h")
	if st, body := doReq(t, "DELETE", admin+"/logging"); st != 200 || !strings.Contains(body, `"level":"warn"`) {
		t.Errorf("DELETE /logging: %d %s", st, body)
	}
	// Bad values are refused and change nothing.
	for _, q := range []string{"level=verbose", "level=debug&for=48h", "level=debug&for=-1m", "for=1m", "level=debug&for=soon"} {
		if st, _ := doReq(t, "PUT", admin+"/logging?"+q); st != http.StatusBadRequest {
			t.Errorf("PUT /logging?%s: %d, want 400", q, st)
		}
	}
	if s := state(); s.Level != "warn" || s.Override != nil {
		t.Errorf("after refused PUTs /logging says %+v", s)
	}
	// Only the admin listener serves it.
	if st, _ := doReq(t, "PUT", app+"/logging?level=debug"); st != http.StatusNotFound {
		t.Errorf("PUT /logging on the sidecar listener: %d, want 404 (no route)", st)
	}
	if s := state(); s.Level != "warn" {
		t.Errorf("after a PUT on the sidecar listener /logging says %+v", s)
	}

	// Nothing was restarted; the lines that must not be are not.
	p.Stop(t, 60*time.Second)
	logs := p.Logs()
	if n := strings.Count(logs, "authproxy starting"); n != 1 {
		t.Errorf("the process started %d times", n)
	}
	for _, path := range absent {
		if accessLine(path).MatchString(logs) {
			t.Errorf("an access line for %s, which was not to be logged:\n%s", path, logs)
		}
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// A proxy with nothing that watches requests (no admin listener, no
// access log) turns its access log on at a reload, for the listeners the
// reload keeps, HTTP/1.1 and h2c alike.
func TestReloadTurnsTheAccessLogOnForKeptListeners(t *testing.T) {
	up := httptest.NewServer(&sim.Echo{})
	t.Cleanup(up.Close)
	upPort := up.URL[strings.LastIndex(up.URL, ":")+1:]
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	config := func(access bool) []byte {
		return []byte(fmt.Sprintf(`
log: {access: %v}
reload: {watch: false}
listeners:
  - {name: app, kind: sidecar, address: "127.0.0.1:0", upstream: "http://127.0.0.1:%s"}
injectors:
  tok: {kind: static, headers: {X-Key: {value: k}}}
routes:
  - {name: api, match: {path: /v1/*}, injector: tok, allow_plaintext: true}
`, access, upPort))
	}
	os.WriteFile(cfg, config(false), 0o644)
	p := proctest.Start(t, exec.Command(binary, "run", cfg))
	app := "http://" + p.Await(t, regexp.MustCompile(`listener=app kind=sidecar address=(\S+)`), 20*time.Second)[1]
	os.WriteFile(cfg, config(true), 0o644)
	syscall.Kill(p.Cmd.Process.Pid, syscall.SIGHUP)
	p.Await(t, regexp.MustCompile(`msg="reload applied"`), 20*time.Second)
	h2c := &http.Client{Transport: &http.Transport{Proxy: nil, Protocols: new(http.Protocols)}, Timeout: 30 * time.Second}
	h2c.Transport.(*http.Transport).Protocols.SetUnencryptedHTTP2(true)
	if st, _ := doReq(t, "GET", app+"/v1/after-h1"); st != 200 {
		t.Fatalf("GET: %d", st)
	}
	resp, err := h2c.Get(app + "/v1/after-h2")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("h2c GET: %v %v", resp, err)
	}
	resp.Body.Close()
	p.Await(t, regexp.MustCompile(`msg=request listener=app .*path=/v1/after-h1 `), 20*time.Second)
	p.Await(t, regexp.MustCompile(`msg=request listener=app .*path=/v1/after-h2 .*protocol=h2 `), 20*time.Second)
}
