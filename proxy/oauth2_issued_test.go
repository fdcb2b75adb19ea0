package proxy_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/internal/oidcop"
	"github.com/authproxy/authproxy/internal/redistest"
	"github.com/authproxy/authproxy/tokencache"
	"github.com/authproxy/authproxy/tokencache/redisstore"
)

// clusterIssuer is the iss of the Kubernetes-shaped tokens of these tests.
const clusterIssuer = "https://kubernetes.default.svc.cluster.local"

// platformTokens signs tokens shaped like Kubernetes projected
// service-account tokens and writes them as the kubelet does: into a new
// timestamped directory, then the ..data link swapped to it, so that a
// reader sees the old file or the new one, whole.
type platformTokens struct {
	t   *testing.T
	key *rsa.PrivateKey
	dir string // the volume
	n   int
}

func newPlatformTokens(t *testing.T, dir string) *platformTokens {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(dir, 0o755)
	return &platformTokens{t: t, key: key, dir: dir}
}

func (p *platformTokens) keys() jose.JSONWebKeySet {
	return jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &p.key.PublicKey, KeyID: "sa-1", Algorithm: "RS256", Use: "sig"}}}
}

// sign returns a token for the reports namespace's app account with this
// audience, valid from now for life (negative: expired that long ago).
func (p *platformTokens) sign(aud string, life time.Duration) string {
	p.t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: p.key}, (&jose.SignerOptions{}).WithHeader("kid", "sa-1").WithType("JWT"))
	if err != nil {
		p.t.Fatal(err)
	}
	now := time.Now()
	iat := now.Add(-time.Minute)
	if life < 0 {
		iat = now.Add(2 * life)
	}
	tok, err := jwt.Signed(s).Claims(jwt.Claims{Issuer: clusterIssuer, Audience: jwt.Audience{aud},
		Subject: "system:serviceaccount:reports:app", Expiry: jwt.NewNumericDate(now.Add(life)),
		NotBefore: jwt.NewNumericDate(iat), IssuedAt: jwt.NewNumericDate(iat), ID: rand.Text()}).Serialize()
	if err != nil {
		p.t.Fatal(err)
	}
	return tok
}

// write puts files (name: content) into the volume as the kubelet does.
func (p *platformTokens) write(files map[string]string) {
	p.t.Helper()
	p.n++
	stamp := fmt.Sprintf("..2026_12_07_22_00_%02d.%09d", p.n, p.n)
	if err := os.MkdirAll(filepath.Join(p.dir, stamp), 0o755); err != nil {
		p.t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(p.dir, stamp, name), []byte(content), 0o644); err != nil {
			p.t.Fatal(err)
		}
		if _, err := os.Lstat(filepath.Join(p.dir, name)); err != nil {
			os.Symlink(filepath.Join("..data", name), filepath.Join(p.dir, name))
		}
	}
	tmp := filepath.Join(p.dir, "..data_tmp")
	os.Remove(tmp)
	if err := os.Symlink(stamp, tmp); err != nil {
		p.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(p.dir, "..data")); err != nil {
		p.t.Fatal(err)
	}
}

// verifyingUpstream answers 200 with the claims of a bearer token that
// the provider issued (checked against its /keys), 401 otherwise.
func verifyingUpstream(e *env, provider *oidcop.OP) http.Handler {
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.pki.Pool}}, Timeout: 20 * time.Second}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		claims, err := provider.Claims(r.Context(), client, tok)
		if !ok || err != nil {
			http.Error(w, fmt.Sprintf("token refused: %v", err), http.StatusUnauthorized)
			return
		}
		json.NewEncoder(w).Encode(claims)
	})
}

