package sim

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// TokenServer is an OAuth2 token endpoint (client credentials) as OBH's
// Zitadel and Obelisk run it. It checks the exact request — grant type,
// client authentication in the configured style, a signed client
// assertion — counts the tokens it issues per scope, and can be taken
// down. It is safe for concurrent use once configured.
type TokenServer struct {
	ClientID, ClientSecret string
	// Auth is the client authentication it accepts: "basic" (id and
	// secret form-encoded inside Basic, RFC 6749 §2.3.1), "basic-raw",
	// "post", or "private_key_jwt" (checked against PublicKey and Audience).
	Auth      string
	PublicKey crypto.PublicKey
	Audience  string
	// JSONBody makes it read a JSON body instead of a form (Obelisk).
	JSONBody bool
	// RequireScopes are scopes every request must include.
	RequireScopes []string
	// ExpiresIn is the lifetime it grants (default 3600 s); with Obelisk
	// set it answers as Obelisk does (token, max_idle_time, max_valid_time).
	ExpiresIn int
	// ScopeLife overrides ExpiresIn for the scopes it names (set it before
	// the first request).
	ScopeLife map[string]int
	Obelisk   bool
	MaxValid  int
	// MaxIdle is the max_idle_time an Obelisk answer gives; zero sends
	// expires_in, as Obelisk does. A shorter one is a server configured
	// otherwise: the client must still honour it.
	MaxIdle int
	// Now is its clock (default time.Now).
	Now func() time.Time
	// Mode makes it answer as a particular server does:
	//   - "" checks the request as configured above;
	//   - "zitadel" follows zitadel/oidc's op package (token_request.go
	//     Exchange, token_client_credentials.go, token_jwt_profile.go,
	//     verifier_jwt_profile.go, error.go RequestError): client_credentials
	//     authenticates with a secret only (form or form-encoded Basic; a
	//     client_assertion is never read, so it fails with invalid_client,
	//     401), and the JWT-bearer grant takes an RS256 assertion signed
	//     with KeyID's key (PublicKey) whose iss = sub = UserID and aud
	//     holds Issuer, not expired, iat not ahead and at most MaxAgeIAT old
	//     (failures: 400 invalid_grant); grant_type missing is 400
	//     invalid_request, another grant 400 unsupported_grant_type;
	//   - "strict" is a strict generic server: scopes outside AllowedScopes
	//     are 400 invalid_scope, a body that is not a form (or none) is 400
	//     invalid_request, it echoes scope, says token_type "bearer" and
	//     answers application/json;charset=UTF-8.
	Mode          string
	Issuer        string // zitadel: its issuer URL, the assertion's audience
	UserID, KeyID string // zitadel: the service user and the id of its key
	MaxAgeIAT     time.Duration
	AllowedScopes []string // strict

	down     atomic.Int32 // HTTP status to fail with, 0 = up
	delay    atomic.Int64 // nanoseconds to wait before answering
	calls    atomic.Int64
	mu       sync.Mutex
	perScope map[string]int
	issued   map[string]time.Time // token -> expiry
	seenJTI  map[string]bool
}

// SetDown makes every request fail with status (0 brings it back).
func (s *TokenServer) SetDown(status int) { s.down.Store(int32(status)) }

// SetDelay makes it wait d before answering.
func (s *TokenServer) SetDelay(d time.Duration) { s.delay.Store(int64(d)) }

// Calls reports how many token requests it received.
func (s *TokenServer) Calls() int64 { return s.calls.Load() }

// Scopes reports how many tokens it issued per scope string.
func (s *TokenServer) Scopes() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.perScope))
	for k, v := range s.perScope {
		out[k] = v
	}
	return out
}

func (s *TokenServer) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func oauthError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}

