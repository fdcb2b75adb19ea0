// Package oidcop runs the OpenID provider of github.com/zitadel/oidc
// (v3.52.0: its op package with the in-memory storage of
// example/server/storage) over TLS on loopback, for tests of the oauth2
// injector's grants that need no stored secret: RFC 7523 assertions and
// RFC 8693 token exchange. The library does the protocol: parsing and
// answering token requests, verifying assertions (op.VerifyJWTAssertion),
// client authentication, minting JWT access tokens and serving their keys.
// What this file adds is what an operator of that provider configures:
//
//   - a trust relationship with an outside issuer (a Kubernetes cluster's
//     service-account tokens): its keys, and the subjects it may speak for.
//     A token of it is accepted as the assertion of the JWT-bearer grant
//     (LegacyServer.JWTProfile verifies with the provider's own verifier,
//     which trusts only its registered service keys and iss == sub; here
//     op.NewJWTProfileVerifierKeySet with the outside keys and a subject
//     check), as a client assertion that authenticates Client (a
//     "federated credential"), and as the subject or actor token of a token
//     exchange (op.TokenExchangeTokensVerifierStorage);
//   - JWT access tokens for every grant, so that an upstream can verify
//     them against the provider's /keys.
package oidcop

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/authproxy/authproxy/sim"
)

// Trust is the outside issuer the provider trusts.
type Trust struct {
	Issuer  string             // its iss
	Keys    jose.JSONWebKeySet // its public keys
	Subject string             // the prefix of the subjects it may speak for
	// Client is the client a trusted client assertion authenticates as
	// (client credentials); its tokens' subject is the assertion's.
	Client string
	// ExchangeAudience is an audience a subject token must carry.
	ExchangeAudience string
	// TokenLife is the life of the access tokens it issues (default: the
	// example storage's 5 minutes).
	TokenLife time.Duration
}

// ExchangeClient and ExchangeSecret authenticate the token-exchange client
// (client_secret_basic).
const (
	ExchangeClient = "exchanger"
	ExchangeSecret = "exchanger-secret-8d1f"
)

// OP is a running provider.
type OP struct {
	Issuer   string // its issuer, https://127.0.0.1:PORT
	TokenURL string
	KeysURL  string

	mu       sync.Mutex
	requests []url.Values // the token requests' forms, in order
	srv      *httptest.Server
}

var registerOnce sync.Once

// Start runs a provider with a certificate from pki for 127.0.0.1, until
// the test ends.
func Start(t testing.TB, pki *sim.PKI, trust Trust) *OP {
	t.Helper()
	registerOnce.Do(func() { storage.RegisterClients(storage.WebClient(ExchangeClient, ExchangeSecret)) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &OP{Issuer: "https://" + ln.Addr().String()}
	o.TokenURL, o.KeysURL = o.Issuer+"/oauth/v2/token", o.Issuer+"/keys"
	st := &store{Storage: storage.NewStorage(storage.NewUserStore(o.Issuer)), trust: trust}
	provider, err := op.NewProvider(&op.Config{
		CryptoKey:               sha256.Sum256([]byte("oidcop test key")),
		AuthMethodPost:          true,
		AuthMethodPrivateKeyJWT: true,
		CodeMethodS256:          true,
	}, st, op.StaticIssuer(o.Issuer), op.WithAllowInsecure(), op.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	verifier := op.NewJWTProfileVerifierKeySet(keySet{trust.Keys}, o.Issuer, time.Hour, time.Second,
		op.SubjectCheck(func(r *oidc.JWTTokenRequest) error {
			if r.Issuer != trust.Issuer || !strings.HasPrefix(r.Subject, trust.Subject) {
				return oidc.ErrSubjectInvalid
			}
			return nil
		}))
	server := &legacy{LegacyServer: op.NewLegacyServer(provider, *op.DefaultEndpoints), provider: provider, store: st, verifier: verifier}
	handler := op.RegisterLegacyServer(server, op.AuthorizeCallbackHandler(provider))
	tokenPath := op.DefaultEndpoints.Token.Relative()
	o.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == tokenPath && r.ParseForm() == nil {
			o.mu.Lock()
			o.requests = append(o.requests, cloneForm(r.PostForm))
			o.mu.Unlock()
		}
		handler.ServeHTTP(w, r)
	}))
	o.srv.Listener.Close()
	o.srv.Listener = ln
	cfg, err := pki.ServerTLS("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	o.srv.TLS = cfg
	o.srv.StartTLS()
	t.Cleanup(o.srv.Close)
	o.TokenURL = o.Issuer + tokenPath
	return o
}

func cloneForm(f url.Values) url.Values {
	out := url.Values{}
	for k, v := range f {
		out[k] = append([]string(nil), v...)
	}
	return out
}

// Requests are the forms of the token requests so far.
func (o *OP) Requests() []url.Values {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]url.Values(nil), o.requests...)
}

