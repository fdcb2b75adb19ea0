package injectors

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/sync/semaphore"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/tokencache"
)

// VISSConfig is the `kind: viss` block: W3C VISS v2 access control. An
// access grant token (AGT) comes from the AGTS; when an ATS is configured
// it is exchanged there for an access token.
type VISSConfig struct {
	Kind    string `yaml:"kind"`
	AGTSURL string `yaml:"agts_url"` // the AGTS endpoint, such as https://agts.example.com:7443/agts
	ATSURL  string `yaml:"ats_url"`  // the ATS endpoint (optional), such as https://ats.example.com:8443/ats
	// VIN is a template: a literal, {name} (a path value), {header:Name}.
	VIN     string              `yaml:"vin"`
	Context string              `yaml:"context"` // user+app+device roles, such as Independent+OEM+Cloud
	Proof   config.SecretSource `yaml:"proof"`   // the client's proof of its context
	Purpose string              `yaml:"purpose"` // for the ATS
	// LongTerm makes the AGT long-term, bound to the proxy's key.
	LongTerm *VISSLongTerm `yaml:"long_term"`
	// ATLifetime applies when the access token does not say (default 1h).
	ATLifetime config.Duration `yaml:"at_lifetime"`
	Header     string          `yaml:"header"` // default Authorization
	Prefix     *string         `yaml:"prefix"` // default "Bearer "
	// MaxConcurrentRequests bounds the requests in flight to each issuer
	// (AGTS, ATS) at once (default 1): the reference AGTS mixes up
	// concurrent requests. Waiting requests go in order, within the token
	// cache's fetch_timeout.
	MaxConcurrentRequests int `yaml:"max_concurrent_requests"`
	// AllowPlaintextIssuer permits http:// AGTS and ATS URLs (the
	// reference's default ports 7500 and 8600 on a vehicle network): the
	// proof and the tokens then travel in the clear. Logged at start.
	AllowPlaintextIssuer bool `yaml:"allow_plaintext_issuer"`
}

// VISSLongTerm configures proof of possession.
type VISSLongTerm struct {
	// KeyFile holds the ES256 (P-256) private key, PEM; it is generated
	// (mode 0600) on first use when it does not exist.
	KeyFile string `yaml:"key_file"`
	// ClaimEncoding writes the PoP's iat as a JSON "string" (default; the
	// reference server reads claims as strings) or a "number" (RFC 9449).
	ClaimEncoding string `yaml:"claim_encoding"`
	AGTSAudience  string `yaml:"agts_audience"` // PoP aud to the AGTS, default vissv2/agts
	// ATSAudience is the PoP aud to the ATS, default vissv2/agts: the
	// reference ATS checks the AGTS's audience (atServer.go validatePop).
	ATSAudience string `yaml:"ats_audience"`
}

// VISS injects a VISS access token (or AGT). It is safe for concurrent use.
type VISS struct {
	name      string
	cache     *tokencache.Cache
	client    *http.Client
	now       func() time.Time
	agtsURL   string
	atsURL    string
	vin       template
	context   string
	proof     config.Secret
	purpose   string
	atLife    time.Duration
	header    string
	prefix    string
	longTerm  *VISSLongTerm
	keyOnce   sync.Once
	key       *ecdsa.PrivateKey
	keyErr    error
	numberIat bool
	secrets   scrubber            // the proof, in each encoding
	agtsSlots *semaphore.Weighted // requests in flight to the AGTS
	atsSlots  *semaphore.Weighted // ... and to the ATS
	warnings  []string
}

var (
	_ Injector         = (*VISS)(nil)
	_ ResponseObserver = (*VISS)(nil)
	_ Runner           = (*VISS)(nil)
	_ PathParamUser    = (*VISS)(nil)
	_ StartWarner      = (*VISS)(nil)
)

// VISS roles, as the reference AGTS accepts them.
var (
	vissUsers   = []string{"OEM", "Dealer", "Independent", "Owner", "Driver", "Passenger"}
	vissApps    = []string{"OEM", "Third party"}
	vissDevices = []string{"Vehicle", "Nomadic", "Cloud"}
)