func (s *TokenServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.calls.Add(1)
	if d := time.Duration(s.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	if st := int(s.down.Load()); st != 0 {
		http.Error(w, "token service unavailable", st)
		return
	}
	switch s.Mode {
	case "zitadel":
		s.serveZitadel(w, r)
		return
	case "strict":
		s.serveStrict(w, r)
		return
	}
	if r.Method != http.MethodPost {
		oauthError(w, http.StatusMethodNotAllowed, "invalid_request", "POST only")
		return
	}
	form := url.Values{}
	if s.JSONBody {
		var m map[string]string
		if !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") || json.NewDecoder(r.Body).Decode(&m) != nil {
			oauthError(w, http.StatusBadRequest, "invalid_request", "expected a JSON body")
			return
		}
		for k, v := range m {
			form.Set(k, v)
		}
	} else {
		if r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" || r.ParseForm() != nil {
			oauthError(w, http.StatusBadRequest, "invalid_request", "expected a form body")
			return
		}
		form = r.PostForm
	}
	if form.Get("grant_type") != "client_credentials" {
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "client_credentials only")
		return
	}
	if err := s.authenticate(r, form); err != nil {
		oauthError(w, http.StatusUnauthorized, "invalid_client", err.Error())
		return
	}
	scope := form.Get("scope")
	have := strings.Fields(scope)
	for _, req := range s.RequireScopes {
		found := false
		for _, h := range have {
			found = found || h == req
		}
		if !found {
			oauthError(w, http.StatusBadRequest, "invalid_scope", "missing scope "+req)
			return
		}
	}
	s.issue(w, scope, "Bearer", "application/json", false)
}

// issue answers with a new token for scope.
func (s *TokenServer) issue(w http.ResponseWriter, scope, tokenType, contentType string, echoScope bool) {
	life := s.ExpiresIn
	if l, ok := s.ScopeLife[scope]; ok {
		life = l
	}
	if life == 0 {
		life = 3600
	}
	s.mu.Lock()
	if s.perScope == nil {
		s.perScope, s.issued = map[string]int{}, map[string]time.Time{}
	}
	s.perScope[scope]++
	token := fmt.Sprintf("at-%d-%x", s.calls.Load(), sha256.Sum256([]byte(scope)))[:32]
	expiry := s.now().Add(time.Duration(life) * time.Second)
	if s.Obelisk && s.MaxValid > 0 && s.MaxValid < life {
		expiry = s.now().Add(time.Duration(s.MaxValid) * time.Second)
	}
	s.issued[token] = expiry
	s.mu.Unlock()
	resp := map[string]any{"token_type": tokenType, "expires_in": life}
	if echoScope {
		resp["scope"] = scope
	}
	if s.Obelisk {
		idle := life
		if s.MaxIdle > 0 {
			idle = s.MaxIdle
		}
		resp = map[string]any{"token_type": "bearer", "token": token, "expires_in": life, "max_idle_time": idle, "max_valid_time": s.MaxValid, "id_token": "x.y.z"}
	} else {
		resp["access_token"] = token
	}
	w.Header().Set("Content-Type", contentType)
	_ = json.NewEncoder(w).Encode(resp)
}

// serveZitadel answers as zitadel/oidc's op.Exchange does.
func (s *TokenServer) serveZitadel(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request", "error parsing form")
		return
	}
	switch gt := r.FormValue("grant_type"); gt {
	case "":
		oauthError(w, http.StatusBadRequest, "invalid_request", "grant_type missing")
	case "client_credentials":
		// ParseClientCredentialsRequest: client_id/client_secret from the
		// form, or from Basic (each query-unescaped); never client_assertion.
		id, secret := r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
		if bid, bsecret, ok := r.BasicAuth(); ok {
			var err1, err2 error
			id, err1 = url.QueryUnescape(bid)
			secret, err2 = url.QueryUnescape(bsecret)
			if err1 != nil || err2 != nil {
				oauthError(w, http.StatusUnauthorized, "invalid_client", "invalid basic auth header")
				return
			}
		}
		if id != s.ClientID || secret == "" || secret != s.ClientSecret {
			oauthError(w, http.StatusUnauthorized, "invalid_client", "") // AuthorizeClientCredentialsClient
			return
		}
		s.issue(w, r.PostForm.Get("scope"), "Bearer", "application/json", true)
	case "urn:ietf:params:oauth:grant-type:jwt-bearer":
		if err := s.verifyJWTProfile(r.PostForm.Get("assertion")); err != nil {
			oauthError(w, http.StatusBadRequest, "invalid_grant", err.Error()) // DefaultToServerError
			return
		}
		s.issue(w, r.PostForm.Get("scope"), "Bearer", "application/json", true)
	default:
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", gt+" not supported")
	}
}

