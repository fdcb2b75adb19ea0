package proxy_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/authproxy/authproxy/internal/oidcprovider"
	"github.com/authproxy/authproxy/sim"
)

// selfSignedClientCert writes a self-signed client certificate and its key
// (mode 0600) into dir, and returns the files and the certificate.
func selfSignedClientCert(t *testing.T, dir, cn string) (string, string, *x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	certFile, keyFile := filepath.Join(dir, cn+".crt"), filepath.Join(dir, cn+".key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	return certFile, keyFile, leaf, key
}

func x5tS256(der []byte) string {
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// boundTokenUpstream is a resource server that takes only access tokens of
// the provider (verified against its JWKS) that are bound to the client
// certificate of the connection they came on (RFC 8705 §3: cnf.x5t#S256).
type boundTokenUpstream struct {
	srv    *httptest.Server
	mu     sync.Mutex
	tokens []string // the tokens it accepted
}

func newBoundTokenUpstream(t *testing.T, e *env, jwksURL string) *boundTokenUpstream {
	u := &boundTokenUpstream{}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.pki.Pool}}, Timeout: 20 * time.Second}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		claims, err := verifyJWT(client, jwksURL, tok)
		if err != nil {
			http.Error(w, "token refused: "+err.Error(), http.StatusUnauthorized)
			return
		}
		cnf, _ := claims["cnf"].(map[string]any)
		if got, want := cnf["x5t#S256"], x5tS256(r.TLS.PeerCertificates[0].Raw); got != want {
			http.Error(w, fmt.Sprintf("token bound to %v, the connection presents %s", got, want), http.StatusUnauthorized)
			return
		}
		u.mu.Lock()
		u.tokens = append(u.tokens, tok)
		u.mu.Unlock()
		json.NewEncoder(w).Encode(claims)
	}))
	cfg, err := e.pki.ServerTLS(upstreamNames...)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ClientAuth = tls.RequireAnyClientCert
	u.srv.TLS = cfg
	u.srv.EnableHTTP2 = true
	u.srv.StartTLS()
	t.Cleanup(u.srv.Close)
	return u
}

func verifyJWT(client *http.Client, jwksURL, tok string) (map[string]any, error) {
	resp, err := client.Get(jwksURL)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var keys jose.JSONWebKeySet
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&keys); err != nil {
		return nil, err
	}
	jws, err := jose.ParseSigned(tok, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return nil, err
	}
	for _, k := range keys.Key(jws.Signatures[0].Header.KeyID) {
		if payload, err := jws.Verify(k.Key); err == nil {
			var claims map[string]any
			return claims, json.Unmarshal(payload, &claims)
		}
	}
	return nil, fmt.Errorf("no key of the provider verifies it")
}

