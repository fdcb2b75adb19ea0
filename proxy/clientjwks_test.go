package proxy_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/authproxy/authproxy/sim"
)

// jwksServer serves a JWKS over TLS, as the API server's /openid/v1/jwks
// does: it counts fetches, checks the bearer token, and can be changed
// (keys rotated, a redirect, down).
type jwksServer struct {
	srv     *httptest.Server
	caFile  string   // its CA, for jwks_ca_file
	pki     *sim.PKI // which issued its certificate
	fetches atomic.Int64
	mu      sync.Mutex
	keys    jose.JSONWebKeySet
	answer  func(w http.ResponseWriter) bool // answers instead, when it returns true
	tokens  []string                         // the Authorization headers received
}

func newJWKSServer(t *testing.T, pki *sim.PKI, h http.Handler) *jwksServer {
	if pki == nil {
		var err error
		if pki, err = sim.NewPKI(t.TempDir()); err != nil {
			t.Fatal(err)
		}
	}
	tlsCfg, err := pki.ServerTLS("kubernetes.default.svc", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	s := &jwksServer{caFile: pki.CAFile, pki: pki}
	s.srv = httptest.NewUnstartedServer(h)
	s.srv.TLS = tlsCfg
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	if h != nil {
		return s
	}
	s.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/openid/v1/jwks" {
			http.NotFound(w, r)
			return
		}
		s.fetches.Add(1)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.tokens = append(s.tokens, r.Header.Get("Authorization"))
		if s.answer != nil && s.answer(w) {
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		json.NewEncoder(w).Encode(s.keys)
	})
	return s
}

