package proxy_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/authproxy/authproxy/sim"
)

// JWT clients, with tokens shaped like Kubernetes projected
// service-account tokens (RS256 and ES256, keys from a JWKS file): valid
// ones are recognised, as Proxy-Authorization: Bearer and as the Basic
// password; expired, not yet valid, the wrong issuer, audience or
// subject, alg none, HS256 signed with the public key, an unknown kid and
// no exp are refused with 407, and nothing reaches the upstream.
func TestJWTClients(t *testing.T) {
	e := newEnv(t)
	echo := &sim.Echo{}
	up := e.httpsUpstream(echo)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwks := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &rsaKey.PublicKey, KeyID: "r1", Algorithm: "RS256", Use: "sig"},
		{Key: &ecKey.PublicKey, KeyID: "e1", Algorithm: "ES256", Use: "sig"},
	}}
	b, _ := json.Marshal(jwks)
	jwksFile := filepath.Join(e.dir, "cluster-jwks.json")
	os.WriteFile(jwksFile, b, 0o644)
	p := e.start(fmt.Sprintf(`
clients:
  reports:
    jwt: {jwks_file: %q, issuer: "https://kubernetes.default.svc.cluster.local", audience: authproxy, subject: "system:serviceaccount:reports:*"}
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.authproxy.test:%s"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1}}
injectors:
  bearer: {kind: static, headers: {Authorization: {value: %q, prefix: "Bearer "}}}
routes:
  - {name: reports, match: {path: /reports/*}, injector: bearer, clients: [reports]}
`, jwksFile, port(t, up.URL), secretToken), nil, nil)

	now := time.Now()
	claims := func(mod func(*jwt.Claims)) jwt.Claims {
		c := jwt.Claims{Issuer: "https://kubernetes.default.svc.cluster.local", Audience: jwt.Audience{"authproxy"},
			Subject: "system:serviceaccount:reports:app", Expiry: jwt.NewNumericDate(now.Add(time.Hour)),
			NotBefore: jwt.NewNumericDate(now.Add(-time.Minute)), IssuedAt: jwt.NewNumericDate(now.Add(-time.Minute))}
		if mod != nil {
			mod(&c)
		}
		return c
	}
	sign := func(alg jose.SignatureAlgorithm, key any, kid string, c jwt.Claims) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", kid).WithType("JWT"))
		if err != nil {
			t.Fatal(err)
		}
		tok, err := jwt.Signed(s).Claims(c).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	enc := base64.RawURLEncoding
	none := enc.EncodeToString([]byte(`{"alg":"none","kid":"r1"}`)) + "." + func() string { b, _ := json.Marshal(claims(nil)); return enc.EncodeToString(b) }() + "."
	pubPEM := func() []byte {
		der, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
		return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	}()
	cases := []struct {
		name, auth string
		want       int
	}{
		{"RS256, Bearer", "Bearer " + sign(jose.RS256, rsaKey, "r1", claims(nil)), 200},
		{"ES256, Bearer", "Bearer " + sign(jose.ES256, ecKey, "e1", claims(nil)), 200},
		{"RS256 as the Basic password", "Basic " + base64.StdEncoding.EncodeToString([]byte("x:"+sign(jose.RS256, rsaKey, "r1", claims(nil)))), 200},
		{"expired", "Bearer " + sign(jose.RS256, rsaKey, "r1", claims(func(c *jwt.Claims) { c.Expiry = jwt.NewNumericDate(now.Add(-5 * time.Minute)) })), 407},
		{"not yet valid", "Bearer " + sign(jose.RS256, rsaKey, "r1", claims(func(c *jwt.Claims) { c.NotBefore = jwt.NewNumericDate(now.Add(10 * time.Minute)) })), 407},
		{"no exp", "Bearer " + sign(jose.RS256, rsaKey, "r1", claims(func(c *jwt.Claims) { c.Expiry = nil })), 407},
		{"wrong issuer", "Bearer " + sign(jose.RS256, rsaKey, "r1", claims(func(c *jwt.Claims) { c.Issuer = "https://evil.example" })), 407},
		{"wrong audience", "Bearer " + sign(jose.RS256, rsaKey, "r1", claims(func(c *jwt.Claims) { c.Audience = jwt.Audience{"vault"} })), 407},
		{"wrong subject", "Bearer " + sign(jose.RS256, rsaKey, "r1", claims(func(c *jwt.Claims) { c.Subject = "system:serviceaccount:billing:app" })), 407},
		{"alg none", "Bearer " + none, 407},
		{"HS256 with the public key", "Bearer " + sign(jose.HS256, pubPEM, "r1", claims(nil)), 407},
		{"unknown kid", "Bearer " + sign(jose.RS256, rsaKey, "r9", claims(nil)), 407},
		{"another key, same kid", "Bearer " + func() string {
			k, _ := rsa.GenerateKey(rand.Reader, 2048)
			return sign(jose.RS256, k, "r1", claims(nil))
		}(), 407},
	}
	// (10 refusals from one address: one more would be throttled, 429.)
	allowed := int64(0)
	for _, c := range cases {
		req, _ := http.NewRequest("GET", "http://"+p.addr("app")+"/reports/x", nil)
		req.Header.Set("Proxy-Authorization", c.auth)
		resp, err := h1Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s: %d, want %d", c.name, resp.StatusCode, c.want)
		}
		if resp.StatusCode == 200 {
			allowed++
		}
	}
	if echo.Requests() != allowed {
		t.Errorf("the upstream served %d requests, want %d", echo.Requests(), allowed)
	}
	if strings.Contains(p.logs.String(), "eyJ") {
		t.Error("the log shows a token")
	}
}