// Claims verifies an access token the provider issued against its /keys
// (over TLS, as an upstream would) and returns its claims.
func (o *OP) Claims(ctx context.Context, client *http.Client, token string) (map[string]any, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.KeysURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var keys jose.JSONWebKeySet
	if err := decodeJSON(resp, &keys); err != nil {
		return nil, err
	}
	jws, err := jose.ParseSigned(token, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return nil, err
	}
	for _, k := range keys.Key(jws.Signatures[0].Header.KeyID) {
		if payload, err := jws.Verify(k.Key); err == nil {
			var claims map[string]any
			return claims, jsonUnmarshal(payload, &claims)
		}
	}
	return nil, errors.New("no key of the provider verifies the token")
}

// keySet is the outside issuer's keys as zitadel/oidc verifies with them.
type keySet struct{ keys jose.JSONWebKeySet }

func (k keySet) VerifySignature(_ context.Context, jws *jose.JSONWebSignature) ([]byte, error) {
	for _, key := range k.keys.Key(jws.Signatures[0].Header.KeyID) {
		if payload, err := jws.Verify(key.Key); err == nil {
			return payload, nil
		}
	}
	return nil, errors.New("no trusted key verifies the token")
}

// legacy is the provider's server, with the trust relationship for the
// JWT-bearer grant and for client assertions.
type legacy struct {
	*op.LegacyServer
	provider *op.Provider
	store    *store
	verifier *op.JWTProfileVerifier
}

// JWTProfile is LegacyServer.JWTProfile with the trusted issuer's verifier.
func (s *legacy) JWTProfile(ctx context.Context, r *op.Request[oidc.JWTProfileGrantRequest]) (*op.Response, error) {
	tokenRequest, err := op.VerifyJWTAssertion(ctx, r.Data.Assertion, s.verifier)
	if err != nil {
		return nil, oidc.ErrInvalidRequest().WithParent(err).WithDescription("assertion invalid")
	}
	tokenRequest.Scopes = r.Data.Scope
	resp, err := op.CreateJWTTokenResponse(ctx, tokenRequest, s.provider)
	if err != nil {
		return nil, err
	}
	return op.NewResponse(resp), nil
}

// VerifyClient takes a trusted assertion as the authentication of
// Trust.Client (client credentials), and leaves the rest to the library.
func (s *legacy) VerifyClient(ctx context.Context, r *op.Request[op.ClientCredentials]) (op.Client, error) {
	if r.Data.ClientAssertionType != oidc.ClientAssertionTypeJWTAssertion {
		c, err := s.LegacyServer.VerifyClient(ctx, r)
		if err != nil {
			return nil, err
		}
		return jwtTokens{c}, nil
	}
	req, err := op.VerifyJWTAssertion(ctx, r.Data.ClientAssertion, s.verifier)
	if err != nil || s.store.trust.Client == "" || (r.Data.ClientID != "" && r.Data.ClientID != s.store.trust.Client) {
		return nil, oidc.ErrInvalidClient().WithDescription("client assertion invalid").WithParent(err)
	}
	return federated{jwtTokens{storage.WebClient(s.store.trust.Client, "")}, req.Subject}, nil
}

// ClientCredentialsExchange issues the token of a federated client for the
// assertion's subject; other clients go to the library.
func (s *legacy) ClientCredentialsExchange(ctx context.Context, r *op.ClientRequest[oidc.ClientCredentialsRequest]) (*op.Response, error) {
	f, ok := r.Client.(federated)
	if !ok {
		return s.LegacyServer.ClientCredentialsExchange(ctx, r)
	}
	req := &oidc.JWTTokenRequest{Subject: f.subject, Audience: []string{f.GetID()}, Scopes: r.Data.Scope}
	resp, err := op.CreateClientCredentialsTokenResponse(ctx, req, s.provider, f)
	if err != nil {
		return nil, err
	}
	return op.NewResponse(resp), nil
}

// store is the example storage, with the trusted issuer's tokens taken as
// exchange subjects, and JWT access tokens.
type store struct {
	*storage.Storage
	trust Trust
}