// NewVISS validates cfg; an existing long-term key file is read now, a
// missing one is generated on first use. No network I/O.
func NewVISS(name string, cfg VISSConfig, env Env) (*VISS, error) {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, config.Errorf(path, format, args...)) }
	v := &VISS{name: name, cache: env.Cache, client: noRedirects(env.HTTPClient), now: env.Now,
		context: cfg.Context, purpose: cfg.Purpose, atLife: cfg.ATLifetime.D(time.Hour), longTerm: cfg.LongTerm}
	if v.now == nil {
		v.now = time.Now
	}
	checkURL := func(path, s string, required bool) string {
		u, err := url.Parse(s)
		switch {
		case s == "":
			if required {
				add(path, "required")
			}
		case config.HasUserInfo(s):
			add(path, "%q: takes no user info (it would be sent and shown in messages)", config.RedactURL(s))
		case err != nil || u.Host == "":
			add(path, "%q is not an absolute URL", s)
		case u.Scheme == "http" && cfg.AllowPlaintextIssuer:
			v.warnings = append(v.warnings, fmt.Sprintf("injector %q: %s is plain HTTP (allow_plaintext_issuer): the proof of context and the tokens travel unencrypted", name, path))
		case u.Scheme != "https":
			add(path, "must be https (or set allow_plaintext_issuer: true for a plain-HTTP issuer on a trusted network)")
		}
		return s
	}
	v.agtsURL = checkURL("agts_url", cfg.AGTSURL, true)
	v.atsURL = checkURL("ats_url", cfg.ATSURL, false)
	if v.atsURL != "" && v.purpose == "" {
		add("purpose", "required with ats_url")
	}
	var err error
	if v.vin, err = parseTemplate(cfg.VIN); err != nil {
		add("vin", "%v", err)
	} else if cfg.VIN == "" {
		add("vin", "required (a VIN, or a template such as {vin} or {header:X-Vin})")
	}
	roles := strings.Split(cfg.Context, "+")
	if len(roles) != 3 || !slices.Contains(vissUsers, roles[0]) || !slices.Contains(vissApps, roles[1]) || !slices.Contains(vissDevices, roles[2]) {
		add("context", "%q must be user+app+device with user in %s, app in %s, device in %s",
			cfg.Context, strings.Join(vissUsers, "|"), strings.Join(vissApps, "|"), strings.Join(vissDevices, "|"))
	}
	if v.proof, err = env.secret(cfg.Proof); err != nil {
		add("proof", "%v", err)
	}
	if lt := cfg.LongTerm; lt != nil {
		if lt.KeyFile == "" {
			add("long_term.key_file", "required")
		} else if _, err := os.Stat(lt.KeyFile); err == nil && !env.SkipSecrets {
			if v.key, err = loadECKey(lt.KeyFile); err != nil {
				add("long_term.key_file", "%v", err)
			}
		}
		switch lt.ClaimEncoding {
		case "", "string":
		case "number":
			v.numberIat = true
		default:
			add("long_term.claim_encoding", "string or number, not %q", lt.ClaimEncoding)
		}
		if lt.AGTSAudience == "" {
			lt.AGTSAudience = "vissv2/agts"
		}
		if lt.ATSAudience == "" {
			lt.ATSAudience = "vissv2/agts"
		}
	}
	v.header = http.CanonicalHeaderKey(cfg.Header)
	if cfg.Header == "" {
		v.header = "Authorization"
	} else if !httpguts.ValidHeaderFieldName(cfg.Header) {
		add("header", "invalid header name")
	}
	v.prefix = "Bearer "
	if cfg.Prefix != nil {
		v.prefix = *cfg.Prefix
	}
	slots := cfg.MaxConcurrentRequests
	if slots < 0 {
		add("max_concurrent_requests", "must not be negative")
	}
	if slots <= 0 {
		slots = 1
	}
	v.agtsSlots, v.atsSlots = semaphore.NewWeighted(int64(slots)), semaphore.NewWeighted(int64(slots))
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if v.cache == nil || v.client == nil {
		return nil, errors.New("viss: built without a token cache or HTTP client")
	}
	v.secrets.add(v.proof.Reveal())
	keyPub := ""
	switch {
	case v.key != nil: // a long-term AGT is bound to this key: only proxies holding it share one
		if der, err := x509.MarshalPKIXPublicKey(v.key.Public()); err == nil {
			keyPub = string(der)
		}
	case cfg.LongTerm != nil:
		// The key is generated on first use, this proxy's own: its tokens
		// are shared with no other proxy.
		keyPub = rand.Text()
	}
	v.cache.Identify(name, "viss", v.agtsURL, v.atsURL, digest(v.proof.Reveal()), keyPub)
	return v, nil
}

// Headers implements Injector.
func (v *VISS) Headers() []string { return []string{v.header} }

// CanWarm implements Warmer: VISS tokens are per vehicle, known only from
// a request.
func (v *VISS) CanWarm() string { return "its tokens are per vehicle (VIN), named by each request" }

