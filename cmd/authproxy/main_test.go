package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/syncbuf"
	"github.com/authproxy/authproxy/sim"
)

// binary is the real authproxy binary, built once for these tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "authproxy-bin")
	if err != nil {
		panic(err)
	}
	os.Chmod(dir, 0o755) // tests run it as another user too
	binary = filepath.Join(dir, "authproxy")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building authproxy: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func runBinary(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func TestVersionAndUsage(t *testing.T) {
	out, _, code := runBinary(t, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "authproxy ") {
		t.Errorf("version: %d %q", code, out)
	}
	_, errOut, code := runBinary(t, nil, "frobnicate")
	if code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: %d %q", code, errOut)
	}
	_, errOut, code = runBinary(t, nil, "run")
	if code != 2 || !strings.Contains(errOut, "-config FILE") {
		t.Errorf("run without -config: %d %q", code, errOut)
	}
}

func TestCheck(t *testing.T) {
	out, errOut, code := runBinary(t, []string{"EXAMPLE_API_TOKEN=x"}, "check", "-config", "../../config.example.yaml")
	if code != 0 || !strings.Contains(out, "OK (2 listeners, 1 routes, 1 injectors)") {
		t.Errorf("check on the example: %d %q %q", code, out, errOut)
	}
	_, errOut, code = runBinary(t, nil, "check", "-config", "../../config/testdata/bad/secrets.yaml")
	if code != 1 || !strings.Contains(errOut, "problem(s):") ||
		!strings.Contains(errOut, "injectors.tok.headers.X-Missing: environment variable AUTHPROXY_TEST_MISSING is not set") {
		t.Errorf("check on a bad file: %d %q", code, errOut)
	}
	_, errOut, code = runBinary(t, nil, "check", "-config", "/nonexistent.yaml")
	if code != 1 || !strings.Contains(errOut, "no such file") {
		t.Errorf("check on a missing file: %d %q", code, errOut)
	}
}

func TestCAInitAndExport(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("ca: {cert_file: %q, key_file: %q}\nlisteners: []\n", cert, key)), 0o644)
	if _, errOut, code := runBinary(t, nil, "ca", "init", "-config", cfg); code != 0 {
		t.Fatalf("ca init: %d %s", code, errOut)
	}
	st, err := os.Stat(key)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	if _, errOut, code := runBinary(t, nil, "ca", "init", "-config", cfg); code != 1 || !strings.Contains(errOut, "already exists") {
		t.Errorf("second ca init: %d %q", code, errOut)
	}
	out, _, code := runBinary(t, nil, "ca", "export", "-cert", cert, "-key", key)
	want, _ := os.ReadFile(cert)
	if code != 0 || out != string(want) {
		t.Errorf("ca export: %d, output differs from %s", code, cert)
	}
}

// trap counts connections; proxy environment variables point at it.
func trap(t *testing.T) (string, *atomic.Int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	return "http://" + ln.Addr().String(), &n
}

