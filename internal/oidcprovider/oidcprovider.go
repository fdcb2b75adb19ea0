// Package oidcprovider runs node oidc-provider (panva/node-oidc-provider,
// pinned in package.json, installed by bash .ci/deps with npm ci) as an
// RFC 8705 authorization server on loopback, for the tests of mutual TLS
// at the token endpoint: server.mjs holds its configuration.
package oidcprovider

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/proctest"
)

// Config is what server.mjs reads.
type Config struct {
	CertFile     string           `json:"cert_file"`      // its TLS certificate (for 127.0.0.1)
	KeyFile      string           `json:"key_file"`       // and key
	ClientCAFile string           `json:"client_ca_file"` // the CA of tls_client_auth certificates
	Resource     string           `json:"resource"`       // the one resource server; its tokens are JWTs
	Clients      []map[string]any `json:"clients"`        // client metadata, as oidc-provider takes it
}

// Provider is a running server.
type Provider struct {
	Issuer   string // https://127.0.0.1:PORT
	TokenURL string
	JWKSURL  string
}

// Start runs the provider until the test ends.
func Start(t testing.TB, cfg Config) *Provider {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is needed (bash .ci/deps installs Debian's nodejs and npm as root)")
	}
	_, self, _, _ := runtime.Caller(0)
	dir := filepath.Dir(self)
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "oidc-provider", "package.json")); err != nil {
		t.Fatalf("oidc-provider is not installed in %s: run bash .ci/deps (npm ci there)", dir)
	}
	b, _ := json.Marshal(cfg)
	file := filepath.Join(t.TempDir(), "oidc-provider.json")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, filepath.Join(dir, "server.mjs"), file)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "NODE_ENV=production")
	p := proctest.Start(t, cmd)
	port := p.Await(t, regexp.MustCompile(`listening (\d+)`), 60*time.Second)[1]
	issuer := "https://127.0.0.1:" + port
	return &Provider{Issuer: issuer, TokenURL: issuer + "/token", JWKSURL: issuer + "/jwks"}
}