func (s *jwksServer) set(f func(*jwksServer)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

// k8sToken signs claims shaped like a Kubernetes projected
// service-account token for the reports namespace.
func k8sToken(t *testing.T, alg jose.SignatureAlgorithm, key any, kid string) string {
	t.Helper()
	now := time.Now()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", kid).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(jwt.Claims{Issuer: "https://kubernetes.default.svc.cluster.local", Audience: jwt.Audience{"authproxy"},
		Subject: "system:serviceaccount:reports:app", Expiry: jwt.NewNumericDate(now.Add(time.Hour)),
		NotBefore: jwt.NewNumericDate(now.Add(-time.Minute)), IssuedAt: jwt.NewNumericDate(now.Add(-time.Minute)),
		ID: rand.Text()}).Serialize() // a new ID: never a token the proxy has verified before
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// JWT clients whose keys come from a jwks_url over verified TLS: the keys
// are fetched at start with the jwks_token_file's bearer token; a token
// with an unknown kid makes one fetch (a rotated key is then accepted),
// and another within the minute makes none (407); a JWKS endpoint that
// redirects is never followed; one that goes down leaves the keys already
// fetched in use. The token sent to the JWKS endpoint and the callers'
// tokens never appear in the log.
func TestJWTClientsFromJWKSURL(t *testing.T) {
	e := newEnv(t)
	echo := &sim.Echo{}
	up := e.httpsUpstream(echo)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rotated, _ := rsa.GenerateKey(rand.Reader, 2048)
	js := newJWKSServer(t, nil, nil)
	js.keys = jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &rsaKey.PublicKey, KeyID: "r1", Algorithm: "RS256", Use: "sig"},
		{Key: &ecKey.PublicKey, KeyID: "e1", Algorithm: "ES256", Use: "sig"},
	}}
	const saToken = "proxy-sa-token-Zm9vYmFy"
	tokenFile := filepath.Join(e.dir, "sa-token")
	os.WriteFile(tokenFile, []byte(saToken+"\n"), 0o600)
	config := func(url, caFile string) string {
		return fmt.Sprintf(`
clients:
  reports:
    jwt: {jwks_url: %q, jwks_ca_file: %q, jwks_token_file: %q,
          issuer: "https://kubernetes.default.svc.cluster.local", audience: authproxy, subject: "system:serviceaccount:reports:*"}
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.authproxy.test:%s"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1, kubernetes.default.svc: 127.0.0.1}}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: %q, prefix: "Bearer "}}}
routes:
  - {name: reports, match: {path: /reports/*}, injector: bearer, clients: [reports]}
`, url, caFile, tokenFile, port(t, up.URL), secretToken)
	}
	// The JWKS server's CA is its own: jwks_ca_file alone verifies it.
	cfg := config("https://kubernetes.default.svc:"+port(t, js.srv.URL)+"/openid/v1/jwks", js.caFile)
	p := e.start(cfg, nil, nil)
	waitFor(t, "the JWKS fetched at start", func() bool { return strings.Contains(p.logs.String(), "JWKS fetched") })

	allowed := int64(0)
	get := func(tok string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+p.addr("app")+"/reports/x", nil)
		req.Header.Set("Proxy-Authorization", "Bearer "+tok)
		resp, err := h1Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 {
			allowed++
		}
		return resp.StatusCode
	}
	if st := get(k8sToken(t, jose.RS256, rsaKey, "r1")); st != 200 {
		t.Fatalf("RS256: %d", st)
	}
	if st := get(k8sToken(t, jose.ES256, ecKey, "e1")); st != 200 {
		t.Fatalf("ES256: %d", st)
	}
	if n := js.fetches.Load(); n != 1 {
		t.Errorf("%d fetches for known kids, want the one at start", n)
	}
	// The key is rotated at the issuer: the first token with its kid
	// fetches the JWKS once, and is accepted.
	js.set(func(s *jwksServer) {
		s.keys.Keys = append(s.keys.Keys, jose.JSONWebKey{Key: &rotated.PublicKey, KeyID: "r2", Algorithm: "RS256", Use: "sig"})
	})
	if st := get(k8sToken(t, jose.RS256, rotated, "r2")); st != 200 {
		t.Errorf("the rotated key: %d", st)
	}
	if n := js.fetches.Load(); n != 2 {
		t.Errorf("%d fetches after an unknown kid, want 2", n)
	}
	// Another unknown kid within the minute: no fetch, 407.
	if st := get(k8sToken(t, jose.RS256, rotated, "r3")); st != http.StatusProxyAuthRequired {
		t.Errorf("an unknown kid: %d, want 407", st)
	}
	if n := js.fetches.Load(); n != 2 {
		t.Errorf("%d fetches after a second unknown kid within a minute, want still 2", n)
	}
	js.mu.Lock()
	for _, h := range js.tokens {
		if h != "Bearer "+saToken {
			t.Errorf("the JWKS endpoint got Authorization %q, want jwks_token_file's bearer token", h)
		}
	}
	js.mu.Unlock()
	if echo.Requests() != allowed {
		t.Errorf("the upstream served %d, want %d", echo.Requests(), allowed)
	}

	t.Run("down", func(t *testing.T) {
		// A second proxy, whose unknown-kid fetch finds the endpoint down:
		// the keys it has stay in use.
		p2 := e.start(cfg, nil, nil)
		waitFor(t, "the JWKS fetched at start", func() bool { return strings.Contains(p2.logs.String(), "JWKS fetched") })
		js.set(func(s *jwksServer) {
			s.answer = func(w http.ResponseWriter) bool {
				http.Error(w, "etcd unavailable", http.StatusServiceUnavailable)
				return true
			}
		})
		before := js.fetches.Load()
		req := func(tok string) int {
			r, _ := http.NewRequest("GET", "http://"+p2.addr("app")+"/reports/x", nil)
			r.Header.Set("Proxy-Authorization", "Bearer "+tok)
			resp, err := h1Client().Do(r)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		if st := req(k8sToken(t, jose.RS256, rsaKey, "r9")); st != http.StatusProxyAuthRequired {
			t.Errorf("an unknown kid: %d", st)
		}
		if js.fetches.Load() != before+1 || !strings.Contains(p2.logs.String(), "stay in use until") {
			t.Fatalf("%d fetches, want 1; log:\n%s", js.fetches.Load()-before, p2.logs.String())
		}
		if st := req(k8sToken(t, jose.RS256, rsaKey, "r1")); st != 200 {
			t.Errorf("a new token with a key fetched before the endpoint went down: %d, want 200", st)
		}
		js.set(func(s *jwksServer) { s.answer = nil })
	})

	t.Run("redirect", func(t *testing.T) {
		// The endpoint redirects to one that serves the right keys, with a
		// certificate of the same CA: the proxy never follows, and has no
		// keys.
		good := newJWKSServer(t, nil, nil)
		good.keys = js.keys
		redirect := newJWKSServer(t, good.pki, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, good.srv.URL+"/openid/v1/jwks", http.StatusFound)
		}))
		p3 := e.start(config("https://kubernetes.default.svc:"+port(t, redirect.srv.URL)+"/openid/v1/jwks", redirect.caFile), nil, nil)
		waitFor(t, "the first fetch", func() bool {
			return strings.Contains(p3.logs.String(), "never follows") || strings.Contains(p3.logs.String(), "JWKS fetched")
		})
		if !strings.Contains(p3.logs.String(), "never follows") {
			t.Errorf("the fetch did not stop at the redirect:\n%s", p3.logs.String())
		}
		r, _ := http.NewRequest("GET", "http://"+p3.addr("app")+"/reports/x", nil)
		r.Header.Set("Proxy-Authorization", "Bearer "+k8sToken(t, jose.RS256, rsaKey, "r1"))
		resp, err := h1Client().Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusProxyAuthRequired {
			t.Errorf("with no keys: %d, want 407", resp.StatusCode)
		}
		if n := good.fetches.Load(); n != 0 {
			t.Errorf("the redirect's target was fetched %d times", n)
		}
	})

	if l := p.logs.String(); strings.Contains(l, saToken) || strings.Contains(l, "eyJ") {
		t.Error("the log shows a token")
	}
}
