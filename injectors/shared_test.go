package injectors

import (
	"errors"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/internal/redistest"
	"github.com/authproxy/authproxy/sim"
	"github.com/authproxy/authproxy/tokencache"
	"github.com/authproxy/authproxy/tokencache/redisstore"
)

// Proxies that share a store (same encryption key and prefix) but whose
// configs give the same injector name and scopes other credentials never
// share a token: a proxy with a wrong client secret is refused by the
// issuer, never handed the token another proxy's right secret bought.
func TestSharedStoreNeverLendsATokenToOtherCredentials(t *testing.T) {
	srv := redistest.Start(t)
	ts := &sim.TokenServer{ClientID: "fleet-app", ClientSecret: "right-secret", Auth: "basic"}
	tokenURL, env := tokenEndpoint(t, ts, nil)
	build := func(secret string) *OAuth2 {
		t.Helper()
		st, err := redisstore.New(redisstore.Options{Address: srv.Addr, EncryptionKey: []byte(strings.Repeat("k", 32))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		e := env
		e.Cache = tokencache.New(tokencache.Options{Store: st})
		o, err := NewOAuth2("api", OAuth2Config{TokenURL: tokenURL, ClientID: secretValue("fleet-app"), ClientSecret: secretValue(secret),
			Scopes: []string{"read"}}, e)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	right, right2, wrong := build("right-secret"), build("right-secret"), build("wrong-secret")
	for _, o := range []*OAuth2{right, right2} {
		if err := o.Inject(newRequest(t, "https://api.example.com/x", nil)); err != nil {
			t.Fatal(err)
		}
	}
	if n := ts.Calls(); n != 1 {
		t.Errorf("two proxies with the same credentials made %d token requests, want 1 (shared)", n)
	}
	req := newRequest(t, "https://api.example.com/x", nil)
	err := wrong.Inject(req)
	if err == nil || !errors.Is(err, ErrCredentialRejected) || req.Header.Get("Authorization") != "" {
		t.Errorf("a proxy with a wrong secret: %v, Authorization %q; want its own refusal and no token", err, req.Header.Get("Authorization"))
	}
	if n := ts.Calls(); n != 2 {
		t.Errorf("%d token requests, want 2: the wrong secret is asked for itself", n)
	}
}
