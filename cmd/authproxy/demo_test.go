package main

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/demo"
)

var demoSystems = []string{"openOBD", "ODIL", "OBH Mobility", "Obelisk", "VISS", "static"}

// The README's first command: the real binary, offline, with a proxy
// configured in the environment that must not be used, drives every system
// through the sidecar and forward listeners and exits 0; it leaves nothing
// behind in its temporary directory.
func TestDemoOnceDrivesEverySystem(t *testing.T) {
	tmp := t.TempDir()
	stdout, stderr, code := runBinary(t, []string{"TMPDIR=" + tmp, "HTTPS_PROXY=http://127.0.0.1:9", "HTTP_PROXY=http://127.0.0.1:9"}, "demo", "-once")
	if code != 0 {
		t.Fatalf("demo -once: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if stderr != "" {
		t.Errorf("the proxy logged at warn or above during the demo:\n%s", stderr)
	}
	if !regexp.MustCompile(`status page: http://127\.0\.0\.1:\d+/status`).MatchString(stdout) {
		t.Errorf("no status page URL:\n%s", stdout)
	}
	rows := demoRows(t, stdout)
	for name, row := range rows {
		if strings.Contains(row, "FAILED") || !regexp.MustCompile(` (200 HTTP/\S+|OK) `).MatchString(row) {
			t.Errorf("%s: %q, want a success", name, row)
		}
		if !regexp.MustCompile(`: (Bearer )?#[0-9a-f]{8}`).MatchString(row) {
			t.Errorf("%s: %q shows no fingerprint of what the upstream received", name, row)
		}
	}
	for _, want := range []string{"session token rotations 1", "sessions created 2 (1 expired upstream)", "tokens 3 (JWT-bearer, 3 mounts)", "AGT 1 (long-term, PoP), AT 1"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("the table lacks %q:\n%s", want, stdout)
		}
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("the demo left %d entries in its temporary directory", len(left))
	}
}

// demoRows returns the table's row for each system.
func demoRows(t *testing.T, out string) map[string]string {
	t.Helper()
	rows := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		for _, s := range demoSystems {
			if strings.HasPrefix(line, s+"  ") {
				rows[s] = line
			}
		}
	}
	if len(rows) != len(demoSystems) {
		t.Fatalf("table rows for %d of %d systems:\n%s", len(rows), len(demoSystems), out)
	}
	return rows
}

// A system that fails makes -once exit non-zero, naming it; and no secret
// given to the proxy, nor any credential an upstream received, is printed
// in any form.
func TestDemoOnceFailsOnAFailureAndNeverPrintsACredential(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	for _, broken := range []bool{false, true} {
		var world *demo.World
		demoStarted = func(w *demo.World) {
			world = w
			if broken { // a wrong API key: the echo upstream refuses it
				os.WriteFile(filepath.Join(filepath.Dir(w.ConfigPath), "echo-api-key"), []byte("wrong-key\n"), 0o600)
			}
		}
		var stdout, stderr bytes.Buffer
		code := run([]string{"demo", "-once"}, &stdout, &stderr)
		demoStarted = func(*demo.World) {}
		rows := demoRows(t, stdout.String())
		switch {
		case !broken && code != 0:
			t.Fatalf("demo -once: exit %d\n%s\n%s", code, stdout.String(), stderr.String())
		case broken && (code != 1 || !strings.Contains(rows["static"], "FAILED 401") ||
			!strings.Contains(stderr.String(), "static: 401 Unauthorized") || strings.Contains(rows["VISS"], "FAILED")):
			t.Errorf("with a wrong static key: exit %d, static row %q, stderr %q; want exit 1 naming only static",
				code, rows["static"], stderr.String())
		}
		out := stdout.String() + stderr.String()
		values := append(world.Secrets(), world.Seen()...)
		if len(values) < 10 {
			t.Fatalf("only %d secrets and credentials recorded", len(values))
		}
		for _, v := range values {
			_, bare, _ := strings.Cut(v, " ") // "Bearer x" -> x
			for _, form := range []string{v, bare, base64.StdEncoding.EncodeToString([]byte(v)), base64.RawURLEncoding.EncodeToString([]byte(v))} {
				if len(form) >= 8 && strings.Contains(out, form) {
					t.Errorf("the demo printed a credential (%d bytes)", len(form))
				}
			}
		}
	}
}