// RFC 8705 against node oidc-provider: the oauth2 injector authenticates
// to the token endpoint by its client certificate alone (tls_client_auth,
// a certificate of a CA the provider trusts with the registered subject
// DN; self_signed_tls_client_auth, a self-signed one registered in the
// client's JWKS), the provider binds the access token to the certificate
// (cnf.x5t#S256), and the route presents the same certificate to an
// upstream that checks the binding. That upstream refuses the same token
// on a connection with another certificate, and check refuses a route
// that would send the token without it.
func TestTokensBoundToTheClientCertificate(t *testing.T) {
	e := newEnv(t)
	clientCA, err := sim.NewPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(e.dir, "mtls")
	os.MkdirAll(dir, 0o755)
	caCert, caKey, err := clientCA.ClientCert(dir, "pki-client", x509.Certificate{Subject: pkix.Name{CommonName: "issuer-client"}})
	if err != nil {
		t.Fatal(err)
	}
	ssCert, ssKey, ssLeaf, ssPriv := selfSignedClientCert(t, dir, "self-signed-client")
	asCert, asKey, err := e.pki.ServerCertFiles(dir, "as", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ssJWK := jose.JSONWebKey{Key: &ssPriv.PublicKey, Certificates: []*x509.Certificate{ssLeaf}, Use: "sig", Algorithm: "ES256"}
	jwkJSON, _ := ssJWK.MarshalJSON()
	var jwk map[string]any
	json.Unmarshal(jwkJSON, &jwk)
	const resource = "https://api.authproxy.test"
	client := func(id, method string, extra map[string]any) map[string]any {
		c := map[string]any{"client_id": id, "token_endpoint_auth_method": method, "grant_types": []string{"client_credentials"},
			"response_types": []string{}, "redirect_uris": []string{}, "tls_client_certificate_bound_access_tokens": true}
		for k, v := range extra {
			c[k] = v
		}
		return c
	}
	provider := oidcprovider.Start(t, oidcprovider.Config{CertFile: asCert, KeyFile: asKey, ClientCAFile: clientCA.CAFile, Resource: resource,
		Clients: []map[string]any{
			client("pki-client", "tls_client_auth", map[string]any{"tls_client_auth_subject_dn": "CN=issuer-client"}),
			client("self-signed-client", "self_signed_tls_client_auth", map[string]any{"jwks": map[string]any{"keys": []any{jwk}}}),
		}})
	up := newBoundTokenUpstream(t, e, provider.JWKSURL)

	cfgText := fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.authproxy.test:%[1]s"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1}}
injectors:
  pki:
    kind: oauth2
    token_url: %[2]q
    client_id: {value: pki-client}
    auth_style: tls_client_auth
    tls_client: {cert_file: %[3]q, key_file: %[4]q}
    scopes: [read]
    resource: %[7]q
  self-signed:
    kind: oauth2
    token_url: %[2]q
    client_id: {value: self-signed-client}
    auth_style: self_signed_tls_client_auth
    tls_client: {cert_file: %[5]q, key_file: %[6]q}
    scopes: [read]
    resource: %[7]q
routes:
  - {name: pki, match: {path: /pki/*}, injector: pki, tls_client: {cert_file: %[3]q, key_file: %[4]q}}
  - {name: self-signed, match: {path: /self/*}, injector: self-signed, tls_client: {cert_file: %[5]q, key_file: %[6]q}}
`, port(t, up.srv.URL), provider.TokenURL, caCert, caKey, ssCert, ssKey, resource)
	p := e.start(cfgText, nil, nil)

	for _, c := range []struct{ path, clientID, cert string }{{"/pki/x", "pki-client", caCert}, {"/self/x", "self-signed-client", ssCert}} {
		resp, err := h1Client().Get("http://" + p.addr("app") + c.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var claims map[string]any
		if resp.StatusCode != 200 || json.Unmarshal(body, &claims) != nil {
			t.Fatalf("%s: %d %s\nprovider:\n%s", c.path, resp.StatusCode, body, p.logs.String())
		}
		block, _ := pem.Decode(mustRead(t, c.cert))
		cnf, _ := claims["cnf"].(map[string]any)
		if claims["client_id"] != c.clientID || cnf["x5t#S256"] != x5tS256(block.Bytes) || claims["aud"] != resource {
			t.Errorf("%s: the token's claims %v", c.path, claims)
		}
	}

	t.Run("upstream-checks-the-binding", func(t *testing.T) {
		// The pki route's token, sent by someone presenting the other
		// certificate: the upstream refuses it.
		up.mu.Lock()
		tok := up.tokens[0]
		up.mu.Unlock()
		pair, err := tls.LoadX509KeyPair(ssCert, ssKey)
		if err != nil {
			t.Fatal(err)
		}
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.pki.Pool, Certificates: []tls.Certificate{pair}}}}
		req, _ := http.NewRequest("GET", up.srv.URL+"/pki/x", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("a bound token over another certificate: %d, want 401", resp.StatusCode)
		}
	})

	t.Run("check-refuses-an-unbound-route", func(t *testing.T) {
		for _, route := range []string{
			`{name: pki, match: {path: /pki/*}, injector: pki}`,
			fmt.Sprintf(`{name: pki, match: {path: /pki/*}, injector: pki, tls_client: {cert_file: %q, key_file: %q}}`, ssCert, ssKey),
		} {
			text := strings.Replace(cfgText, fmt.Sprintf(`{name: pki, match: {path: /pki/*}, injector: pki, tls_client: {cert_file: %q, key_file: %q}}`, caCert, caKey), route, 1)
			text = strings.NewReplacer("{{UPSTREAM_CA}}", e.pki.CAFile).Replace(text)
			err := newServerErr(t, text)
			if err == nil || !strings.Contains(err.Error(), `routes[0].tls_client: injector "pki" authenticates with its client certificate`) {
				t.Errorf("%s: %v", route, err)
			}
		}
	})
}
