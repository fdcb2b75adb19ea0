package main

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/proctest"
	"github.com/authproxy/authproxy/sim"
)

// A client's password in a file is watched like an injector's secrets:
// when it changes, the proxy reloads, the old password is refused (407)
// and the new one accepted, with no restart and no SIGHUP.
func TestClientPasswordFileIsWatched(t *testing.T) {
	up := httptest.NewServer(&sim.Echo{})
	t.Cleanup(up.Close)
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "billing-password")
	os.WriteFile(pwFile, []byte("first-pw"), 0o600)
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
clients:
  billing: {basic: {username: billing, password: {file: %q}}}
listeners:
  - {name: app, kind: sidecar, address: "127.0.0.1:0", upstream: "http://127.0.0.1:%s"}
injectors:
  tok: {kind: static, headers: {X-Key: {value: k}}}
routes:
  - {name: api, match: {path: /v1/*}, injector: tok, allow_plaintext: true, clients: [billing]}
`, pwFile, up.URL[strings.LastIndex(up.URL, ":")+1:])), 0o644)
	p := proctest.Start(t, exec.Command(binary, "run", cfg))
	app := "http://" + p.Await(t, regexp.MustCompile(`listener=app kind=sidecar address=(\S+)`), 20*time.Second)[1]
	as := func(pw string) int {
		req, _ := http.NewRequest("GET", app+"/v1/x", nil)
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("billing:"+pw)))
		resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 30 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := as("first-pw"); st != 200 {
		t.Fatalf("with the password: %d", st)
	}
	os.WriteFile(pwFile, []byte("second-pw"), 0o600)
	p.Await(t, regexp.MustCompile(`msg="reload applied" trigger="a watched file changed"`), 20*time.Second)
	if st := as("first-pw"); st != http.StatusProxyAuthRequired {
		t.Errorf("the old password after the change: %d, want 407", st)
	}
	if st := as("second-pw"); st != 200 {
		t.Errorf("the new password: %d, want 200", st)
	}
	if strings.Contains(p.Logs(), "first-pw") || strings.Contains(p.Logs(), "second-pw") {
		t.Error("the log shows a password")
	}
}
