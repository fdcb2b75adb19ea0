package injectors

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/route"
	"github.com/authproxy/authproxy/sim"
	"github.com/authproxy/authproxy/tokencache"
)

const testSecret = "p@ss:w/rd+&=very-secret"

func secretValue(v string) config.SecretSource { return config.SecretSource{Value: &v} }

// tokenEndpoint serves ts over TLS and returns an Env whose client trusts it.
func tokenEndpoint(t *testing.T, h http.Handler, now func() time.Time) (string, Env) {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	if now == nil {
		now = time.Now
	}
	return srv.URL + "/oauth/v2/token", Env{
		Cache:      tokencache.New(tokencache.Options{Now: now, FetchTimeout: 2 * time.Second}),
		HTTPClient: srv.Client(),
		Now:        now,
	}
}

func newRequest(t *testing.T, target string, params route.Params) *Request {
	t.Helper()
	r, err := http.NewRequest("GET", target, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &Request{Request: r, Route: "r", Params: params}
}

func writeKey(t *testing.T, key any) config.SecretSource {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return config.SecretSource{File: file}
}

func TestOAuth2ClientAuthStyles(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, tc := range []struct {
		name string
		ts   *sim.TokenServer
		cfg  OAuth2Config
	}{
		{"client_secret_basic form-encodes", &sim.TokenServer{Auth: "basic"}, OAuth2Config{}},
		{"client_secret_post", &sim.TokenServer{Auth: "post"}, OAuth2Config{AuthStyle: "client_secret_post"}},
		{"private_key_jwt RS256", &sim.TokenServer{Auth: "private_key_jwt", PublicKey: &rsaKey.PublicKey, Audience: "https://issuer.example"},
			OAuth2Config{PrivateKey: writeKey(t, rsaKey), AssertionAudience: "https://issuer.example", KeyID: "k1"}},
		{"private_key_jwt ES256", &sim.TokenServer{Auth: "private_key_jwt", PublicKey: &ecKey.PublicKey, Audience: "https://issuer.example"},
			OAuth2Config{PrivateKey: writeKey(t, ecKey), AssertionAudience: "https://issuer.example"}},
		{"obelisk preset: raw Basic, JSON body, token field", &sim.TokenServer{Auth: "basic-raw", JSONBody: true, Obelisk: true, MaxValid: 86400},
			OAuth2Config{Preset: "obelisk"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "client:1" // a colon, which form-encoded Basic must carry
			if tc.ts.Auth == "basic-raw" {
				id = "client-1"
			}
			tc.ts.ClientID, tc.ts.ClientSecret = id, testSecret
			tc.ts.RequireScopes = []string{"openid"}
			tokenURL, env := tokenEndpoint(t, tc.ts, nil)
			cfg := tc.cfg
			cfg.TokenURL = tokenURL
			cfg.ClientID = secretValue(id)
			if !cfg.PrivateKey.IsSet() {
				cfg.ClientSecret = secretValue(testSecret)
			}
			cfg.Scopes = []string{"openid", "sub"}
			o, err := NewOAuth2("test", cfg, env)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 3; i++ {
				req := newRequest(t, "https://api.example.com/x", nil)
				if err := o.Inject(req); err != nil {
					t.Fatal(err)
				}
				tok, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
				if !ok || !tc.ts.Valid(tok) {
					t.Fatalf("injected %q, not a live token from the server", req.Header.Get("Authorization"))
				}
			}
			if n := tc.ts.Calls(); n != 1 {
				t.Errorf("%d token requests for 3 requests of one scope", n)
			}
			if got := tc.ts.Scopes(); got["openid sub"] != 1 {
				t.Errorf("scopes sent: %v", got)
			}
		})
	}
}

func TestOAuth2ErrorsAreClearAndSecretFree(t *testing.T) {
	echoSecret := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		_, secret, _ := r.BasicAuth()
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"error":"invalid_client","error_description":"secret %s is wrong"}`, secret)
	})
	notJSON := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "<html>login</html>") })
	down := &sim.TokenServer{ClientID: "c", ClientSecret: testSecret}
	down.SetDown(http.StatusServiceUnavailable)
	slow := &sim.TokenServer{ClientID: "c", ClientSecret: testSecret}
	slow.SetDelay(5 * time.Second)
	for _, tc := range []struct {
		name     string
		h        http.Handler
		secret   string
		kind     error
		contains string
	}{
		{"wrong secret", &sim.TokenServer{ClientID: "c", ClientSecret: "other"}, testSecret, ErrCredentialRejected, `401 Unauthorized: invalid_client`},
		{"endpoint echoes the secret", echoSecret, testSecret, ErrCredentialRejected, "REDACTED"},
		{"endpoint down", down, testSecret, ErrCredentialUnavailable, "503 Service Unavailable: token service unavailable"},
		{"not a token response", notJSON, testSecret, ErrCredentialUnavailable, "not a token response: <html>login</html>"},
		{"timeout", slow, testSecret, ErrCredentialUnavailable, "timed out"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tokenURL, env := tokenEndpoint(t, tc.h, nil)
			o, err := NewOAuth2("obh-api", OAuth2Config{TokenURL: tokenURL + "?tenant=x", ClientID: secretValue("c"), ClientSecret: secretValue(tc.secret)}, env)
			if err != nil {
				t.Fatal(err)
			}
			err = o.Inject(newRequest(t, "https://api.example.com/", nil))
			if !errors.Is(err, tc.kind) {
				t.Fatalf("got %v, want %v", err, tc.kind)
			}
			msg := err.Error()
			for _, leak := range []string{tc.secret, url.QueryEscape(tc.secret), "tenant=x"} {
				if strings.Contains(msg, leak) {
					t.Errorf("error shows %q: %s", leak, msg)
				}
			}
			if !strings.Contains(msg, `injector "obh-api"`) || !strings.Contains(msg, tc.contains) {
				t.Errorf("error %q should name the injector and say %q", msg, tc.contains)
			}
		})
	}
}

func TestOAuth2ScopeTemplates(t *testing.T) {
	ts := &sim.TokenServer{ClientID: "c", ClientSecret: "s"}
	tokenURL, env := tokenEndpoint(t, ts, nil)
	o, err := NewOAuth2("obh", OAuth2Config{
		Preset: "obh", TokenURL: tokenURL, ClientID: secretValue("c"), ClientSecret: secretValue("s"),
		Scopes: []string{"openid", "urn:zitadel:iam:org:project:id:42:aud", "role:{header:X-Role}", "mount:{mount}"},
		Params: map[string]string{"site": "{query:site}"},
	}, env)
	if err != nil {
		t.Fatal(err)
	}
	if got := o.PathParams(); len(got) != 1 || got[0] != "mount" {
		t.Errorf("PathParams = %v", got)
	}
	inject := func(mount, role, target string) (*Request, error) {
		req := newRequest(t, target, route.Params{{Name: "mount", Value: mount}})
		if role != "" {
			req.Header.Set("X-Role", role)
		}
		return req, o.Inject(req)
	}
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Go(func() {
			if _, err := inject(fmt.Sprintf("m%d", i%5), "restricted", "https://api.example.com/?site=eu"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	scopes := ts.Scopes()
	if len(scopes) != 5 || scopes["openid urn:zitadel:iam:org:project:id:42:aud role:restricted mount:m3"] != 1 {
		t.Errorf("tokens per scope: %v, want one for each of 5 mounts", scopes)
	}
	for _, tc := range []struct{ mount, role, target, want string }{
		{"m1", "", "https://api.example.com/?site=eu", "needs header X-Role"},
		{"m1", "owner", "https://api.example.com/", "needs query parameter site"},
		{"m1 openid admin", "owner", "https://api.example.com/?site=eu", "visible ASCII"},
		{"m1", "owner\"", "https://api.example.com/?site=eu", "visible ASCII"},
		{"m1\\x", "owner", "https://api.example.com/?site=eu", "visible ASCII"},
		// Unicode white space, which strings.Fields would not split on but
		// a scope parser may.
		{"m1\u00a0admin", "owner", "https://api.example.com/?site=eu", "path value {mount}"},
		{"m1\u2028admin", "owner", "https://api.example.com/?site=eu", "path value {mount}"},
		{"m1", "owner\u3000admin", "https://api.example.com/?site=eu", "header X-Role"},
		{"m1", "owner", "https://api.example.com/?site=eu%C2%A0admin", "query parameter site"},
		{"m1", "owner\x7f", "https://api.example.com/?site=eu", "header X-Role"},
	} {
		if _, err := inject(tc.mount, tc.role, tc.target); !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("mount %q role %q %s: %v, want a bad request (%s)", tc.mount, tc.role, tc.target, err, tc.want)
		}
	}
	if n := ts.Calls(); n != 5 {
		t.Errorf("%d token requests, want 5 (bad requests must not reach the issuer)", n)
	}
}

func TestOAuth2ConfigErrors(t *testing.T) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, tc := range []struct {
		name string
		cfg  OAuth2Config
		want string
	}{
		{"plaintext token url", OAuth2Config{TokenURL: "http://x.example/token", ClientID: secretValue("c"), ClientSecret: secretValue("s")}, "token_url: must be https"},
		{"no client id", OAuth2Config{TokenURL: "https://x.example/token", ClientSecret: secretValue("s")}, "client_id: a secret needs exactly one"},
		{"key with basic", OAuth2Config{TokenURL: "https://x.example/token", AuthStyle: "client_secret_basic", ClientID: secretValue("c"), ClientSecret: secretValue("s"), PrivateKey: writeKey(t, key)}, "private_key: only used with auth_style: private_key_jwt"},
		{"secret with jwt", OAuth2Config{TokenURL: "https://x.example/token", ClientID: secretValue("c"), ClientSecret: secretValue("s"), PrivateKey: writeKey(t, key)}, "client_secret: not used with private_key_jwt"},
		{"unknown preset", OAuth2Config{Preset: "zitadel", TokenURL: "https://x.example/token", ClientID: secretValue("c"), ClientSecret: secretValue("s")}, `preset: unknown preset "zitadel"`},
		{"obh without audience scope", OAuth2Config{Preset: "obh", ClientID: secretValue("c"), ClientSecret: secretValue("s"), Scopes: []string{"openid"}}, "scopes: the obh preset needs the project audience scope"},
		{"obelisk without token url", OAuth2Config{Preset: "obelisk", ClientID: secretValue("c"), ClientSecret: secretValue("s")}, "token_url: required (<base>/api/v3/auth/token)"},
		{"bad template", OAuth2Config{TokenURL: "https://x.example/token", ClientID: secretValue("c"), ClientSecret: secretValue("s"), Scopes: []string{"mount:{cookie:x}"}}, "scopes[0]: template"},
		{"colon in a raw Basic id", OAuth2Config{Preset: "obelisk", TokenURL: "https://x.example/token", ClientID: secretValue("a:b"), ClientSecret: secretValue("s")}, "client_id: contains \":\""},
		{"reserved param", OAuth2Config{TokenURL: "https://x.example/token", ClientID: secretValue("c"), ClientSecret: secretValue("s"), Params: map[string]string{"client_secret": "x"}}, "params.client_secret: set by the injector itself"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewOAuth2("x", tc.cfg, Env{Cache: tokencache.New(tokencache.Options{}), HTTPClient: http.DefaultClient})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestOAuth2ObeliskLifetimes(t *testing.T) {
	clk := sim.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	clock, advance := clk.Now, clk.Advance
	// max_valid_time (30 min) is sooner than expires_in (60 min), and the
	// server sends a max_idle_time (10 min) shorter than both. Every use
	// below comes before the token's refresh time (80% of its life), so no
	// background refresh runs and each count is exact.
	ts := &sim.TokenServer{ClientID: "c", ClientSecret: "s", Auth: "basic-raw", JSONBody: true, Obelisk: true, ExpiresIn: 3600, MaxValid: 1800, MaxIdle: 600, Now: clock}
	tokenURL, env := tokenEndpoint(t, ts, clock)
	o, err := NewOAuth2("obelisk", OAuth2Config{Preset: "obelisk", TokenURL: tokenURL, ClientID: secretValue("c"), ClientSecret: secretValue("s")}, env)
	if err != nil {
		t.Fatal(err)
	}
	use := func() {
		t.Helper()
		if err := o.Inject(newRequest(t, "https://obelisk.example/", nil)); err != nil {
			t.Fatal(err)
		}
	}
	use()
	for _, d := range []time.Duration{8, 8, 7} { // at 8, 16 and 23 minutes: idle under 10, age under 24
		advance(d * time.Minute)
		use()
	}
	if n := ts.Calls(); n != 1 {
		t.Fatalf("%d token requests over 23 minutes of use, want 1", n)
	}
	advance(8 * time.Minute) // at 31 minutes: past max_valid_time, idle 8 minutes
	use()
	if n := ts.Calls(); n != 2 {
		t.Fatalf("%d token requests after max_valid_time, want 2", n)
	}
	advance(9 * time.Minute) // idle just under max_idle_time: still served
	use()
	if n := ts.Calls(); n != 2 {
		t.Fatalf("%d token requests after 9 idle minutes, want 2", n)
	}
	advance(11 * time.Minute) // idle past max_idle_time, 20 minutes old: a new token
	use()
	if n := ts.Calls(); n != 3 {
		t.Errorf("%d token requests, want 3 after an idle period past max_idle_time", n)
	}
}

func TestOAuth2InvalidateOnUnauthorized(t *testing.T) {
	clk := sim.NewClock(time.Now())
	clock := clk.Now
	ts := &sim.TokenServer{ClientID: "c", ClientSecret: "s"}
	tokenURL, env := tokenEndpoint(t, ts, clock)
	o, _ := NewOAuth2("x", OAuth2Config{TokenURL: tokenURL, ClientID: secretValue("c"), ClientSecret: secretValue("s")}, env)
	req := newRequest(t, "https://api.example.com/", nil)
	if err := o.Inject(req); err != nil {
		t.Fatal(err)
	}
	first := req.Header.Get("Authorization")
	clk.Advance(5 * time.Second)
	if o.ObserveResponse(req, &http.Response{StatusCode: 200, Header: http.Header{}}) {
		t.Error("a 200 asked for a retry")
	}
	if !o.ObserveResponse(req, &http.Response{StatusCode: 200, Header: http.Header{"Grpc-Status": {"16"}}}) {
		t.Error("gRPC UNAUTHENTICATED did not drop the token")
	}
	if err := o.Inject(req); err != nil {
		t.Fatal(err)
	}
	if req.Header.Get("Authorization") == first || ts.Calls() != 2 {
		t.Errorf("after invalidation: same token %v, %d token requests", req.Header.Get("Authorization") == first, ts.Calls())
	}

}

func writeFile(t *testing.T, name, content string) config.SecretSource {
	t.Helper()
	file := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return config.SecretSource{File: file}
}

func TestOAuth2KeyFileErrorsNameTheField(t *testing.T) {
	env := Env{Cache: tokencache.New(tokencache.Options{}), HTTPClient: http.DefaultClient}
	for _, tc := range []struct {
		name string
		cfg  OAuth2Config
		want string
	}{
		{"unknown type", OAuth2Config{KeyFile: writeFile(t, "k.json", `{"type":"user","keyId":"k","key":"x","userId":"u"}`)},
			`key_file: a Zitadel key file of type "user"; known: serviceaccount (for auth_style: jwt_bearer) and application`},
		{"service account key for private_key_jwt", OAuth2Config{AuthStyle: "private_key_jwt", KeyFile: writeFile(t, "k.json", `{"type":"serviceaccount","keyId":"k","key":"x","userId":"u"}`)},
			"key_file: a Zitadel serviceaccount key is for auth_style: jwt_bearer, not private_key_jwt"},
		{"missing userId", OAuth2Config{KeyFile: writeFile(t, "k.json", `{"type":"serviceaccount","keyId":"k","key":"x"}`)},
			"key_file: a Zitadel serviceaccount key file needs keyId, key and userId"},
		{"ids given twice", OAuth2Config{ClientID: secretValue("c"), KeyFile: writeFile(t, "k.json", `{"type":"application","keyId":"k","key":"x","clientId":"c"}`)},
			"key_file: a Zitadel key file names its own ids"},
		{"not a key", OAuth2Config{ClientID: secretValue("c"), KeyFile: writeFile(t, "k.pem", "hello")}, "key_file: "},
		{"both keys", OAuth2Config{ClientID: secretValue("c"), KeyFile: writeFile(t, "k.pem", "x"), PrivateKey: secretValue("y")}, "key_file: give key_file or private_key, not both"},
		{"jwt_bearer without a key", OAuth2Config{ClientID: secretValue("c"), AuthStyle: "jwt_bearer"}, "private_key: jwt_bearer needs a key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.TokenURL = "https://auth.example/oauth/v2/token"
			_, err := NewOAuth2("o", tc.cfg, env)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}

// A service-account key file makes the JWT-bearer grant with the claims
// Zitadel checks; a PEM key with explicit ids does the same.
func TestOAuth2JWTBearerGrantAgainstZitadel(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	der := x509.MarshalPKCS1PrivateKey(rsaKey)
	pemKey := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der}))
	keyJSON := fmt.Sprintf(`{"type":"serviceaccount","keyId":"kid-1","key":%q,"userId":"user-1"}`, pemKey)
	ts := &sim.TokenServer{Mode: "zitadel", UserID: "user-1", KeyID: "kid-1", PublicKey: &rsaKey.PublicKey}
	tokenURL, env := tokenEndpoint(t, ts, nil)
	u, _ := url.Parse(tokenURL)
	ts.Issuer = u.Scheme + "://" + u.Host
	for name, cfg := range map[string]OAuth2Config{
		"key file":             {KeyFile: writeFile(t, "sa.json", keyJSON)},
		"PEM and explicit ids": {AuthStyle: "jwt_bearer", PrivateKey: writeFile(t, "k.pem", pemKey), ClientID: secretValue("user-1"), KeyID: "kid-1"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg.TokenURL, cfg.Scopes = tokenURL, []string{"openid", "mount:m1"}
			o, err := NewOAuth2("obh", cfg, Env{Cache: tokencache.New(tokencache.Options{}), HTTPClient: env.HTTPClient})
			if err != nil {
				t.Fatal(err)
			}
			req := newRequest(t, "https://api.example.com/", nil)
			if err := o.Inject(req); err != nil || !strings.HasPrefix(req.Header.Get("Authorization"), "Bearer at-") {
				t.Fatalf("%v %q", err, req.Header.Get("Authorization"))
			}
		})
	}
	// A client assertion on client_credentials: Zitadel never reads it.
	o, _ := NewOAuth2("obh", OAuth2Config{TokenURL: tokenURL, AuthStyle: "private_key_jwt", PrivateKey: writeFile(t, "k.pem", pemKey),
		ClientID: secretValue("user-1"), KeyID: "kid-1"}, Env{Cache: tokencache.New(tokencache.Options{}), HTTPClient: env.HTTPClient})
	err := o.Inject(newRequest(t, "https://api.example.com/", nil))
	var oe *OAuthError
	if !errors.Is(err, ErrCredentialRejected) || !errors.As(err, &oe) || oe.ClientCode() != "invalid_client" || !strings.Contains(err.Error(), "auth_style: jwt_bearer") {
		t.Errorf("client_assertion against Zitadel: %v", err)
	}
}

// Issuer answers are classed as a user would expect, and real servers'
// variations are taken as they come.
func TestOAuth2AnswersOfRealServers(t *testing.T) {
	strict := &sim.TokenServer{Mode: "strict", ClientID: "c", ClientSecret: "s", AllowedScopes: []string{"read", "write"}}
	tokenURL, env := tokenEndpoint(t, strict, nil)
	build := func(scopes ...string) *OAuth2 {
		o, err := NewOAuth2("o", OAuth2Config{TokenURL: tokenURL, ClientID: secretValue("c"), ClientSecret: secretValue("s"), Scopes: scopes},
			Env{Cache: tokencache.New(tokencache.Options{}), HTTPClient: env.HTTPClient})
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	// token_type "bearer", scope echoed, application/json;charset=UTF-8.
	if err := build("read").Inject(newRequest(t, "https://api.example.com/", nil)); err != nil {
		t.Errorf("a strict server's good answer: %v", err)
	}
	err := build("admin").Inject(newRequest(t, "https://api.example.com/", nil))
	var oe *OAuthError
	if !errors.Is(err, ErrCredentialRejected) || !errors.As(err, &oe) || oe.Code != "invalid_scope" {
		t.Errorf("a scope the client may not ask for: %v, want a rejection with invalid_scope", err)
	}
	jsonBody, _ := NewOAuth2("o", OAuth2Config{TokenURL: tokenURL, ClientID: secretValue("c"), ClientSecret: secretValue("s"), BodyFormat: "json"},
		Env{Cache: tokencache.New(tokencache.Options{}), HTTPClient: env.HTTPClient})
	err = jsonBody.Inject(newRequest(t, "https://api.example.com/", nil))
	if !errors.Is(err, ErrCredentialRejected) || !errors.As(err, &oe) || oe.Code != "invalid_request" {
		t.Errorf("a JSON body to a form-only server: %v, want a rejection with invalid_request", err)
	}
	for _, tc := range []struct {
		name, body string
		status     int
		want       error
	}{
		{"invalid_request", `{"error":"invalid_request"}`, 400, ErrCredentialRejected},
		{"unsupported_grant_type", `{"error":"unsupported_grant_type"}`, 400, ErrCredentialRejected},
		{"400 without a code", `bad`, 400, ErrCredentialRejected},
		{"error in a 200 body", `{"error":"access_denied"}`, 200, ErrCredentialRejected},
		{"outage", `down`, 503, ErrCredentialUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json;charset=UTF-8")
				w.WriteHeader(tc.status)
				fmt.Fprint(w, tc.body)
			})
			u, env := tokenEndpoint(t, h, nil)
			o, _ := NewOAuth2("o", OAuth2Config{TokenURL: u, ClientID: secretValue("c"), ClientSecret: secretValue("s")}, env)
			if err := o.Inject(newRequest(t, "https://api.example.com/", nil)); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
	var hostile OAuthError
	hostile.Code = "invalid_scope; secret=x"
	if hostile.ClientCode() != "" {
		t.Error("a code that is not a plain word would reach the client")
	}
}

// TryInject adds the token only when the cache holds a valid one, and
// then exactly what Inject adds; it never asks the issuer.
func TestOAuth2TryInjectNeverWaits(t *testing.T) {
	ts := &sim.TokenServer{ClientID: "c", ClientSecret: "s"}
	tokenURL, env := tokenEndpoint(t, ts, nil)
	o, err := NewOAuth2("obh", OAuth2Config{TokenURL: tokenURL, ClientID: secretValue("c"), ClientSecret: secretValue("s")}, env)
	if err != nil {
		t.Fatal(err)
	}
	req := newRequest(t, "https://api.example.com/", nil)
	if done, err := o.TryInject(req); done || err != nil || req.Header.Get("Authorization") != "" || ts.Calls() != 0 {
		t.Fatalf("before any token: done=%v err=%v header %q, %d token requests", done, err, req.Header.Get("Authorization"), ts.Calls())
	}
	if err := o.Inject(req); err != nil {
		t.Fatal(err)
	}
	want := req.Header.Get("Authorization")
	again := newRequest(t, "https://api.example.com/", nil)
	if done, err := o.TryInject(again); !done || err != nil || again.Header.Get("Authorization") != want || ts.Calls() != 1 {
		t.Errorf("with a token cached: done=%v err=%v header %q (want %q), %d token requests", done, err, again.Header.Get("Authorization"), want, ts.Calls())
	}
}

// warm: true is taken by every kind whose credentials are known at start,
// and refused, naming the block's warm key, where they depend on the
// request.
func TestWarmIsRefusedWhereCredentialsDependOnTheRequest(t *testing.T) {
	cfg, err := config.Parse([]byte(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: https://api.example.com}
injectors:
  fixed: {kind: oauth2, warm: true, token_url: "https://auth.example/token", client_id: {value: c}, client_secret: {value: s}}
  mounts: {kind: oauth2, warm: true, token_url: "https://auth.example/token", client_id: {value: c}, client_secret: {value: s}, scopes: ["mount:{mount}"]}
  plain: {kind: static, warm: true, headers: {X-Key: {value: k}}}
  car: {kind: viss, warm: true, agts_url: "https://v.example/agts", ats_url: "https://v.example/ats", vin: "{header:X-Vin}", context: Independent+OEM+Cloud, proof: {value: p}, purpose: x}
  bad: {kind: static, warm: maybe, headers: {X-Key: {value: k}}}
routes:
  - {name: a, match: {path: "/mounts/{mount}/*"}, injector: mounts}
`))
	if err != nil {
		t.Fatal(err)
	}
	injs, err := BuildAll(cfg, Env{})
	for _, want := range []string{
		`injectors.mounts.warm: no credential is known before a request arrives: its scopes or audience read the request`,
		`injectors.car.warm: no credential is known before a request arrives: its tokens are per vehicle`,
		`injectors.bad.warm: expected true or false`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v\nwant %s", err, want)
		}
	}
	if injs["fixed"] == nil || injs["plain"] == nil {
		t.Errorf("warm blocks that can warm were not built: %v", injs)
	}
	if got := WarmNames(cfg); strings.Join(got, ",") != "car,fixed,mounts,plain" {
		t.Errorf("WarmNames: %v", got)
	}
}

