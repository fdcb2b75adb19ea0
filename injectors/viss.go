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

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/tokencache"
)

// VISSConfig is the `kind: viss` block: W3C VISS v2 access control. An
// access grant token (AGT) comes from the AGTS; when an ATS is configured
// it is exchanged there for an access token.
type VISSConfig struct {
	Kind    string `yaml:"kind"`
	AGTSURL string `yaml:"agts_url"` // the AGTS endpoint, such as https://agts.example.com:7500/agts
	ATSURL  string `yaml:"ats_url"`  // the ATS endpoint (optional), such as https://ats.example.com:8600/ats
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
	ATSAudience   string `yaml:"ats_audience"`  // PoP aud to the ATS, default vissv2/ats
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
	secrets   scrubber // the proof, in each encoding
}

var (
	_ Injector         = (*VISS)(nil)
	_ ResponseObserver = (*VISS)(nil)
	_ Runner           = (*VISS)(nil)
	_ PathParamUser    = (*VISS)(nil)
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
		case err != nil || u.Host == "":
			add(path, "%q is not an absolute URL", s)
		case u.Scheme != "https":
			add(path, "must be https")
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
	if v.proof, err = cfg.Proof.Resolve(env.LookupEnv); err != nil {
		add("proof", "%v", err)
	}
	if lt := cfg.LongTerm; lt != nil {
		if lt.KeyFile == "" {
			add("long_term.key_file", "required")
		} else if _, err := os.Stat(lt.KeyFile); err == nil {
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
			lt.ATSAudience = "vissv2/ats"
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
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if v.cache == nil || v.client == nil {
		return nil, errors.New("viss: built without a token cache or HTTP client")
	}
	v.secrets.add(v.proof.Reveal())
	return v, nil
}

// Headers implements Injector.
func (v *VISS) Headers() []string { return []string{v.header} }

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

// ObserveResponse implements ResponseObserver: a 401 drops the token sent.
func (v *VISS) ObserveResponse(req *Request, resp *http.Response) bool {
	if resp.StatusCode != http.StatusUnauthorized {
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

// ObservesHeadOnly implements HeadObserver.
func (v *VISS) ObservesHeadOnly() {}

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
	body := map[string]string{"vin": vin, "context": v.context, "proof": v.proof.Reveal()}
	header := http.Header{}
	if v.longTerm != nil {
		pop, thumb, err := v.pop(v.longTerm.AGTSAudience)
		if err != nil {
			return tokencache.Token{}, fmt.Errorf("%w: injector %q: proof of possession: %v", ErrCredentialUnavailable, v.name, err)
		}
		header.Set("PoP", pop)
		body["key"] = thumb
	}
	var r struct{ Token, Error string }
	if err := v.post(ctx, "AGTS", v.agtsURL, header, body, &r, header.Get("PoP")); err != nil {
		return tokencache.Token{}, err
	}
	exp, err := jwtExpiry(r.Token)
	if err != nil {
		return tokencache.Token{}, fmt.Errorf("%w: injector %q: the AGTS's token: %v", ErrCredentialUnavailable, v.name, err)
	}
	return tokencache.Token{Value: config.NewSecret(r.Token), Expiry: exp}, nil
}

// exchange trades an AGT for an access token at the ATS.
func (v *VISS) exchange(ctx context.Context, agt string) (tokencache.Token, error) {
	body := map[string]string{"purpose": v.purpose, "agToken": agt}
	if v.longTerm != nil {
		pop, _, err := v.pop(v.longTerm.ATSAudience)
		if err != nil {
			return tokencache.Token{}, fmt.Errorf("%w: injector %q: proof of possession: %v", ErrCredentialUnavailable, v.name, err)
		}
		body["pop"] = pop
	}
	var r struct{ Token, Error string }
	if err := v.post(ctx, "ATS", v.atsURL, nil, body, &r, agt, body["pop"]); err != nil {
		return tokencache.Token{}, err
	}
	exp, err := jwtExpiry(r.Token)
	if err != nil { // an opaque access token: the configured lifetime
		exp = v.now().Add(v.atLife)
	}
	return tokencache.Token{Value: config.NewSecret(r.Token), Expiry: exp}, nil
}

// post sends a JSON request and decodes {"token"} or {"error"}; an error
// field is a failure whatever the status (the reference AGTS answers 201).
// sent are the request's own credentials (an AGT, a proof of possession),
// scrubbed from what the issuer answers, as the proof is.
func (v *VISS) post(ctx context.Context, what, target string, header http.Header, body map[string]string, out *struct{ Token, Error string }, sent ...string) error {
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("%w: injector %q: %v", ErrCredentialUnavailable, v.name, err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	req.Header.Set("Content-Type", "application/json")
	endpoint := endpointOf(target)
	resp, err := v.client.Do(req)
	if err != nil {
		return issuerErr(v.name, what+" request to "+endpoint, err, func(msg string) string { return v.secrets.scrub(msg, sent...) })
	}
	defer resp.Body.Close()
	if isRedirect(resp) {
		return redirectErr(v.name, what+" "+endpoint, resp)
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponse))
	jsonErr := json.Unmarshal(data, out)
	switch {
	case out.Error != "":
		return fmt.Errorf("%w: injector %q: %s %s answered %s with error: %s",
			ErrCredentialRejected, v.name, what, endpoint, resp.Status, v.secrets.excerpt([]byte(out.Error), sent...))
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		kind := ErrCredentialUnavailable
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusBadRequest {
			kind = ErrCredentialRejected
		}
		return fmt.Errorf("%w: injector %q: %s %s answered %s: %s", kind, v.name, what, endpoint, resp.Status, v.secrets.excerpt(data, sent...))
	case jsonErr != nil || out.Token == "":
		return fmt.Errorf("%w: injector %q: %s %s answered %s without a token", ErrCredentialUnavailable, v.name, what, endpoint, resp.Status)
	}
	return nil
}

// jwtExpiry reads a JWT's exp claim, a JSON number or a string holding one.
// The token is not verified: it came over TLS from its issuer, and the
// proxy only needs to know when to fetch a new one.
func jwtExpiry(jwt string) (time.Time, error) {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return time.Time{}, errors.New("not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, errors.New("the JWT payload is not base64url")
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
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			v.keyErr = fmt.Errorf("storing the generated key: %v", err)
			return
		}
		_, err = f.Write(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
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
