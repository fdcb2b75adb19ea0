package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/syncbuf"
)

// There is no container engine here, so the image's promises are kept
// by hand: the binary is built with the Dockerfile's own build command,
// is static (no interpreter, no dynamic section), and runs as an
// unprivileged user (the image's nonroot, 65532, when the test runs as
// root) in a working directory it cannot write, where `health` reports
// it ready.
func TestBinaryAsTheImageBuildsAndRunsIt(t *testing.T) {
	df, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^RUN (CGO_ENABLED=0 go build .*) -o /out/authproxy \./cmd/authproxy$`).FindSubmatch(df)
	if m == nil {
		t.Fatal("the Dockerfile's build command was not found")
	}
	work, err := os.MkdirTemp("", "authproxy-image") // not t.TempDir: its parent is 0700, closed to another user
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(filepath.Join(work, "ro"), 0o755); _ = os.RemoveAll(work) })
	bin := filepath.Join(work, "authproxy")
	build := strings.ReplaceAll(string(m[1]), "${VERSION}", "image-test") + " -o " + bin + " ./cmd/authproxy"
	cmd := exec.Command("sh", "-c", build)
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", build, err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the binary is not static: it has a %v segment", p.Type)
		}
	}
	if f.Section(".dynamic") != nil || f.Section(".interp") != nil {
		t.Error("the binary has a dynamic section")
	}
	f.Close()
	if err := os.Chmod(work, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}

	// A read-only working directory with the config in it.
	ro := filepath.Join(work, "ro")
	if err := os.Mkdir(ro, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(ro, "config.yaml")
	if err := os.WriteFile(cfg, []byte(`
admin: {address: "127.0.0.1:0"}
listeners:
  - {name: app, kind: sidecar, address: "127.0.0.1:0", upstream: "https://api.example.com"}
injectors:
  tok: {kind: static, headers: {Authorization: {value: "Bearer x"}}}
routes:
  - {name: api, match: {path: /v1/*}, injector: tok}
`), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(ro, 0o555); err != nil {
		t.Fatal(err)
	}
	asUser := func(c *exec.Cmd) {
		c.Dir = ro
		c.Env = []string{"AUTHPROXY_CONFIG=" + cfg}
		if os.Geteuid() == 0 { // the image's nonroot user
			c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65532, Gid: 65532}}
		}
	}
	v := exec.Command(bin, "--version")
	asUser(v)
	if out, err := v.Output(); err != nil || string(out) != "authproxy image-test\n" {
		t.Fatalf("--version: %q %v", out, err)
	}
	run := exec.Command(bin, "run") // the config from $AUTHPROXY_CONFIG, as in the image
	asUser(run)
	var logs syncbuf.Buffer
	run.Stderr = &logs
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	defer run.Process.Kill()
	adminRE := regexp.MustCompile(`listener=admin address=(\S+)`)
	var admin string
	for deadline := time.Now().Add(20 * time.Second); admin == ""; time.Sleep(20 * time.Millisecond) {
		if m := adminRE.FindStringSubmatch(logs.String()); m != nil {
			admin = m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy did not start as an unprivileged user:\n%s", logs.String())
		}
	}
	h := exec.Command(bin, "health", "-addr", admin)
	asUser(h)
	if out, err := h.CombinedOutput(); err != nil || string(out) != "ready\n" {
		t.Errorf("health: %q %v", out, err)
	}
	if err := run.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- run.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit: %v\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no exit within 30 s of SIGTERM")
	}
	down := exec.Command(bin, "health", "-addr", admin)
	asUser(down)
	if err := down.Run(); err == nil {
		t.Error("health says ready with the proxy stopped")
	}
}