// Warm implements Warmer (never called: CanWarm refuses).
func (v *VISS) Warm(context.Context) error { return nil }

// Warmed implements Warmer.
func (v *VISS) Warmed() bool { return false }

// PathParams implements PathParamUser.
func (v *VISS) PathParams() []string { return v.vin.pathParams() }

// Run implements Runner: the shared cache's background work.
func (v *VISS) Run(ctx context.Context) error { return v.cache.Run(ctx) }

// Inject implements Injector: the access token for the request's VIN (or
// the AGT itself when no ATS is configured).
func (v *VISS) Inject(req *Request) error {
	vin, err := v.vin.render(req)
	if err != nil {
		return err
	}
	key, fetch := v.agtEntry(vin)
	if v.atsURL != "" {
		key, fetch = v.atEntry(vin)
	}
	tok, err := v.cache.Get(req.Context(), key, fetch)
	if err != nil {
		return tokenErr(req, err)
	}
	req.Header[v.header] = []string{v.prefix + tok.Value.Reveal()}
	return nil
}

// StartWarnings implements StartWarner.
func (v *VISS) StartWarnings() []string { return v.warnings }

// ObserveResponse implements ResponseObserver: a 401, or a token error in
// a 200 body as the reference data server sends it
// ({"error":{"number":"401","reason":"invalid_token",…}}), drops the
// token sent, so the request is sent once more with a new one (the AGT is
// kept while it is valid). Only a complete body of at most MaxObservedBody
// bytes (a known Content-Length; the reference's error answers are well
// under 1 KiB) is read; it goes on to the client whole.
// A refusal for the purpose ("Permission denied…") is not a dead token.
func (v *VISS) ObserveResponse(req *Request, resp *http.Response) bool {
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
	case resp.StatusCode == http.StatusOK && resp.ContentLength > 0 && resp.ContentLength <= MaxObservedBody:
		if !vissTokenError(peekBody(resp, resp.ContentLength)) {
			return false
		}
	default:
		return false
	}
	vin, err := v.vin.render(req)
	if err != nil {
		return false
	}
	key, _ := v.agtEntry(vin)
	if v.atsURL != "" {
		key, _ = v.atEntry(vin)
	}
	return v.cache.Invalidate(key, strings.TrimPrefix(req.Header.Get(v.header), v.prefix))
}