var _ op.TokenExchangeTokensVerifierStorage = (*store)(nil)

func (s *store) GetClientByClientID(ctx context.Context, id string) (op.Client, error) {
	c, err := s.Storage.GetClientByClientID(ctx, id)
	if err != nil {
		return nil, err
	}
	return jwtTokens{c}, nil
}

// CreateAccessToken is the example storage's, with Trust.TokenLife.
func (s *store) CreateAccessToken(ctx context.Context, r op.TokenRequest) (string, time.Time, error) {
	id, exp, err := s.Storage.CreateAccessToken(ctx, r)
	if err == nil && s.trust.TokenLife > 0 {
		exp = time.Now().Add(s.trust.TokenLife)
	}
	return id, exp, err
}

func (s *store) JWTProfileTokenType(context.Context, op.TokenRequest) (op.AccessTokenType, error) {
	return op.AccessTokenTypeJWT, nil
}

func (s *store) ValidateJWTProfileScopes(_ context.Context, _ string, scopes []string) ([]string, error) {
	return scopes, nil
}

func (s *store) VerifyExchangeSubjectToken(ctx context.Context, token string, tokenType oidc.TokenType) (string, string, map[string]any, error) {
	return s.verifyOutside(ctx, token, tokenType)
}

func (s *store) VerifyExchangeActorToken(ctx context.Context, token string, tokenType oidc.TokenType) (string, string, map[string]any, error) {
	return s.verifyOutside(ctx, token, tokenType)
}

// verifyOutside verifies a JWT of the trusted issuer: signature, iss, exp,
// the subject prefix, and (if set) the exchange audience.
func (s *store) verifyOutside(ctx context.Context, token string, tokenType oidc.TokenType) (string, string, map[string]any, error) {
	if tokenType != oidc.JWTTokenType {
		return "", "", nil, errors.New("only JWTs of the trusted issuer are exchanged")
	}
	claims := new(oidc.JWTTokenRequest)
	payload, err := oidc.ParseToken(token, claims)
	if err != nil {
		return "", "", nil, err
	}
	if err := oidc.CheckSignature(ctx, token, payload, claims, nil, keySet{s.trust.Keys}); err != nil {
		return "", "", nil, err
	}
	if err := oidc.CheckExpiration(claims, time.Second); err != nil {
		return "", "", nil, err
	}
	if claims.Issuer != s.trust.Issuer || !strings.HasPrefix(claims.Subject, s.trust.Subject) {
		return "", "", nil, oidc.ErrSubjectInvalid
	}
	if a := s.trust.ExchangeAudience; a != "" && oidc.CheckAudience(claims, a) != nil {
		return "", "", nil, errors.New("the subject token is not for this provider")
	}
	return token, claims.Subject, map[string]any{"iss": claims.Issuer}, nil
}

// ValidateTokenExchangeRequest lets the trusted issuer's subjects exchange
// their tokens for access tokens (the example storage asks for an admin
// user of its own).
func (s *store) ValidateTokenExchangeRequest(_ context.Context, r op.TokenExchangeRequest) error {
	if !strings.HasPrefix(r.GetExchangeSubject(), s.trust.Subject) {
		return errors.New("the subject may not exchange tokens here")
	}
	if r.GetRequestedTokenType() == "" {
		r.SetRequestedTokenType(oidc.AccessTokenType)
	}
	return nil
}

// GetPrivateClaimsFromTokenExchangeRequest puts the requested audience and
// resource in the exchanged token, for the upstream to check.
func (s *store) GetPrivateClaimsFromTokenExchangeRequest(_ context.Context, r op.TokenExchangeRequest) (map[string]any, error) {
	claims := map[string]any{"requested_audience": r.GetAudience(), "resource": r.GetResourses()}
	if a := r.GetExchangeActor(); a != "" {
		claims["act"] = map[string]any{"sub": a}
	}
	return claims, nil
}

// jwtTokens makes a client's access tokens JWTs.
type jwtTokens struct{ op.Client }

func (jwtTokens) AccessTokenType() op.AccessTokenType { return op.AccessTokenTypeJWT }

// federated is Trust.Client, authenticated by a trusted assertion for
// subject, for client credentials.
type federated struct {
	jwtTokens
	subject string
}

func (federated) GrantTypes() []oidc.GrantType {
	return []oidc.GrantType{oidc.GrantTypeClientCredentials}
}

func decodeJSON(resp *http.Response, v any) error {
	if resp.StatusCode != http.StatusOK {
		return errors.New("the provider answered " + resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(v)
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
