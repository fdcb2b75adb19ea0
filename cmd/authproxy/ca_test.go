package main

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/authproxy/authproxy/ca"
	"github.com/authproxy/authproxy/internal/proctest"
)

// writeCA writes a CA valid from now-age for validity, and a config with
// a forward listener and an admin listener that uses it.
func writeCA(t *testing.T, age, validity time.Duration) (cfg, certFile, keyFile string, notAfter time.Time) {
	t.Helper()
	dir := t.TempDir()
	certPEM, keyPEM, err := ca.NewCAPEM("test CA", time.Now().Add(-age), validity)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	os.WriteFile(certFile, certPEM, 0o644)
	os.WriteFile(keyFile, keyPEM, 0o600)
	cfg = filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
admin: {address: "127.0.0.1:0"}
listeners:
  - {name: fwd, kind: forward, address: "127.0.0.1:0"}
ca: {cert_file: %q, key_file: %q}
injectors:
  tok: {kind: static, headers: {X-Key: {value: k}}}
routes:
  - {name: api, match: {host: api.example.test}, injector: tok}
`, certFile, keyFile)), 0o644)
	return cfg, certFile, keyFile, time.Now().Add(-age).Add(validity)
}

// An expired interception CA would make every intercepted client fail:
// check and run refuse it, naming ca.cert_file and the date.
func TestExpiredCAIsRefused(t *testing.T) {
	cfg, _, _, notAfter := writeCA(t, 400*24*time.Hour, 365*24*time.Hour)
	day := notAfter.UTC().Format(time.DateOnly)
	for _, cmd := range []string{"check", "run"} {
		_, errOut, code := runBinary(t, nil, cmd, "-config", cfg)
		if code != 1 || !strings.Contains(errOut, "ca.cert_file: ") || !strings.Contains(errOut, "expired on "+day+" (35 days ago)") {
			t.Errorf("%s with an expired CA: exit %d, %q", cmd, code, errOut)
		}
	}
}

// A CA that expires within 30 days is warned about by check (which still
// passes) and at start, and its expiry is a metric to alert on.
func TestCAExpiringSoonIsWarnedAndMeasured(t *testing.T) {
	cfg, _, _, notAfter := writeCA(t, 0, 20*24*time.Hour)
	out, errOut, code := runBinary(t, nil, "check", "-config", cfg)
	if code != 0 || !strings.Contains(out, "OK") {
		t.Fatalf("check with a CA valid 20 more days: exit %d %q %q", code, out, errOut)
	}
	want := "warning: ca.cert_file: the interception CA expires on " + notAfter.UTC().Format(time.DateOnly) + " (in 20 days)"
	if !strings.Contains(errOut, want) {
		t.Errorf("check says %q, want %q", errOut, want)
	}
	p := proctest.Start(t, exec.Command(binary, "run", "-config", cfg))
	m := p.Await(t, regexp.MustCompile(`level=WARN msg="ca.cert_file: the interception CA expires on (\S+)`), 20*time.Second)
	if m[1] != notAfter.UTC().Format(time.DateOnly) {
		t.Errorf("run warns of %s, want %s", m[1], notAfter.UTC().Format(time.DateOnly))
	}
	admin := p.Await(t, regexp.MustCompile(`listener=admin address=(\S+)`), 20*time.Second)[1]
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	g := regexp.MustCompile(`(?m)^authproxy_ca_expiry_timestamp_seconds (\S+)$`).FindStringSubmatch(string(body))
	if g == nil {
		t.Fatal("/metrics has no authproxy_ca_expiry_timestamp_seconds")
	}
	if v, _ := strconv.ParseFloat(g[1], 64); int64(v) != notAfter.Unix() {
		t.Errorf("authproxy_ca_expiry_timestamp_seconds %s, want %d", g[1], notAfter.Unix())
	}
}

