// Package prometheus_test checks the alert rules shipped for authproxy with
// Prometheus' own promtool (Debian's prometheus package; bash .ci/deps
// installs it as root).
package prometheus_test

import (
	"bytes"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/metrics"
)

func promtool(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is needed (Debian's prometheus package; bash .ci/deps installs it as root)")
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The rules load, and their unit tests (each alert fires where it should
// and nowhere else) pass in promtool's rule engine.
func TestAlertRulesWorkInPrometheus(t *testing.T) {
	promtool(t, nil, "check", "rules", "authproxy-rules.yml")
	out := promtool(t, nil, "test", "rules", "authproxy-rules_test.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool test rules: %s", out)
	}
}

// docs/operations.md shows the rules file as it is.
func TestAlertRulesAreTheDocs(t *testing.T) {
	rules, err := os.ReadFile("authproxy-rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	body := regexp.MustCompile(`(?m)^#.*\n`).ReplaceAll(rules, nil) // its header comment
	if !bytes.Contains(doc, append(append([]byte("```yml\n"), body...), "```"...)) {
		t.Errorf("docs/operations.md does not show deploy/prometheus/authproxy-rules.yml as it is")
	}
}

// Every metric the rules name is one the proxy exports, and what it
// exports passes promtool's lint.
func TestAlertRulesNameExportedMetrics(t *testing.T) {
	m := metrics.New("test")
	m.CAExpiry(time.Now().Add(time.Hour))
	m.Connect("fwd", "intercepted")
	m.Connect("fwd", "handshake_failed")
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	exported := rec.Body.String()
	promtool(t, rec.Body.Bytes(), "check", "metrics")
	rules, _ := os.ReadFile("authproxy-rules.yml")
	names := regexp.MustCompile(`\bauthproxy_[a-z_]+`).FindAllString(string(rules), -1)
	if len(names) == 0 {
		t.Fatal("the rules name no authproxy metric")
	}
	for _, name := range names {
		if !strings.Contains(exported, "\n"+name+"{") && !strings.Contains(exported, "\n"+name+" ") {
			t.Errorf("the rules use %s, which the proxy does not export", name)
		}
	}
}