// verifyJWTProfile is verifier_jwt_profile.go VerifyJWTAssertion: audience,
// expiration, issued-at, subject = issuer, then the signature of the key
// the issuer's kid names.
func (s *TokenServer) verifyJWTProfile(assertion string) error {
	parts := strings.Split(assertion, ".")
	if len(parts) != 3 {
		return fmt.Errorf("malformed jwt, must have 3 parts")
	}
	var header struct{ Alg, Kid string }
	var claims struct {
		Iss, Sub string
		Aud      json.RawMessage
		Iat, Exp int64
	}
	hb, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	cb, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil || json.Unmarshal(hb, &header) != nil || json.Unmarshal(cb, &claims) != nil {
		return fmt.Errorf("malformed jwt payload")
	}
	var auds []string
	if json.Unmarshal(claims.Aud, &auds) != nil {
		var one string
		_ = json.Unmarshal(claims.Aud, &one)
		auds = []string{one}
	}
	now := s.now()
	maxAge := s.MaxAgeIAT
	if maxAge == 0 {
		maxAge = time.Hour
	}
	found := false
	for _, a := range auds {
		found = found || a == s.Issuer
	}
	switch {
	case !found:
		return fmt.Errorf("audience is not valid: Audience must contain client_id %q", s.Issuer)
	case !now.Before(time.Unix(claims.Exp, 0)):
		return fmt.Errorf("token has expired")
	case claims.Iat == 0:
		return fmt.Errorf("issuedAt of token is missing")
	case time.Unix(claims.Iat, 0).After(now.Round(time.Second)):
		return fmt.Errorf("issuedAt of token is in the future")
	case time.Unix(claims.Iat, 0).Before(now.Add(-maxAge).Round(time.Second)):
		return fmt.Errorf("issuedAt of token is to old")
	case claims.Iss != claims.Sub:
		return fmt.Errorf("subject must be the same as issuer")
	}
	k, ok := s.PublicKey.(*rsa.PublicKey)
	if claims.Iss != s.UserID || header.Kid != s.KeyID || !ok {
		return fmt.Errorf("error fetching keys: key %q of %q not found", header.Kid, claims.Iss)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if header.Alg != "RS256" || rsa.VerifyPKCS1v15(k, crypto.SHA256, digest[:], sig) != nil {
		return fmt.Errorf("signature is invalid")
	}
	return nil
}

// serveStrict answers as a strict generic server (such as Keycloak or
// Hydra) does.
func (s *TokenServer) serveStrict(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") || r.ParseForm() != nil || len(r.PostForm) == 0 {
		oauthError(w, http.StatusBadRequest, "invalid_request", "the request must be a form")
		return
	}
	if gt := r.PostForm.Get("grant_type"); gt != "client_credentials" {
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "")
		return
	}
	if err := s.authenticate(r, r.PostForm); err != nil {
		oauthError(w, http.StatusUnauthorized, "invalid_client", "")
		return
	}
	scope := r.PostForm.Get("scope")
	for _, sc := range strings.Fields(scope) {
		allowed := false
		for _, a := range s.AllowedScopes {
			allowed = allowed || a == sc
		}
		if !allowed {
			oauthError(w, http.StatusBadRequest, "invalid_scope", "")
			return
		}
	}
	s.issue(w, scope, "bearer", "application/json;charset=UTF-8", true)
}