// The CA's files given wrongly: each error names the YAML key of the file
// at fault and never quotes its contents.
func TestCAFileErrorsNameTheKey(t *testing.T) {
	cfg, certFile, keyFile, _ := writeCA(t, 0, 365*24*time.Hour)
	certPEM, _ := os.ReadFile(certFile)
	keyPEM, _ := os.ReadFile(keyFile)
	other, _, _ := ca.NewCAPEM("other", time.Now(), time.Hour)
	cases := []struct {
		name       string
		cert, key  []byte
		keyMode    os.FileMode
		key_, want string
	}{
		{"swapped", keyPEM, certPEM, 0o600, "ca.cert_file", "holds no PEM CERTIFICATE block (found [PRIVATE KEY]: is it the key?)"},
		{"key file holds the certificate", certPEM, certPEM, 0o600, "ca.key_file", "holds no PEM private key block (found [CERTIFICATE]: are cert_file and key_file swapped?)"},
		{"key of another CA", other, keyPEM, 0o600, "ca.key_file", "the key does not belong to the certificate in cert_file"},
		{"empty certificate", nil, keyPEM, 0o600, "ca.cert_file", "holds no PEM CERTIFICATE block"},
		{"key readable by all", certPEM, keyPEM, 0o644, "ca.key_file", "can be read or written by other users (mode 0644)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			os.WriteFile(certFile, c.cert, 0o644)
			os.Remove(keyFile)
			os.WriteFile(keyFile, c.key, c.keyMode)
			_, errOut, code := runBinary(t, nil, "check", "-config", cfg)
			if code != 1 || !strings.Contains(errOut, c.key_+": ") || !strings.Contains(errOut, c.want) {
				t.Errorf("exit %d, %q; want %s: … %s", code, errOut, c.key_, c.want)
			}
			for _, data := range [][]byte{c.cert, c.key} {
				if len(data) > 80 {
					body := strings.Split(string(data), "\n")[1] // the first line of base64
					if strings.Contains(errOut, body[:20]) {
						t.Errorf("the error quotes a file's contents: %q", errOut)
					}
					if raw, err := base64.StdEncoding.DecodeString(body); err == nil && strings.Contains(errOut, string(raw[:8])) {
						t.Errorf("the error quotes a file's bytes: %q", errOut)
					}
				}
			}
		})
	}
}

// ca.generate into a place the proxy cannot write fails in check, as it
// would in run, naming the key and the directory.
func TestCAGenerateIntoAnUnwritablePlaceFailsInCheck(t *testing.T) {
	dir := t.TempDir()
	locked := filepath.Join(dir, "locked")
	os.Mkdir(locked, 0o555)
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
listeners:
  - {name: fwd, kind: forward, address: "127.0.0.1:0"}
ca: {cert_file: %q, key_file: %q, generate: true}
injectors:
  tok: {kind: static, headers: {X-Key: {value: k}}}
routes:
  - {name: api, match: {host: api.example.test}, injector: tok}
`, filepath.Join(locked, "sub", "ca.crt"), filepath.Join(locked, "sub", "ca.key"))), 0o644)
	cmd := exec.Command(binary, "check", cfg)
	if os.Geteuid() == 0 { // root writes anywhere: check as nobody
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		os.Chmod(dir, 0o755)
		os.Chmod(filepath.Dir(dir), 0o755)
		os.Chmod(cfg, 0o644)
	}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "ca.cert_file: ca.generate cannot create "+filepath.Join(locked, "sub", "ca.crt")) ||
		!strings.Contains(string(out), "cannot create files in "+locked) || !strings.Contains(string(out), "ca.key_file: ") {
		t.Errorf("check: %v\n%s", err, out)
	}
	// Writable: check passes and creates nothing.
	os.Chmod(locked, 0o777)
	if out, err := exec.Command(binary, "check", cfg).CombinedOutput(); err != nil || !strings.Contains(string(out), "will be created by run") {
		t.Errorf("check with a writable directory: %v\n%s", err, out)
	}
	if entries, _ := os.ReadDir(locked); len(entries) != 0 {
		t.Errorf("check left %d entries in the CA's directory", len(entries))
	}
}