func TestRunServesIgnoresProxyEnvAndStopsOnSIGTERM(t *testing.T) {
	const token = "run-test-secret-9f8e"
	dir := t.TempDir()
	pki, err := sim.NewPKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, _ := pki.ServerTLS("api.authproxy.test")
	up := httptest.NewUnstartedServer(&sim.Echo{RequireHeader: "Authorization", RequireValue: "Bearer " + token})
	up.TLS, up.EnableHTTP2 = tlsCfg, true
	up.StartTLS()
	defer up.Close()
	_, upPort, _ := net.SplitHostPort(up.Listener.Addr().String())

	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
admin: {address: "127.0.0.1:0"}
listeners:
  - {name: app, kind: sidecar, address: "127.0.0.1:0", upstream: "https://api.authproxy.test:%s"}
  - {name: fwd, kind: forward, address: "127.0.0.1:0"}
ca: {cert_file: %q, key_file: %q, generate: true}
upstream: {ca_file: %q, resolve: {api.authproxy.test: 127.0.0.1}}
injectors:
  tok: {kind: static, headers: {Authorization: {env: RUN_TOKEN, prefix: "Bearer "}}}
routes:
  - {name: api, listeners: [app], match: {path: /v1/*}, injector: tok}
`, upPort, filepath.Join(dir, "gen", "ca.crt"), filepath.Join(dir, "gen", "ca.key"), pki.CAFile)), 0o644)

	trapURL, trapped := trap(t)
	cmd := exec.Command(binary, "run", "-config", cfg)
	cmd.Env = []string{"RUN_TOKEN=" + token, "HTTPS_PROXY=" + trapURL, "HTTP_PROXY=" + trapURL,
		"https_proxy=" + trapURL, "http_proxy=" + trapURL, "ALL_PROXY=" + trapURL}
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var logs syncbuf.Buffer
	addrRE := regexp.MustCompile(`listener=app kind=sidecar address=(\S+)`)
	adminRE := regexp.MustCompile(`listener=admin address=(\S+)`)
	sc := bufio.NewScanner(stderr)
	var appAddr, adminAddr string
	deadline := time.Now().Add(20 * time.Second)
	for (appAddr == "" || adminAddr == "") && time.Now().Before(deadline) && sc.Scan() {
		logs.WriteString(sc.Text() + "\n")
		if m := addrRE.FindStringSubmatch(sc.Text()); m != nil {
			appAddr = m[1]
		}
		if m := adminRE.FindStringSubmatch(sc.Text()); m != nil {
			adminAddr = m[1]
		}
	}
	if appAddr == "" || adminAddr == "" {
		t.Fatalf("the proxy did not report its sidecar address:\n%s", logs.String())
	}
	rest := make(chan struct{})
	go func() { _, _ = io.Copy(&logs, stderr); close(rest) }()

	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}}).Get("http://" + appAddr + "/v1/hello")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("through the binary: %d %s", resp.StatusCode, body)
	}
	if n := trapped.Load(); n != 0 {
		t.Errorf("the proxy sent %d connections to the proxy named in its environment", n)
	}
	if _, err := os.Stat(filepath.Join(dir, "gen", "ca.key")); err != nil {
		t.Errorf("ca.generate did not create the CA: %v", err)
	}
	// The admin listener: ready, and metrics that counted the request.
	resp, err = (&http.Client{Transport: &http.Transport{Proxy: nil}}).Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `authproxy_requests_total{client="anyone",listener="app",protocol="http1",route="api",status_class="2xx"} 1`; !strings.Contains(string(body), want) ||
		!strings.Contains(string(body), "authproxy_build_info{") {
		t.Errorf("/metrics lacks %s or the build info:\n%.3000s", want, body)
	}

	// SIGHUP reloads the configuration (nothing changed: every injector
	// is kept), and the proxy goes on serving.
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), `msg="reload applied" trigger=SIGHUP`); {
		if time.Now().After(deadline) {
			t.Fatalf("no reload on SIGHUP:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "injectors_kept=tok injectors_new=\"\"") {
		t.Errorf("an unchanged injector was not kept across the reload:\n%s", logs.String())
	}
	resp, err = (&http.Client{Transport: &http.Transport{Proxy: nil}}).Get("http://" + appAddr + "/v1/hello")
	if err != nil {
		t.Fatalf("after the reload: %v\n%s", err, logs.String())
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("after SIGHUP: %d", resp.StatusCode)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { <-rest; waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit within 30s of SIGTERM\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "stopped") {
		t.Errorf("no clean stop in the log:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), token) {
		t.Errorf("the secret appears in the log:\n%s", logs.String())
	}
}

// check names what is wrong with a config without showing a secret in it,
// even where the secret is itself what is wrong.
func TestCheckNeverShowsASecret(t *testing.T) {
	const secret = `Ch3ckS3cret/+&="<>%? never-printed`
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: "127.0.0.1:0", upstream: "https://api.example.com"}
injectors:
  plain-url: {kind: oauth2, token_url: "http://auth.example.com/token", client_id: {value: app}, client_secret: {value: %[1]q}}
  odil: {kind: odil, base_url: "https://odil.example.com", username: {value: u}, password: {value: %[1]q}, sas: {format: servicebus-b64key, key: {value: %[1]q}}}
  static: {kind: static, headers: {"Bad Header": {value: %[1]q}, X-Ok: {value: %[1]q, prefix: "a\nb"}}}
  viss: {kind: viss, agts_url: "https://agts.example.com", vin: VIN, context: "Nobody+OEM+Cloud", proof: {value: %[1]q}}
  obd: {kind: openobd, endpoint: "grpc.openobd.com", client_id: {value: %[1]q}, client_secret: {value: %[1]q}}
routes:
  - {name: r, match: {path: /x/*}, injector: plain-url}
`, secret)), 0o644)
	_, errOut, code := runBinary(t, nil, "check", "-config", cfg)
	if code != 1 || !strings.Contains(errOut, "problem(s)") {
		t.Fatalf("check: %d %q", code, errOut)
	}
	for i := 0; i+8 <= len(secret); i++ {
		if piece := secret[i : i+8]; strings.Contains(errOut, piece) {
			t.Fatalf("check shows %q of a secret:\n%s", piece, errOut)
		}
	}
}

// Every command takes -h and exits 0; --version prints the version; -config
// defaults to $AUTHPROXY_CONFIG.
func TestHelpVersionAndConfigFromTheEnvironment(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"help"}, {"--version"}, {"version"}, {"run", "-h"}, {"check", "-h"},
		{"ca", "-h"}, {"ca", "init", "-h"}, {"ca", "export", "-h"}, {"health", "-h"}, {"demo", "-h"}} {
		cmd := exec.Command(binary, args...)
		out, err := cmd.CombinedOutput()
		if err != nil || len(out) == 0 {
			t.Errorf("authproxy %v: %v, output %q", args, err, out)
		}
	}
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(cfg, []byte(`
listeners:
  - {name: app, kind: sidecar, address: "127.0.0.1:0", upstream: "https://api.example.com"}
injectors:
  tok: {kind: static, headers: {Authorization: {value: x}}}
routes:
  - {name: api, match: {path: /v1/*}, injector: tok}
`), 0o600)
	cmd := exec.Command(binary, "check")
	cmd.Env = []string{"AUTHPROXY_CONFIG=" + cfg}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("check with $AUTHPROXY_CONFIG: %v\n%s", err, out)
	}
	if err := exec.Command(binary, "check").Run(); err == nil {
		t.Error("check without a config succeeded")
	}
	if err := exec.Command(binary, "health", "-addr", "127.0.0.1:1").Run(); err == nil {
		t.Error("health with nothing listening succeeded")
	}
}

// check -skip-secrets lints a config in CI: the examples, whose secrets
// come from variables and files that do not exist here, fail a plain check
// and pass this one, which also creates no CA file; what is wrong with the
// shape of a config, secret sources included, is still reported by path.
func TestCheckSkipSecrets(t *testing.T) {
	configs, _ := filepath.Glob("../../examples/*.yaml")
	configs = append(configs, "../../config.example.yaml")
	if len(configs) < 6 {
		t.Fatalf("found only %v", configs)
	}
	for _, cfg := range configs {
		data, err := os.ReadFile(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if external := bytes.Contains(data, []byte("{env:")) || bytes.Contains(data, []byte("{file:")); external {
			if _, errOut, code := runBinary(t, nil, "check", "-config", cfg); code != 1 {
				t.Errorf("%s: a plain check without the secrets: %d %q", cfg, code, errOut)
			}
		}
		out, errOut, code := runBinary(t, nil, "check", "-skip-secrets", "-config", cfg)
		if code != 0 || !strings.Contains(out, "OK") || !strings.Contains(out, "-skip-secrets") {
			t.Errorf("%s: check -skip-secrets: %d %q %q", cfg, code, out, errOut)
		}
	}

	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(`
listeners:
  - {name: fwd, kind: forward, address: "127.0.0.1:0"}
ca: {cert_file: ca/ca.crt, key_file: ca/ca.key}
injectors:
  api: {kind: static, headers: {Authorization: {env: API_TOKEN, file: token.txt}}}
  obh: {kind: oauth2, preset: obh, token_url: "https://zitadel.example.com/oauth/v2/token", key_file: {file: k.json}, scopes: [openid], colour: blue}
routes:
  - {name: api, match: {host: api.example.com}, injector: api}
`), 0o644)
	_, errOut, code := runBinary(t, nil, "check", "-skip-secrets", "-config", bad)
	for _, want := range []string{
		"injectors.api.headers.Authorization: a secret needs exactly one of value, env, file (got env and file)",
		"injectors.obh.colour",
	} {
		if code != 1 || !strings.Contains(errOut, want) {
			t.Errorf("check -skip-secrets on a bad config: %d, want %q in\n%s", code, want, errOut)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "ca")); err == nil {
		t.Error("check -skip-secrets created the CA directory")
	}
}

// The config file as an argument, flags before or after it; a misspelt
// command or top-level key gets a suggestion.
func TestCheckTakesTheFileAsAnArgument(t *testing.T) {
	env := []string{"EXAMPLE_API_TOKEN=x"}
	for _, args := range [][]string{
		{"check", "../../config.example.yaml"},
		{"check", "-skip-secrets", "../../config.example.yaml"},
		{"check", "../../config.example.yaml", "-skip-secrets"},
		{"check", "-config", "../../config.example.yaml", "../../config.example.yaml"},
	} {
		if out, errOut, code := runBinary(t, env, args...); code != 0 || !strings.Contains(out, "config.example.yaml: OK") {
			t.Errorf("%v: exit %d %q %q", args, code, out, errOut)
		}
	}
	for _, args := range [][]string{
		{"check", "a.yaml", "b.yaml"},
		{"check", "-config", "a.yaml", "b.yaml"},
	} {
		if _, errOut, code := runBinary(t, env, args...); code != 2 || !strings.Contains(errOut, "give one file") {
			t.Errorf("%v: exit %d %q, want a usage error", args, code, errOut)
		}
	}
	if _, errOut, code := runBinary(t, nil, "chekc", "x.yaml"); code != 2 || !strings.Contains(errOut, `unknown command "chekc": did you mean check?`) {
		t.Errorf("a misspelt command: exit %d %q", code, errOut)
	}
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(cfg, []byte("listners: []\n"), 0o644)
	if _, errOut, code := runBinary(t, nil, "check", cfg); code != 1 || !strings.Contains(errOut, "listners: unknown key: did you mean listeners?") {
		t.Errorf("a misspelt key: exit %d %q", code, errOut)
	}
}

// The version reported: -ldflags first, then what go install recorded.
func TestVersionOfABuild(t *testing.T) {
	installed := &debug.BuildInfo{Main: debug.Module{Path: "github.com/authproxy/authproxy", Version: "v1.4.2"}}
	devel := &debug.BuildInfo{Main: debug.Module{Path: "github.com/authproxy/authproxy", Version: "(devel)"}}
	for _, c := range []struct {
		linked string
		bi     *debug.BuildInfo
		ok     bool
		want   string
	}{
		{"v9.9.9", installed, true, "v9.9.9"},
		{"", installed, true, "v1.4.2"},
		{"", devel, true, "dev"},
		{"", nil, false, "dev"},
	} {
		if got := versionOf(c.linked, c.bi, c.ok); got != c.want {
			t.Errorf("versionOf(%q, %v) = %q, want %q", c.linked, c.bi, got, c.want)
		}
	}
	// The binary of these tests, built in a checkout, says what its build
	// info says.
	out, err := exec.Command("go", "version", "-m", binary).Output()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\tmod\tgithub.com/authproxy/authproxy\t(\S+)`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("go version -m: %s", out)
	}
	want := m[1]
	if want == "(devel)" {
		want = "dev"
	}
	if got, _, _ := runBinary(t, nil, "version"); got != "authproxy "+want+"\n" {
		t.Errorf("authproxy version says %q, its build info %q", got, m[1])
	}
}
