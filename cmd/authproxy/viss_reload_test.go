package main

import (
	"fmt"
	"io"
	"net/http"
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

// The VISS long-term key the proxy generates on first use is its own
// state: the file watcher (on, as by default) does not reload for it, so a
// first start against the reference flow costs one AGT request and one ATS
// exchange, and a later request reuses them.
func TestGeneratedVISSKeyDoesNotReload(t *testing.T) {
	dir := t.TempDir()
	pki, serve := testTLS(t, dir, "viss.authproxy.test")
	viss := sim.NewVISS()
	t.Cleanup(viss.Close)
	agts, ats, data := serve(viss.AGTS()), serve(viss.ATS()), serve(viss.Data())
	keyFile := filepath.Join(dir, "keys", "viss-key.pem")
	if err := os.MkdirAll(filepath.Dir(keyFile), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: "127.0.0.1:0", host: viss.authproxy.test, upstream: "https://viss.authproxy.test:%[3]s"}
upstream: {ca_file: %[5]q, resolve: {viss.authproxy.test: 127.0.0.1}}
injectors:
  fleet:
    kind: viss
    agts_url: "https://viss.authproxy.test:%[1]s/agts"
    ats_url: "https://viss.authproxy.test:%[2]s/ats"
    vin: "{header:X-Vin}"
    context: Independent+OEM+Cloud
    proof: {value: ABC}
    purpose: pay-how-you-drive
    long_term: {key_file: %[4]q}
routes:
  - {name: vehicle, match: {path: "/Vehicle/*"}, injector: fleet}
`, agts, ats, data, keyFile, pki.CAFile)), 0o600)

	cmd := exec.Command(binary, "run", "-config", cfg)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	proc := proctest.Start(t, cmd)
	app := proc.Await(t, regexp.MustCompile(`listener=app kind=sidecar address=(\S+)`), 60*time.Second)[1]
	// The watcher is known to run once it has reloaded for a change of
	// the config file itself (written again as it was, until it is seen:
	// the watcher starts beside the listeners).
	text, _ := os.ReadFile(cfg)
	for deadline := time.Now().Add(60 * time.Second); !strings.Contains(proc.Logs(), "reload applied"); {
		if time.Now().After(deadline) {
			t.Fatalf("the watcher never reloaded for the config file:\n%s", proc.Logs())
		}
		os.WriteFile(cfg, text, 0o600)
		for wait := time.Now().Add(2 * time.Second); time.Now().Before(wait) && !strings.Contains(proc.Logs(), "reload applied"); {
			time.Sleep(20 * time.Millisecond)
		}
	}
	mark := len(proc.Logs())
	read := func() {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+app+"/Vehicle/Speed", nil)
		req.Header.Set("X-Vin", "VIN0001")
		resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 60 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), `"value":"42"`) {
			t.Fatalf("read: %d %s", resp.StatusCode, b)
		}
	}
	read()
	if _, err := os.Stat(keyFile); err != nil {
		t.Fatalf("the long-term key was not generated: %v", err)
	}
	// The watcher settles for 300 ms before it reloads: wait well past it.
	time.Sleep(3 * time.Second)
	read()
	if a, x := viss.AGTRequests(), viss.ATSRequests(); a != 1 || x != 1 {
		t.Errorf("first start: %d AGT requests and %d ATS exchanges, want 1 and 1", a, x)
	}
	if strings.Contains(proc.Logs()[mark:], "reload") {
		t.Errorf("the generated key caused a reload:\n%s", proc.Logs())
	}
}