// The oauth2 injector with no secret of its own, against zitadel/oidc's
// OpenID provider trusting the cluster's service-account tokens: the
// platform's token as the client assertion of client credentials and as
// the assertion of the JWT-bearer grant, and exchanged (RFC 8693) for
// tokens whose audience and resource come from the request's path. Each
// upstream verifies the provider's token against its keys. The token
// files rotate while requests run: the new tokens are sent, and no
// request fails. An expired token in the file is refused before it is
// sent, with a clear error; no token appears in a log or an answer.
func TestOAuth2WithoutAStoredSecret(t *testing.T) {
	e := newEnv(t)
	sa := newPlatformTokens(t, filepath.Join(e.dir, "tokens"))
	provider := oidcop.Start(t, e.pki, oidcop.Trust{Issuer: clusterIssuer, Keys: sa.keys(),
		Subject: "system:serviceaccount:reports:", Client: "reports-federated", ExchangeAudience: "sts.authproxy.test"})
	up := e.httpsUpstream(verifyingUpstream(e, provider))
	sa.write(map[string]string{"idp": sa.sign(provider.Issuer, time.Hour), "sts": sa.sign("sts.authproxy.test", time.Hour)})
	idp, sts := filepath.Join(sa.dir, "idp"), filepath.Join(sa.dir, "sts")
	p := e.start(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.authproxy.test:%[1]s"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1}}
injectors:
  federated:
    kind: oauth2
    token_url: %[2]q
    client_assertion: {file: %[3]q}
    scopes: [reports]
  bearer-grant:
    kind: oauth2
    token_url: %[2]q
    auth_style: jwt_bearer
    client_assertion: {file: %[3]q}
    scopes: [openid]
  exchange:
    kind: oauth2
    grant: token_exchange
    token_url: %[2]q
    client_id: {value: %[5]q}
    client_secret: {value: %[6]q}
    subject_token: {file: %[4]q}
    audience: "https://{name}.api.authproxy.test"
    resource: "https://api.authproxy.test/{name}"
routes:
  - {name: cc, match: {path: /cc/*}, injector: federated}
  - {name: grant, match: {path: /grant/*}, injector: bearer-grant}
  - {name: exchange, match: {path: "/exchange/{name}/*"}, injector: exchange}
`, port(t, up.URL), provider.TokenURL, idp, sts, oidcop.ExchangeClient, oidcop.ExchangeSecret), nil, nil)

	get := func(path string) (int, map[string]any) {
		t.Helper()
		resp, err := h1Client().Get("http://" + p.addr("app") + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var claims map[string]any
		if resp.StatusCode == 200 {
			if err := json.Unmarshal(body, &claims); err != nil {
				t.Fatalf("%s: %s", path, body)
			}
		} else {
			t.Logf("%s: %d %s", path, resp.StatusCode, body)
		}
		return resp.StatusCode, claims
	}
	lastForm := func(grant string) map[string][]string {
		t.Helper()
		reqs := provider.Requests()
		for i := len(reqs) - 1; i >= 0; i-- {
			if reqs[i].Get("grant_type") == grant {
				return reqs[i]
			}
		}
		t.Fatalf("no %s request reached the provider", grant)
		return nil
	}
	idpToken, _ := os.ReadFile(idp)
	stsToken, _ := os.ReadFile(sts)

	t.Run("client-assertion", func(t *testing.T) {
		st, claims := get("/cc/x")
		if st != 200 || claims["sub"] != "system:serviceaccount:reports:app" || claims["client_id"] != "reports-federated" {
			t.Fatalf("%d %v", st, claims)
		}
		form := lastForm("client_credentials")
		if form["client_assertion"][0] != string(idpToken) || form["client_assertion_type"][0] != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" || len(form["client_secret"]) != 0 {
			t.Errorf("the token request: %v", form)
		}
	})
	t.Run("jwt-bearer-grant", func(t *testing.T) {
		st, claims := get("/grant/x")
		if st != 200 || claims["sub"] != "system:serviceaccount:reports:app" {
			t.Fatalf("%d %v", st, claims)
		}
		if form := lastForm("urn:ietf:params:oauth:grant-type:jwt-bearer"); form["assertion"][0] != string(idpToken) {
			t.Errorf("the token request: %v", form)
		}
	})
	t.Run("token-exchange", func(t *testing.T) {
		for _, name := range []string{"billing", "reports"} {
			st, claims := get("/exchange/" + name + "/x")
			aud, _ := json.Marshal(claims["requested_audience"])
			res, _ := json.Marshal(claims["resource"])
			if st != 200 || claims["sub"] != "system:serviceaccount:reports:app" ||
				string(aud) != fmt.Sprintf(`["https://%s.api.authproxy.test"]`, name) || string(res) != fmt.Sprintf(`["https://api.authproxy.test/%s"]`, name) {
				t.Fatalf("%s: %d %v", name, st, claims)
			}
			form := lastForm("urn:ietf:params:oauth:grant-type:token-exchange")
			if form["subject_token"][0] != string(stsToken) || form["subject_token_type"][0] != "urn:ietf:params:oauth:token-type:jwt" {
				t.Errorf("the token request: %v", form)
			}
		}
		// Single flight: twenty callers of a new audience at once cost one
		// exchange.
		before := len(provider.Requests())
		var wg sync.WaitGroup
		for range 20 {
			wg.Go(func() {
				if st, _ := get("/exchange/burst/x"); st != 200 {
					t.Errorf("burst: %d", st)
				}
			})
		}
		wg.Wait()
		if n := len(provider.Requests()) - before; n != 1 {
			t.Errorf("%d token requests for 20 concurrent callers of one audience, want 1", n)
		}
		// Cached per resulting key: the same audience again asks nothing.
		before = len(provider.Requests())
		if st, _ := get("/exchange/billing/y"); st != 200 || len(provider.Requests()) != before {
			t.Errorf("%d, %d more token requests for a cached exchange", st, len(provider.Requests())-before)
		}
	})

	t.Run("rotation", func(t *testing.T) {
		// Each request names a new audience, so each exchanges the subject
		// token as the file holds it at that moment, while the files are
		// rotated beside them.
		var wg sync.WaitGroup
		stop := make(chan struct{})
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				sa.write(map[string]string{"idp": sa.sign(provider.Issuer, time.Hour), "sts": sa.sign("sts.authproxy.test", time.Hour)})
			}
		})
		failed := 0
		for i := range 40 {
			if st, _ := get(fmt.Sprintf("/exchange/rot%d/x", i)); st != 200 {
				failed++
			}
		}
		close(stop)
		wg.Wait()
		if failed > 0 {
			t.Errorf("%d of 40 requests failed while the token rotated", failed)
		}
		seen := map[string]bool{}
		for _, f := range provider.Requests() {
			if strings.HasPrefix(f.Get("audience"), "https://rot") {
				seen[f.Get("subject_token")] = true
			}
		}
		if len(seen) < 2 {
			t.Errorf("the exchanges sent %d distinct subject tokens: the rotation was not picked up", len(seen))
		}
	})

	t.Run("expired", func(t *testing.T) {
		expired := sa.sign("sts.authproxy.test", -time.Minute)
		sa.write(map[string]string{"idp": sa.sign(provider.Issuer, time.Hour), "sts": expired})
		before := len(provider.Requests())
		if st, _ := get("/exchange/late/x"); st != http.StatusServiceUnavailable {
			t.Errorf("an expired subject token: %d, want 503", st)
		}
		if len(provider.Requests()) != before {
			t.Error("the expired token was sent")
		}
		if !strings.Contains(p.logs.String(), "has not renewed it") {
			t.Errorf("the log does not say the token expired:\n%s", p.logs.String())
		}
	})
	for _, tok := range []string{string(idpToken), string(stsToken), oidcop.ExchangeSecret} {
		if strings.Contains(p.logs.String(), tok) {
			t.Error("the log shows a token or the client secret")
		}
	}
	if strings.Contains(p.logs.String(), "eyJ") {
		t.Error("the log shows a JWT")
	}
}

// Two proxies on one store (a real redis-server) share the exchanged
// token: the second proxy's request costs no token request. The token is
// refreshed ahead of its expiry in the background, once for both, with
// the subject token as its file holds it then; no request waits.
func TestSecretFreeTokensAreSharedAndRefreshedAhead(t *testing.T) {
	srv := redistest.Start(t)
	e := newEnv(t)
	sa := newPlatformTokens(t, filepath.Join(e.dir, "tokens"))
	provider := oidcop.Start(t, e.pki, oidcop.Trust{Issuer: clusterIssuer, Keys: sa.keys(),
		Subject: "system:serviceaccount:reports:", ExchangeAudience: "sts.authproxy.test", TokenLife: 10 * time.Second})
	up := e.httpsUpstream(verifyingUpstream(e, provider))
	sa.write(map[string]string{"sts": sa.sign("sts.authproxy.test", time.Hour)})
	var fleet []*running
	for range 2 {
		st, err := redisstore.New(redisstore.Options{Address: srv.Addr, EncryptionKey: []byte("secret-free-fleet-key-0123456789abcdef"),
			KeyPrefix: "secret-free:", MinBackoff: 10 * time.Millisecond, MaxBackoff: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		e.injEnv = injectors.Env{Cache: tokencache.New(tokencache.Options{Store: st, RefreshFraction: 0.5, MinMargin: time.Second,
			MinBackoff: 10 * time.Millisecond, MaxBackoff: time.Second, ScanInterval: 50 * time.Millisecond})}
		fleet = append(fleet, e.start(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.authproxy.test:%[1]s"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1}}
injectors:
  exchange:
    kind: oauth2
    grant: token_exchange
    token_url: %[2]q
    client_id: {value: %[4]q}
    client_secret: {value: %[5]q}
    subject_token: {file: %[3]q}
    audience: "https://reports.api.authproxy.test"
routes:
  - {name: api, match: {path: "/api/*"}, injector: exchange}
`, port(t, up.URL), provider.TokenURL, filepath.Join(sa.dir, "sts"), oidcop.ExchangeClient, oidcop.ExchangeSecret), nil, nil))
	}
	exchanges := func() int {
		n := 0
		for _, f := range provider.Requests() {
			if f.Get("grant_type") == "urn:ietf:params:oauth:grant-type:token-exchange" {
				n++
			}
		}
		return n
	}
	get := func(p *running) string {
		t.Helper()
		resp, err := h1Client().Get("http://" + p.addr("app") + "/api/x")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var claims map[string]any
		if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&claims) != nil {
			t.Fatalf("status %d", resp.StatusCode)
		}
		return fmt.Sprint(claims["jti"], claims["exp"])
	}
	first := get(fleet[0])
	if got := get(fleet[1]); got != first || exchanges() != 1 {
		t.Fatalf("the second proxy got %s (first %s) after %d exchanges, want the shared token after 1", got, first, exchanges())
	}
	// The subject token is renewed on disk; the refresh ahead of expiry
	// (half of 10 s) exchanges it, once for the fleet, while requests go on
	// being served the valid token.
	renewed := sa.sign("sts.authproxy.test", time.Hour)
	sa.write(map[string]string{"sts": renewed})
	waitFor(t, "the refresh ahead of expiry", func() bool { get(fleet[0]); get(fleet[1]); return exchanges() >= 2 })
	time.Sleep(500 * time.Millisecond) // a second refresher would have asked by now
	if n := exchanges(); n != 2 {
		t.Errorf("%d exchanges, want 2: the refresh once for both proxies", n)
	}
	reqs := provider.Requests()
	if last := reqs[len(reqs)-1].Get("subject_token"); last != renewed {
		t.Error("the refresh did not send the renewed subject token")
	}
	if a, b := get(fleet[0]), get(fleet[1]); a != b || a == first {
		t.Errorf("after the refresh the proxies serve %s and %s (first %s)", a, b, first)
	}
}