// vissTokenError reports whether a data server's answer says the token
// is dead (invalid, expired, revoked: the reference answers every one with
// reason invalid_token and a message saying which), rather than refused
// for what it may read.
func vissTokenError(body []byte) bool {
	var r struct {
		Error *struct {
			Number  json.RawMessage `json:"number"`
			Reason  string          `json:"reason"`
			Message string          `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &r) != nil || r.Error == nil {
		return false
	}
	n := strings.Trim(string(r.Error.Number), `" `)
	return n == "401" && (r.Error.Reason == "invalid_token" || r.Error.Reason == "expired_token") &&
		!strings.HasPrefix(r.Error.Message, "Permission denied")
}

func (v *VISS) agtEntry(vin string) (string, tokencache.FetchFunc) {
	return v.name + "\x00agt\x00" + vin + "\x00" + v.context, func(ctx context.Context) (tokencache.Token, error) {
		return v.fetchAGT(ctx, vin)
	}
}

func (v *VISS) atEntry(vin string) (string, tokencache.FetchFunc) {
	return v.name + "\x00at\x00" + vin + "\x00" + v.context + "\x00" + v.purpose, func(ctx context.Context) (tokencache.Token, error) {
		agtKey, agtFetch := v.agtEntry(vin)
		agt, err := v.cache.Get(ctx, agtKey, agtFetch) // reused until its own expiry
		if err != nil {
			return tokencache.Token{}, err
		}
		return v.exchange(ctx, agt.Value.Reveal())
	}
}

// fetchAGT asks the AGTS for an access grant token.
func (v *VISS) fetchAGT(ctx context.Context, vin string) (tokencache.Token, error) {
	tok, err := v.post(ctx, "AGTS", v.agtsURL, v.agtsSlots, func() (http.Header, map[string]string, []string, error) {
		body := map[string]string{"vin": vin, "context": v.context, "proof": v.proof.Reveal()}
		header := http.Header{}
		if v.longTerm == nil {
			return header, body, nil, nil
		}
		pop, thumb, err := v.pop(v.longTerm.AGTSAudience)
		if err != nil {
			return nil, nil, nil, err
		}
		header.Set("PoP", pop) // its presence is what makes the AGT long-term
		body["key"] = thumb
		return header, body, []string{pop}, nil
	})
	if err != nil {
		return tokencache.Token{}, err
	}
	exp, err := jwtExpiry(tok)
	if err != nil {
		return tokencache.Token{}, fmt.Errorf("%w: injector %q: the AGTS's token: %v", ErrCredentialUnavailable, v.name, err)
	}
	return tokencache.Token{Value: config.NewSecret(tok), Expiry: exp}, nil
}

// exchange trades an AGT for an access token at the ATS: {"action":
// "at-request", "agToken", "purpose", "pop"} (the reference answers a
// request without the action as unknown).
func (v *VISS) exchange(ctx context.Context, agt string) (tokencache.Token, error) {
	tok, err := v.post(ctx, "ATS", v.atsURL, v.atsSlots, func() (http.Header, map[string]string, []string, error) {
		body := map[string]string{"action": "at-request", "purpose": v.purpose, "agToken": agt}
		if v.longTerm == nil {
			return nil, body, []string{agt}, nil
		}
		// Signed now, as the request leaves: the reference ATS takes a PoP
		// at most ~8 s old.
		pop, _, err := v.pop(v.longTerm.ATSAudience)
		if err != nil {
			return nil, nil, nil, err
		}
		body["pop"] = pop
		return nil, body, []string{agt, pop}, nil
	})
	if err != nil {
		return tokencache.Token{}, err
	}
	exp, err := jwtExpiry(tok)
	if err != nil { // an opaque access token: the configured lifetime
		exp = v.now().Add(v.atLife)
	}
	return tokencache.Token{Value: config.NewSecret(tok), Expiry: exp}, nil
}

// post sends one JSON request to an issuer, within its slots: build makes
// the request (its headers, its body, and the credentials in it that an
// echo must not show) once a slot is held, so that a proof of possession
// is signed as the request leaves, not while it waits. It returns the
// token of {"token"} (AGTS) or {"aToken"} (ATS). An "error" field is a
// refusal whatever the status (the reference answers 201), and so is the
// ATS's {"action":"unknown","status":"401-Bad request"}.
func (v *VISS) post(ctx context.Context, what, target string, slots *semaphore.Weighted,
	build func() (http.Header, map[string]string, []string, error)) (string, error) {
	endpoint := endpointOf(target)
	if err := slots.Acquire(ctx, 1); err != nil {
		return "", issuerErr(v.name, what+" request to "+endpoint+" (waiting for the one before it)", err, nil)
	}
	defer slots.Release(1)
	header, body, sent, err := build()
	if err != nil {
		return "", fmt.Errorf("%w: injector %q: proof of possession: %v", ErrCredentialUnavailable, v.name, err)
	}
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(b))
	if err != nil {
		return "", fmt.Errorf("%w: injector %q: %v", ErrCredentialUnavailable, v.name, err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := v.client.Do(req)
	if err != nil {
		return "", issuerErr(v.name, what+" request to "+endpoint, err, func(msg string) string { return v.secrets.scrub(msg, sent...) })
	}
	defer resp.Body.Close()
	if isRedirect(resp) {
		return "", redirectErr(v.name, what+" "+endpoint, resp)
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponse))
	var out struct {
		Action, Token, AToken, Status string
		Error                         json.RawMessage
	}
	jsonErr := json.Unmarshal(data, &out)
	tok := out.AToken
	if tok == "" {
		tok = out.Token
	}
	switch {
	case len(out.Error) > 0 && string(out.Error) != "null" && string(out.Error) != `""`:
		msg := string(out.Error)
		var str string
		if json.Unmarshal(out.Error, &str) == nil {
			msg = str
		}
		return "", fmt.Errorf("%w: injector %q: %s %s answered %s with error: %s",
			ErrCredentialRejected, v.name, what, endpoint, resp.Status, v.secrets.excerpt([]byte(msg), sent...))
	case out.Action == "unknown":
		return "", fmt.Errorf("%w: injector %q: %s %s answered %s: action unknown (%s)",
			ErrCredentialRejected, v.name, what, endpoint, resp.Status, v.secrets.excerpt([]byte(out.Status), sent...))
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		kind := ErrCredentialUnavailable
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusBadRequest ||
			resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed {
			kind = ErrCredentialRejected
		}
		return "", fmt.Errorf("%w: injector %q: %s %s answered %s: %s", kind, v.name, what, endpoint, resp.Status, v.secrets.excerpt(data, sent...))
	case jsonErr != nil || tok == "":
		return "", fmt.Errorf("%w: injector %q: %s %s answered %s without a token", ErrCredentialUnavailable, v.name, what, endpoint, resp.Status)
	}
	return tok, nil
}

// jwtExpiry reads a JWT's exp claim, a JSON number or a string holding one.
// The token is not verified: it came over TLS from its issuer, and the
// proxy only needs to know when to fetch a new one.
func jwtExpiry(jwt string) (time.Time, error) {
	payload, err := jwtPayload(jwt)
	if err != nil {
		return time.Time{}, err
	}
	var claims struct {
		Exp json.RawMessage `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || len(claims.Exp) == 0 {
		return time.Time{}, errors.New("the JWT has no exp claim")
	}
	s := strings.Trim(string(claims.Exp), `"`)
	exp, err := strconv.ParseFloat(s, 64)
	if err != nil || exp <= 0 {
		return time.Time{}, fmt.Errorf("the JWT's exp %s is not a time", claims.Exp)
	}
	return time.Unix(int64(exp), 0), nil
}

// jwtPayload is the decoded payload of a JWT, unverified (what the proxy
// reads of tokens its issuers send it: when one expires, what it is bound
// to).
func jwtPayload(jwt string) ([]byte, error) {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return nil, errors.New("not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, errors.New("the JWT payload is not base64url")
	}
	return payload, nil
}

// pop returns a fresh proof-of-possession JWT for aud and the key's RFC 7638
// thumbprint.
func (v *VISS) pop(aud string) (string, string, error) {
	key, err := v.signingKey()
	if err != nil {
		return "", "", err
	}
	jwk := ecJWK(&key.PublicKey)
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", "", err
	}
	jti[6] = jti[6]&0x0f | 0x40 // UUID version 4
	jti[8] = jti[8]&0x3f | 0x80
	id := fmt.Sprintf("%x-%x-%x-%x-%x", jti[0:4], jti[4:6], jti[6:8], jti[8:10], jti[10:16])
	var iat any = strconv.FormatInt(v.now().Unix(), 10)
	if v.numberIat {
		iat = v.now().Unix()
	}
	sk := signingKey{signer: key, alg: "ES256"}
	tok, err := sk.sign(map[string]any{"typ": "dpop+jwt", "jwk": jwk}, map[string]any{"aud": aud, "iat": iat, "jti": id})
	return tok, jwkThumbprint(jwk), err
}

// ecJWK is the public JWK of a P-256 key.
func ecJWK(pub *ecdsa.PublicKey) map[string]string {
	var x, y [32]byte
	pub.X.FillBytes(x[:])
	pub.Y.FillBytes(y[:])
	enc := base64.RawURLEncoding
	return map[string]string{"kty": "EC", "use": "sign", "crv": "P-256", "x": enc.EncodeToString(x[:]), "y": enc.EncodeToString(y[:])}
}

// jwkThumbprint is the RFC 7638 thumbprint of an EC JWK: SHA-256 over its
// required members in lexicographic order, base64url.
func jwkThumbprint(jwk map[string]string) string {
	canon := `{"crv":"` + jwk["crv"] + `","kty":"` + jwk["kty"] + `","x":"` + jwk["x"] + `","y":"` + jwk["y"] + `"}`
	sum := sha256.Sum256([]byte(canon))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// signingKey loads the long-term key, or generates and stores it (0600).
func (v *VISS) signingKey() (*ecdsa.PrivateKey, error) {
	v.keyOnce.Do(func() {
		if v.key != nil {
			return
		}
		file := v.longTerm.KeyFile
		if k, err := loadECKey(file); err == nil {
			v.key = k
			return
		} else if !errors.Is(err, os.ErrNotExist) {
			v.keyErr = err
			return
		}
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			v.keyErr = err
			return
		}
		der, _ := x509.MarshalPKCS8PrivateKey(k)
		// Written whole and recorded as the proxy's own, so that the
		// file watcher does not reload (and rebuild this injector) for it.
		if err := writeOnce(file, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
			v.keyErr = fmt.Errorf("storing the generated key: %v", err)
			return
		}
		v.key = k
	})
	return v.key, v.keyErr
}

func loadECKey(file string) (*ecdsa.PrivateKey, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	k, err := parseSigningKey(data)
	if err != nil {
		return nil, err
	}
	ec, ok := k.signer.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, errors.New("a long-term key must be EC P-256 (ES256)")
	}
	return ec, nil
}