// A token bound to a client certificate (RFC 8705 cnf.x5t#S256) is
// injected only into requests whose route presents that certificate: not
// into one whose connection presents none or another, whatever the issuer
// answered.
func TestOAuth2BoundTokensGoOnlyWithTheirCertificate(t *testing.T) {
	enc := base64.RawURLEncoding
	bound := enc.EncodeToString([]byte(`{"alg":"RS256"}`)) + "." + enc.EncodeToString([]byte(`{"sub":"c","cnf":{"x5t#S256":"thumb-A"}}`)) + ".sig"
	tokenURL, env := tokenEndpoint(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.FormValue("client_id") != "c" || r.FormValue("client_secret") != "" {
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":%q,"token_type":"Bearer","expires_in":3600}`, bound)
	}), nil)
	env.ClientCertFile = "/etc/authproxy/mtls/tls.crt" // as tls_client sets it
	o, err := NewOAuth2("mtls", OAuth2Config{TokenURL: tokenURL, ClientID: secretValue("c"), AuthStyle: "tls_client_auth"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if file, ok := o.BoundToCertificate(); !ok || file != env.ClientCertFile {
		t.Errorf("BoundToCertificate = %q, %v", file, ok)
	}
	for _, c := range []struct {
		thumb string
		ok    bool
	}{{"thumb-A", true}, {"", false}, {"thumb-B", false}} {
		req := newRequest(t, "https://api.example.com/", nil)
		req.Route, req.ClientCertThumbprint = "r", c.thumb
		err := o.Inject(req)
		switch {
		case c.ok && (err != nil || req.Header.Get("Authorization") != "Bearer "+bound):
			t.Errorf("the certificate it is bound to: %v", err)
		case !c.ok && (!errors.Is(err, ErrFailedPrecondition) || req.Header.Get("Authorization") != ""):
			t.Errorf("thumbprint %q: %v, header %q: want refused before it is sent", c.thumb, err, req.Header.Get("Authorization"))
		case !c.ok && strings.Contains(err.Error(), bound):
			t.Error("the error shows the token")
		}
	}
	if _, err := NewOAuth2("mtls", OAuth2Config{TokenURL: tokenURL, ClientID: secretValue("c"), AuthStyle: "tls_client_auth"},
		Env{Cache: env.Cache, HTTPClient: env.HTTPClient}); err == nil || !strings.Contains(err.Error(), "set tls_client") {
		t.Errorf("tls_client_auth without tls_client: %v", err)
	}
}

// Issued tokens (a client assertion, a subject and an actor token read
// from files) are scrubbed from the errors of an issuer that echoes its
// request, in every encoding it could use; a redirect is not followed with
// them; and a file is read again at the next fetch.
func TestOAuth2IssuedTokensStayOutOfErrors(t *testing.T) {
	enc := base64.RawURLEncoding
	jwtOf := func(sub string) string {
		return enc.EncodeToString([]byte(`{"alg":"RS256","kid":"k"}`)) + "." +
			enc.EncodeToString([]byte(fmt.Sprintf(`{"sub":%q,"exp":%d}`, sub, time.Now().Add(time.Hour).Unix()))) + ".c2lnbmF0dXJl"
	}
	dir := t.TempDir()
	write := func(name, tok string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	assertion, subject, actor := jwtOf("assertion-subject"), jwtOf("system:serviceaccount:reports:app"), jwtOf("actor")
	var redirected atomic.Int64
	target := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { redirected.Add(1) }))
	t.Cleanup(target.Close)
	var mode atomic.Value
	mode.Store("echo")
	var lastForm atomic.Value
	tokenURL, env := tokenEndpoint(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		lastForm.Store(r.PostForm.Encode())
		if mode.Load() == "redirect" {
			http.Redirect(w, r, target.URL+"/token", http.StatusTemporaryRedirect)
			return
		}
		// An issuer that echoes the request into its error, raw, encoded
		// and base64.
		body := r.PostForm.Encode()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(map[string]string{"error": "invalid_grant",
			"error_description": body + " " + url.QueryEscape(body) + " " + base64.StdEncoding.EncodeToString([]byte(body)) + " " + r.PostForm.Get("subject_token")})
	}), nil)
	o, err := NewOAuth2("sts", OAuth2Config{TokenURL: tokenURL, Grant: "token_exchange", ClientID: secretValue("c"),
		AuthStyle: "private_key_jwt", ClientAssertion: config.SecretSource{File: write("assertion", assertion)},
		SubjectToken: config.SecretSource{File: write("subject", subject)}, ActorToken: config.SecretSource{File: write("actor", actor)},
		ActorTokenType: "urn:ietf:params:oauth:token-type:jwt", Audience: "https://api.example.com"}, env)
	if err != nil {
		t.Fatal(err)
	}
	err = o.Inject(newRequest(t, "https://api.example.com/", nil))
	if !errors.Is(err, ErrCredentialRejected) {
		t.Fatalf("got %v", err)
	}
	for _, tok := range []string{assertion, subject, actor} {
		for _, form := range []string{tok, url.QueryEscape(tok), strings.SplitN(tok, ".", 2)[1]} {
			if strings.Contains(err.Error(), form) {
				t.Errorf("the error shows an issued token: %s", err)
			}
		}
	}
	if f, _ := lastForm.Load().(string); !strings.Contains(f, "client_assertion="+url.QueryEscape(assertion)) || !strings.Contains(f, "actor_token="+url.QueryEscape(actor)) {
		t.Errorf("the request did not carry the files' tokens: %s", f)
	}

	// Renewed on disk: the next fetch reads the new one; and a redirect
	// takes it nowhere.
	renewed := jwtOf("renewed")
	write("subject", renewed)
	mode.Store("redirect")
	o2, err := NewOAuth2("sts2", OAuth2Config{TokenURL: tokenURL, Grant: "token_exchange", ClientID: secretValue("c"), AuthStyle: "none",
		SubjectToken: config.SecretSource{File: filepath.Join(dir, "subject")}}, env)
	if err != nil {
		t.Fatal(err)
	}
	if err := o2.Inject(newRequest(t, "https://api.example.com/", nil)); !errors.Is(err, ErrCredentialRejected) || !strings.Contains(err.Error(), "never follows") {
		t.Errorf("a redirect: %v", err)
	}
	if f, _ := lastForm.Load().(string); !strings.Contains(f, "subject_token="+url.QueryEscape(renewed)) {
		t.Errorf("the renewed subject token was not read: %s", f)
	}
	if redirected.Load() != 0 {
		t.Error("the redirect was followed")
	}
}