func (s *TokenServer) authenticate(r *http.Request, form url.Values) error {
	switch s.Auth {
	case "basic", "basic-raw", "":
		id, secret, ok := r.BasicAuth()
		if !ok {
			return fmt.Errorf("Basic authentication required")
		}
		if s.Auth != "basic-raw" {
			var err1, err2 error
			id, err1 = url.QueryUnescape(id)
			secret, err2 = url.QueryUnescape(secret)
			if err1 != nil || err2 != nil {
				return fmt.Errorf("Basic credentials are not form-encoded")
			}
		}
		if id != s.ClientID || secret != s.ClientSecret || form.Has("client_secret") {
			return fmt.Errorf("bad client credentials")
		}
	case "post":
		if _, _, ok := r.BasicAuth(); ok || form.Get("client_id") != s.ClientID || form.Get("client_secret") != s.ClientSecret {
			return fmt.Errorf("bad client credentials")
		}
	case "private_key_jwt":
		if form.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
			return fmt.Errorf("client_assertion_type missing")
		}
		if form.Has("client_secret") {
			return fmt.Errorf("client_secret sent with an assertion")
		}
		return s.checkAssertion(form.Get("client_assertion"))
	default:
		return fmt.Errorf("server misconfigured: auth %q", s.Auth)
	}
	return nil
}

// checkAssertion verifies an RFC 7523 client assertion: signature (RS256,
// ES256), iss = sub = client id, aud, exp in the future, unique jti.
func (s *TokenServer) checkAssertion(jwt string) error {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return fmt.Errorf("assertion is not a JWS")
	}
	var header struct{ Alg string }
	var claims struct {
		Iss, Sub, Aud, Jti string
		Iat, Exp           int64
	}
	hb, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	cb, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil || json.Unmarshal(hb, &header) != nil || json.Unmarshal(cb, &claims) != nil {
		return fmt.Errorf("assertion does not decode")
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	switch k := s.PublicKey.(type) {
	case *rsa.PublicKey:
		if header.Alg != "RS256" || rsa.VerifyPKCS1v15(k, crypto.SHA256, digest[:], sig) != nil {
			return fmt.Errorf("assertion signature does not verify")
		}
	case *ecdsa.PublicKey:
		if header.Alg != "ES256" || len(sig) != 64 ||
			!ecdsa.Verify(k, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
			return fmt.Errorf("assertion signature does not verify")
		}
	default:
		return fmt.Errorf("server has no public key")
	}
	now := s.now().Unix()
	switch {
	case claims.Iss != s.ClientID || claims.Sub != s.ClientID:
		return fmt.Errorf("assertion iss/sub is not the client")
	case claims.Aud != s.Audience:
		return fmt.Errorf("assertion aud %q is not %q", claims.Aud, s.Audience)
	case claims.Exp <= now || claims.Exp > now+600:
		return fmt.Errorf("assertion expired or too long-lived")
	case claims.Jti == "":
		return fmt.Errorf("assertion has no jti")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seenJTI == nil {
		s.seenJTI = map[string]bool{}
	}
	if s.seenJTI[claims.Jti] {
		return fmt.Errorf("assertion jti replayed")
	}
	s.seenJTI[claims.Jti] = true
	return nil
}

// Revoke makes the server treat token as invalid from now on.
func (s *TokenServer) Revoke(token string) {
	s.mu.Lock()
	delete(s.issued, token)
	s.mu.Unlock()
}

// Issued lists the tokens the server has issued and not revoked.
func (s *TokenServer) Issued() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Collect(maps.Keys(s.issued))
}

// Valid reports whether token was issued here and is still live.
func (s *TokenServer) Valid(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.issued[token]
	return ok && s.now().Before(exp)
}

// RequireToken is resource-server middleware: requests must carry
// `Authorization: Bearer <a live token from s>`, or they get 401.
func (s *TokenServer) RequireToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || !s.Valid(tok) {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			http.Error(w, "sim: invalid or expired token", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}
