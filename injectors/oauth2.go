package injectors

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/tokencache"
	"github.com/authproxy/authproxy/transport"
)

// OAuth2Config is the `kind: oauth2` block: OAuth2 client credentials
// (RFC 6749 §4.4), one token per distinct scope set, cached and refreshed
// ahead of expiry.
type OAuth2Config struct {
	Kind string `yaml:"kind"`
	// Preset fills defaults for a provider: "obh" (OBH Mobility, Zitadel) or
	// "obelisk".
	Preset       string              `yaml:"preset"`
	TokenURL     string              `yaml:"token_url"`
	ClientID     config.SecretSource `yaml:"client_id"`
	ClientSecret config.SecretSource `yaml:"client_secret"`
	// AuthStyle: client_secret_basic (default), client_secret_post,
	// private_key_jwt (client_credentials with an RFC 7523 client
	// assertion) or jwt_bearer (the RFC 7523 §2.1 JWT-bearer authorization
	// grant, as Zitadel's service users authenticate with a key).
	AuthStyle string `yaml:"auth_style"`
	// KeyFile is a key as Zitadel issues it, a JSON file:
	// {"type":"serviceaccount","keyId","key","userId"} (the jwt_bearer
	// grant) or {"type":"application","keyId","key","clientId"}
	// (private_key_jwt); or a PEM key, with client_id and key_id given.
	KeyFile config.SecretSource `yaml:"key_file"`
	// BasicEncoding: "form" (default) URL-encodes id and secret inside
	// Basic as RFC 6749 §2.3.1 says; "raw" sends them as they are.
	BasicEncoding     string              `yaml:"basic_encoding"`
	PrivateKey        config.SecretSource `yaml:"private_key"`        // PEM, RSA (RS256) or EC (ES256/ES384)
	KeyID             string              `yaml:"key_id"`             // the assertion's kid header
	AssertionAudience string              `yaml:"assertion_audience"` // the assertion's aud (default: the token URL; for jwt_bearer its origin)
	// Scopes are templates: {name} (a path value), {header:Name}, {query:name}.
	Scopes   []string          `yaml:"scopes"`
	Audience string            `yaml:"audience"` // template, sent as `audience`
	Params   map[string]string `yaml:"params"`   // more form parameters (templates)
	// BodyFormat: "form" (default) or "json".
	BodyFormat string `yaml:"body_format"`
	// Header and Prefix say how the token is attached (default
	// "Authorization: Bearer <token>").
	Header string  `yaml:"header"`
	Prefix *string `yaml:"prefix"`
	// DefaultLifetime applies when the response gives no lifetime.
	DefaultLifetime config.Duration `yaml:"default_lifetime"` // default 5m

	// ClientAssertion is a JWT that someone else issues and rotates (a
	// Kubernetes projected service-account token, a SPIFFE JWT-SVID), read
	// from its file before each token request: the client_assertion of
	// private_key_jwt, or the assertion of jwt_bearer, in place of one the
	// proxy signs. The proxy then holds no key.
	ClientAssertion config.SecretSource `yaml:"client_assertion"`
	// Grant is client_credentials (default) or token_exchange (RFC 8693:
	// SubjectToken, and ActorToken if set, exchanged for a token for
	// Audience and Resource).
	Grant              string              `yaml:"grant"`
	SubjectToken       config.SecretSource `yaml:"subject_token"`      // read from its file before each request
	SubjectTokenType   string              `yaml:"subject_token_type"` // default urn:ietf:params:oauth:token-type:jwt
	ActorToken         config.SecretSource `yaml:"actor_token"`        // read from its file before each request
	ActorTokenType     string              `yaml:"actor_token_type"`   // required with actor_token
	RequestedTokenType string              `yaml:"requested_token_type"`
	Resource           string              `yaml:"resource"` // template, sent as resource
}

const (
	obhTokenURL      = "https://auth.obh-mobility.com/oauth/v2/token"
	obhIssuer        = "https://auth.obh-mobility.com"
	jwtBearerType    = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	jwtBearerGrant   = "urn:ietf:params:oauth:grant-type:jwt-bearer"
	tokenExchange    = "urn:ietf:params:oauth:grant-type:token-exchange"
	jwtTokenType     = "urn:ietf:params:oauth:token-type:jwt"
	maxTokenResponse = 1 << 20
)

// OAuthError is the OAuth2 error code (RFC 6749 §5.2) an issuer refused a
// token request with. The proxy may show the code to the client: it is a
// word from a fixed set, never the description that could echo a secret.
type OAuthError struct{ Code string }

func (e *OAuthError) Error() string { return "oauth2 error " + e.Code }

// ClientCode is the code if it is a plain OAuth error code ([a-z_]), else "".
func (e *OAuthError) ClientCode() string {
	if e.Code == "" || len(e.Code) > 64 || strings.Trim(e.Code, "abcdefghijklmnopqrstuvwxyz_") != "" {
		return ""
	}
	return e.Code
}

// zitadelKey is a key file as Zitadel issues it.
type zitadelKey struct {
	Type     string `json:"type"`
	KeyID    string `json:"keyId"`
	Key      string `json:"key"`
	UserID   string `json:"userId"`
	ClientID string `json:"clientId"`
}

// zitadelKeyTypes are the key files Zitadel issues: the auth style each is
// for, and the field that names the id it authenticates.
var zitadelKeyTypes = map[string]struct{ style, idField string }{
	"serviceaccount": {"jwt_bearer", "userId"},
	"application":    {"private_key_jwt", "clientId"},
}

// id is the id the key authenticates: the service user's or the client's.
func (k *zitadelKey) id() string {
	if k.Type == "serviceaccount" {
		return k.UserID
	}
	return k.ClientID
}

// OAuth2 is an OAuth2 client-credentials injector. It is safe for
// concurrent use.
type OAuth2 struct {
	name      string
	cache     *tokencache.Cache
	client    *http.Client
	now       func() time.Time
	tokenURL  string
	endpoint  string // token URL without its query, for messages
	id        config.Secret
	secret    config.Secret
	authStyle string
	basicRaw  bool
	key       *signingKey
	keyID     string
	assertAud string
	scopes    []template
	audience  template
	resource  template
	params    []namedTemplate

	// Tokens someone else issues and rotates, read from their files before
	// each token request ("": none).
	assertionFile string // client_assertion
	grant         string // client_credentials or token_exchange
	subjectFile   string
	subjectType   string
	actorFile     string
	actorType     string
	requestedType string
	certFile      string                // tls_client's cert_file ("": none)
	clientCert    *transport.ClientCert // tls_client (nil: none, or not read)
	jsonBody      bool
	header        string
	prefix        string
	lifetime      time.Duration

	static      bool // no template reads the request
	staticKey   string
	staticFetch tokencache.FetchFunc

	secrets scrubber // what fetch sends, in each encoding
}

type namedTemplate struct {
	name string
	t    template
}

var (
	_ Injector         = (*OAuth2)(nil)
	_ ResponseObserver = (*OAuth2)(nil)
	_ Runner           = (*OAuth2)(nil)
	_ PathParamUser    = (*OAuth2)(nil)
)

// NewOAuth2 validates cfg, reads its secrets, and applies its preset. It
// does no network I/O. Errors are relative to the injector's block.
func NewOAuth2(name string, cfg OAuth2Config, env Env) (*OAuth2, error) {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, config.Errorf(path, format, args...)) }
	switch cfg.Preset {
	case "":
	case "obh":
		if cfg.TokenURL == "" {
			cfg.TokenURL = obhTokenURL
		}
		if cfg.AssertionAudience == "" {
			cfg.AssertionAudience = obhIssuer
		}
		if !slices.ContainsFunc(cfg.Scopes, func(s string) bool {
			return strings.HasPrefix(s, "urn:zitadel:iam:org:project:id:") && strings.HasSuffix(s, ":aud")
		}) {
			add("scopes", "the obh preset needs the project audience scope urn:zitadel:iam:org:project:id:<id>:aud (without it tokens carry no rights)")
		}
	case "obelisk":
		if cfg.TokenURL == "" {
			add("token_url", "required (<base>/api/v3/auth/token)")
		}
		if cfg.BasicEncoding == "" {
			cfg.BasicEncoding = "raw"
		}
		if cfg.BodyFormat == "" {
			cfg.BodyFormat = "json"
		}
	default:
		add("preset", "unknown preset %q (known: obh, obelisk)", cfg.Preset)
	}
	// A key file names its own kind: a Zitadel service-account key is for
	// the JWT-bearer grant, an application key for private_key_jwt.
	var keyPEM string
	var keyFile *zitadelKey
	zitadelFile := false // a JSON key file, good or bad: it names the ids
	if cfg.KeyFile.IsSet() {
		raw, err := env.secret(cfg.KeyFile)
		switch {
		case err != nil:
			add("key_file", "%v", err)
		case cfg.PrivateKey.IsSet():
			add("key_file", "give key_file or private_key, not both")
		case env.SkipSecrets:
			// Unread, it may be a Zitadel key file, which names the ids.
			zitadelFile = !cfg.ClientID.IsSet()
		case strings.HasPrefix(strings.TrimSpace(raw.Reveal()), "{"):
			zitadelFile = true
			var k zitadelKey
			if json.Unmarshal([]byte(raw.Reveal()), &k) != nil {
				add("key_file", "is neither a PEM key nor a Zitadel JSON key file")
				break
			}
			kt, known := zitadelKeyTypes[k.Type]
			switch {
			case !known:
				add("key_file", "a Zitadel key file of type %q; known: serviceaccount (for auth_style: jwt_bearer) and application (for private_key_jwt)", k.Type)
			case cfg.AuthStyle != "" && cfg.AuthStyle != kt.style:
				add("key_file", "a Zitadel %s key is for auth_style: %s, not %s", k.Type, kt.style, cfg.AuthStyle)
			case k.Key == "" || k.KeyID == "" || k.id() == "":
				add("key_file", "a Zitadel %s key file needs keyId, key and %s", k.Type, kt.idField)
			case cfg.ClientID.IsSet() || cfg.KeyID != "":
				add("key_file", "a Zitadel key file names its own ids: leave out client_id and key_id")
			default:
				keyFile, keyPEM = &k, k.Key
				cfg.AuthStyle = kt.style
			}
		default:
			keyPEM = raw.Reveal()
		}
	}
	hasKey := cfg.PrivateKey.IsSet() || cfg.KeyFile.IsSet()
	assertionFile := issuedFile(cfg.ClientAssertion, "client_assertion", add)
	if assertionFile != "" && hasKey {
		add("client_assertion", "give client_assertion (a JWT the platform issues) or a key to sign one (private_key, key_file), not both")
	}
	if cfg.AuthStyle == "" {
		cfg.AuthStyle = "client_secret_basic"
		switch {
		case (hasKey || cfg.ClientAssertion.IsSet()) && cfg.Preset == "obh": // Zitadel's service users: the JWT-bearer grant
			cfg.AuthStyle = "jwt_bearer"
		case hasKey || cfg.ClientAssertion.IsSet():
			cfg.AuthStyle = "private_key_jwt"
		}
	}
	grant := cfg.Grant
	switch grant {
	case "", "client_credentials":
		grant = "client_credentials"
		for _, f := range []struct {
			key string
			set bool
		}{{"subject_token", cfg.SubjectToken.IsSet()}, {"subject_token_type", cfg.SubjectTokenType != ""}, {"actor_token", cfg.ActorToken.IsSet()},
			{"actor_token_type", cfg.ActorTokenType != ""}, {"requested_token_type", cfg.RequestedTokenType != ""}} {
			if f.set {
				add(f.key, "only with grant: token_exchange")
			}
		}
	case "token_exchange":
		if cfg.AuthStyle == "jwt_bearer" {
			add("auth_style", "jwt_bearer is a grant of its own: token_exchange authenticates the client with client_secret_basic, client_secret_post, private_key_jwt or none")
		}
		if !cfg.SubjectToken.IsSet() {
			add("subject_token", "required with grant: token_exchange: {file: ...}, the token to exchange")
		}
		if cfg.ActorToken.IsSet() != (cfg.ActorTokenType != "") {
			add("actor_token_type", "give actor_token and actor_token_type together")
		}
	default:
		add("grant", "unknown grant %q (known: client_credentials, token_exchange)", cfg.Grant)
	}

	o := &OAuth2{name: name, cache: env.Cache, client: noRedirects(env.HTTPClient), now: env.Now,
		authStyle: cfg.AuthStyle, keyID: cfg.KeyID, lifetime: cfg.DefaultLifetime.D(5 * time.Minute),
		assertionFile: assertionFile, grant: grant, requestedType: cfg.RequestedTokenType}
	if grant == "token_exchange" {
		o.subjectFile = issuedFile(cfg.SubjectToken, "subject_token", add)
		o.subjectType = cmp.Or(cfg.SubjectTokenType, jwtTokenType)
		o.actorFile = issuedFile(cfg.ActorToken, "actor_token", add)
		o.actorType = cfg.ActorTokenType
	}
	if o.now == nil {
		o.now = time.Now
	}

	switch u, err := url.Parse(cfg.TokenURL); {
	case cfg.TokenURL == "":
		if cfg.Preset != "obelisk" {
			add("token_url", "required")
		}
	case config.HasUserInfo(cfg.TokenURL):
		add("token_url", "%q: a token URL takes no user info (it would be sent and shown in messages); give the client's credentials as client_id and client_secret", config.RedactURL(cfg.TokenURL))
	case err != nil || u.Host == "":
		add("token_url", "%q is not an absolute URL", cfg.TokenURL)
	case u.Scheme != "https":
		add("token_url", "must be https: the client secret would travel in plaintext")
	default:
		o.tokenURL = cfg.TokenURL
		o.endpoint = endpointOf(cfg.TokenURL)
	}

	var err error
	switch {
	case keyFile != nil:
		o.id, o.keyID = config.NewSecret(keyFile.id()), keyFile.KeyID
	case zitadelFile:
		// its own error says what is wrong with it
	case !cfg.ClientID.IsSet() && (cfg.ClientAssertion.IsSet() || cfg.AuthStyle == "none"):
		// the assertion names the client (or the client is public and
		// unnamed): client_id is sent only when given
	default:
		if o.id, err = env.secret(cfg.ClientID); err != nil {
			add("client_id", "%v", err)
		}
	}
	switch cfg.AuthStyle {
	case "client_secret_basic", "client_secret_post":
		if o.secret, err = env.secret(cfg.ClientSecret); err != nil {
			add("client_secret", "%v", err)
		}
		if cfg.PrivateKey.IsSet() {
			add("private_key", "only used with auth_style: private_key_jwt")
		}
	case "tls_client_auth", "self_signed_tls_client_auth": // RFC 8705: the client certificate authenticates
		if env.ClientCertFile == "" {
			add("auth_style", "%s authenticates the client by its certificate: set tls_client: {cert_file, key_file} on the injector", cfg.AuthStyle)
		}
		if cfg.ClientSecret.IsSet() || hasKey || cfg.ClientAssertion.IsSet() {
			add("auth_style", "%s sends no secret or assertion: leave out client_secret, keys and client_assertion", cfg.AuthStyle)
		}
	case "none":
		if grant != "token_exchange" {
			add("auth_style", "none (no client authentication) is for grant: token_exchange only")
		}
		if cfg.ClientSecret.IsSet() || hasKey || assertionFile != "" {
			add("auth_style", "none sends no client credential: leave out client_secret, keys and client_assertion")
		}
	case "private_key_jwt", "jwt_bearer":
		if cfg.ClientSecret.IsSet() {
			add("client_secret", "not used with %s (the signed assertion replaces it)", cfg.AuthStyle)
		}
		if cfg.ClientAssertion.IsSet() {
			break // the platform's JWT is the assertion: no key
		}
		keyPath := "key_file"
		if !cfg.KeyFile.IsSet() {
			keyPath = "private_key"
			if !cfg.PrivateKey.IsSet() {
				add("private_key", "%s needs a key: key_file (a Zitadel key file) or private_key (PEM)", cfg.AuthStyle)
				break
			}
			pemKey, err := env.secret(cfg.PrivateKey)
			if err != nil {
				add("private_key", "%v", err)
				break
			}
			keyPEM = pemKey.Reveal()
		}
		if keyPEM == "" || env.SkipSecrets {
			break // the key file's own error is reported, or the key was not read
		}
		k, err := parseSigningKey([]byte(keyPEM))
		if err != nil {
			add(keyPath, "%v", err)
			break
		}
		o.key = &k
		o.assertAud = cfg.AssertionAudience
		if o.assertAud == "" {
			o.assertAud = cfg.TokenURL
			if u, err := url.Parse(cfg.TokenURL); err == nil && cfg.AuthStyle == "jwt_bearer" {
				o.assertAud = u.Scheme + "://" + u.Host // the issuer
			}
		}
	default:
		add("auth_style", "unknown style %q (known: client_secret_basic, client_secret_post, private_key_jwt, jwt_bearer, tls_client_auth, self_signed_tls_client_auth, none)", cfg.AuthStyle)
	}
	switch cfg.BasicEncoding {
	case "", "form":
	case "raw":
		o.basicRaw = true
	default:
		add("basic_encoding", "form or raw, not %q", cfg.BasicEncoding)
	}
	switch cfg.BodyFormat {
	case "", "form":
	case "json":
		o.jsonBody = true
	default:
		add("body_format", "form or json, not %q", cfg.BodyFormat)
	}

	o.static = true
	for i, s := range cfg.Scopes {
		t, err := parseTemplate(s)
		if err != nil {
			add(config.Index("scopes", i), "%v", err)
			continue
		}
		o.static = o.static && t.static()
		o.scopes = append(o.scopes, t)
	}
	if o.audience, err = parseTemplate(cfg.Audience); err != nil {
		add("audience", "%v", err)
	}
	if o.resource, err = parseTemplate(cfg.Resource); err != nil {
		add("resource", "%v", err)
	}
	o.static = o.static && o.audience.static() && o.resource.static()
	paramNames := make([]string, 0, len(cfg.Params))
	for k := range cfg.Params {
		paramNames = append(paramNames, k)
	}
	sort.Strings(paramNames)
	for _, k := range paramNames {
		switch k {
		case "grant_type", "scope", "audience", "resource", "client_id", "client_secret", "client_assertion", "client_assertion_type", "assertion",
			"subject_token", "subject_token_type", "actor_token", "actor_token_type", "requested_token_type":
			add(config.Join("params", k), "set by the injector itself")
			continue
		}
		t, err := parseTemplate(cfg.Params[k])
		if err != nil {
			add(config.Join("params", k), "%v", err)
			continue
		}
		o.static = o.static && t.static()
		o.params = append(o.params, namedTemplate{k, t})
	}

	o.header = http.CanonicalHeaderKey(cfg.Header)
	if cfg.Header == "" {
		o.header = "Authorization"
	} else if !httpguts.ValidHeaderFieldName(cfg.Header) {
		add("header", "invalid header name")
	}
	o.prefix = "Bearer "
	if cfg.Prefix != nil {
		o.prefix = *cfg.Prefix
	}
	if o.basicRaw && o.authStyle == "client_secret_basic" && strings.Contains(o.id.Reveal(), ":") {
		add("client_id", "contains \":\", which raw Basic authentication cannot carry (use basic_encoding: form)")
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if o.cache == nil || o.client == nil {
		return nil, errors.New("oauth2: built without a token cache or HTTP client")
	}
	o.secrets.add(o.secret.Reveal())
	o.secrets.addBasic(o.id.Reveal(), o.secret.Reveal())
	if o.static {
		req := &Request{Request: &http.Request{Header: http.Header{}, URL: &url.URL{}}}
		scope, aud, params, _ := o.render(req)
		o.staticKey = o.cacheKey(scope, aud, params)
		o.staticFetch = func(ctx context.Context) (tokencache.Token, error) { return o.fetch(ctx, scope, aud, params) }
	}
	keyPub := ""
	if o.key != nil {
		if der, err := x509.MarshalPKIXPublicKey(o.key.signer.Public()); err == nil {
			keyPub = string(der)
		}
	}
	// The files of issued tokens are named, not read: who holds the token
	// file is who the tokens are for.
	o.certFile, o.clientCert = env.ClientCertFile, env.ClientCert
	o.cache.Identify(name, "oauth2", o.tokenURL, o.id.Reveal(), digest(o.secret.Reveal()), keyPub, o.keyID, o.authStyle, o.assertAud,
		o.grant, o.assertionFile, o.subjectFile, o.subjectType, o.actorFile, o.actorType, o.requestedType, o.certFile)
	return o, nil
}

// Headers implements Injector.
func (o *OAuth2) Headers() []string { return []string{o.header} }

// PathParams implements PathParamUser.
func (o *OAuth2) PathParams() []string {
	var out []string
	for _, t := range o.scopes {
		out = append(out, t.pathParams()...)
	}
	out = append(out, o.audience.pathParams()...)
	for _, p := range o.params {
		out = append(out, p.t.pathParams()...)
	}
	return out
}

// Run implements Runner: the shared cache's background refresh.
func (o *OAuth2) Run(ctx context.Context) error { return o.cache.Run(ctx) }

// Inject implements Injector.
func (o *OAuth2) Inject(req *Request) error {
	key, fetch, err := o.lookup(req)
	if err != nil {
		return err
	}
	tok, err := o.cache.Get(req.Context(), key, fetch)
	if err != nil {
		return tokenErr(req, err)
	}
	if err := o.checkBinding(req, tok.Value.Reveal()); err != nil {
		// A token bound to the certificate before its renewal: the
		// issuer's connection presents the renewed one now, so a new token
		// is bound to what the route presents.
		if o.clientCert == nil || o.clientCert.Thumbprint() != req.ClientCertThumbprint || !o.cache.Invalidate(key, tok.Value.Reveal()) {
			return err
		}
		if tok, err = o.cache.Get(req.Context(), key, fetch); err != nil {
			return tokenErr(req, err)
		}
		if err := o.checkBinding(req, tok.Value.Reveal()); err != nil {
			return err
		}
	}
	req.Header[o.header] = []string{tok.Value.Reveal()}
	return nil
}

// BoundToCertificate reports the client certificate file the injector's
// tokens are bound to (RFC 8705: it authenticates with tls_client_auth or
// self_signed_tls_client_auth, and the issuer binds what it issues to the
// certificate): a route using it must present the same one.
func (o *OAuth2) BoundToCertificate() (string, bool) {
	if o.authStyle != "tls_client_auth" && o.authStyle != "self_signed_tls_client_auth" {
		return "", false
	}
	return o.certFile, true
}

// checkBinding refuses to send a token bound to a client certificate
// (RFC 8705: a JWT access token's cnf.x5t#S256) over a connection that
// does not present that certificate: the upstream would refuse it, and it
// must not travel where its certificate does not.
func (o *OAuth2) checkBinding(req *Request, value string) error {
	if o.authStyle != "tls_client_auth" && o.authStyle != "self_signed_tls_client_auth" {
		return nil
	}
	bound := certBinding(strings.TrimPrefix(value, o.prefix))
	switch {
	case bound == "" || bound == req.ClientCertThumbprint:
		return nil
	case req.ClientCertThumbprint == "":
		return fmt.Errorf("%w: injector %q: its token is bound to the client certificate it was issued for (cnf.x5t#S256), and route %q presents none: set the route's tls_client to the injector's", ErrFailedPrecondition, o.name, req.Route)
	}
	return fmt.Errorf("%w: injector %q: its token is bound to another client certificate (cnf.x5t#S256) than route %q presents: give the route the injector's tls_client", ErrFailedPrecondition, o.name, req.Route)
}

// certBinding is the cnf.x5t#S256 of a JWT access token ("" for none, or
// an opaque token).
func certBinding(tok string) string {
	payload, err := jwtPayload(tok)
	if err != nil {
		return ""
	}
	var claims struct {
		Cnf struct {
			X5t string `json:"x5t#S256"`
		} `json:"cnf"`
	}
	if json.Unmarshal(payload, &claims) != nil {
		return ""
	}
	return claims.Cnf.X5t
}

// CanWarm implements Warmer: only a fixed scope set is known at start.
func (o *OAuth2) CanWarm() string {
	if !o.static {
		return "its scopes or audience read the request"
	}
	return ""
}

// Warm implements Warmer.
func (o *OAuth2) Warm(ctx context.Context) error {
	return o.cache.Warm(ctx, o.staticKey, o.staticFetch)
}

// Warmed implements Warmer.
func (o *OAuth2) Warmed() bool { return o.cache.Has(o.staticKey) }

// TryInject implements Prompt: the cached token, if it is valid.
func (o *OAuth2) TryInject(req *Request) (bool, error) {
	key, _, err := o.lookup(req)
	if err != nil {
		return true, err
	}
	tok, ok := o.cache.Peek(key)
	if ok {
		if err := o.checkBinding(req, tok.Value.Reveal()); err != nil {
			return true, err
		}
		req.Header[o.header] = []string{tok.Value.Reveal()}
	}
	return ok, nil
}

// ObserveResponse implements ResponseObserver: a 401, or a gRPC
// UNAUTHENTICATED status in the response headers, drops the token that was
// sent, so the request is retried once with a fresh one.
func (o *OAuth2) ObserveResponse(req *Request, resp *http.Response) bool {
	if resp.StatusCode != http.StatusUnauthorized && resp.Header.Get("Grpc-Status") != "16" {
		return false
	}
	key, _, err := o.lookup(req)
	if err != nil {
		return false
	}
	return o.cache.Invalidate(key, req.Header.Get(o.header))
}

// ObservesHeadOnly implements HeadObserver.
func (o *OAuth2) ObservesHeadOnly() {}

func (o *OAuth2) lookup(req *Request) (string, tokencache.FetchFunc, error) {
	if o.static {
		return o.staticKey, o.staticFetch, nil
	}
	scope, aud, params, err := o.render(req)
	if err != nil {
		return "", nil, err
	}
	return o.cacheKey(scope, aud, params), func(ctx context.Context) (tokencache.Token, error) {
		return o.fetch(ctx, scope, aud, params)
	}, nil
}

func (o *OAuth2) render(req *Request) (scope, aud string, params url.Values, err error) {
	parts := make([]string, 0, len(o.scopes))
	for _, t := range o.scopes {
		v, err := t.render(req)
		if err != nil {
			return "", "", nil, err
		}
		parts = append(parts, v)
	}
	if aud, err = o.audience.render(req); err != nil {
		return "", "", nil, err
	}
	if len(o.params) > 0 {
		params = url.Values{}
		for _, p := range o.params {
			v, err := p.t.render(req)
			if err != nil {
				return "", "", nil, err
			}
			params.Set(p.name, v)
		}
	}
	resource, err := o.resource.render(req)
	if err != nil {
		return "", "", nil, err
	}
	if resource != "" {
		if params == nil {
			params = url.Values{}
		}
		params.Set("resource", resource)
	}
	return strings.Join(parts, " "), aud, params, nil
}

func (o *OAuth2) cacheKey(scope, aud string, params url.Values) string {
	return o.name + "\x00" + scope + "\x00" + aud + "\x00" + params.Encode()
}

// fetch requests one token. Errors wrap ErrCredentialRejected (the issuer
// refused the client) or ErrCredentialUnavailable, name the injector and
// the endpoint's status, and never contain a secret.
func (o *OAuth2) fetch(ctx context.Context, scope, aud string, params url.Values) (tokencache.Token, error) {
	form := url.Values{"grant_type": {"client_credentials"}}
	if o.authStyle == "jwt_bearer" {
		form.Set("grant_type", jwtBearerGrant)
	}
	// The tokens someone else issues, as their files hold them now; they
	// are scrubbed from every error like the injector's own secrets.
	var issued []string
	if o.grant == "token_exchange" {
		form.Set("grant_type", tokenExchange)
		subject, err := o.readIssued(o.subjectFile, "subject_token", o.subjectType == jwtTokenType || o.subjectType == idTokenType)
		if err != nil {
			return tokencache.Token{}, err
		}
		issued = append(issued, subject)
		form.Set("subject_token", subject)
		form.Set("subject_token_type", o.subjectType)
		if o.actorFile != "" {
			actor, err := o.readIssued(o.actorFile, "actor_token", o.actorType == jwtTokenType || o.actorType == idTokenType)
			if err != nil {
				return tokencache.Token{}, err
			}
			issued = append(issued, actor)
			form.Set("actor_token", actor)
			form.Set("actor_token_type", o.actorType)
		}
		if o.requestedType != "" {
			form.Set("requested_token_type", o.requestedType)
		}
	}
	if scope != "" {
		form.Set("scope", scope)
	}
	if aud != "" {
		form.Set("audience", aud)
	}
	for k, v := range params {
		form[k] = v
	}
	var assertion string
	var err error
	switch o.authStyle {
	case "client_secret_post":
		form.Set("client_id", o.id.Reveal())
		form.Set("client_secret", o.secret.Reveal())
	case "tls_client_auth", "self_signed_tls_client_auth":
		form.Set("client_id", o.id.Reveal()) // the certificate, presented in the handshake, authenticates it
	case "none":
		if id := o.id.Reveal(); id != "" {
			form.Set("client_id", id)
		}
	case "private_key_jwt":
		if o.assertionFile != "" {
			assertion, err = o.readIssued(o.assertionFile, "client_assertion", true)
		} else if assertion, err = o.assertion(); err != nil {
			err = fmt.Errorf("%w: injector %q: signing the client assertion: %v", ErrCredentialUnavailable, o.name, err)
		}
		if err != nil {
			return tokencache.Token{}, err
		}
		if id := o.id.Reveal(); id != "" {
			form.Set("client_id", id)
		}
		form.Set("client_assertion_type", jwtBearerType)
		form.Set("client_assertion", assertion)
	case "jwt_bearer": // the assertion is the grant; there is no client authentication
		if o.assertionFile != "" {
			assertion, err = o.readIssued(o.assertionFile, "client_assertion", true)
		} else if assertion, err = o.bearerAssertion(); err != nil {
			err = fmt.Errorf("%w: injector %q: signing the assertion: %v", ErrCredentialUnavailable, o.name, err)
		}
		if err != nil {
			return tokencache.Token{}, err
		}
		form.Set("assertion", assertion)
	}
	issued = append(issued, assertion)
	var body []byte
	contentType := "application/x-www-form-urlencoded"
	if o.jsonBody {
		flat := make(map[string]string, len(form))
		for k := range form {
			flat[k] = form.Get(k)
		}
		body, _ = json.Marshal(flat)
		contentType = "application/json"
	} else {
		body = []byte(form.Encode())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.tokenURL, bytes.NewReader(body))
	if err != nil {
		return tokencache.Token{}, fmt.Errorf("%w: injector %q: %v", ErrCredentialUnavailable, o.name, err)
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Accept", "application/json")
	if o.authStyle == "client_secret_basic" {
		id, secret := o.id.Reveal(), o.secret.Reveal()
		if !o.basicRaw {
			id, secret = url.QueryEscape(id), url.QueryEscape(secret)
		}
		req.SetBasicAuth(id, secret)
	}
	start := o.now()
	resp, err := o.client.Do(req)
	if err != nil {
		return tokencache.Token{}, issuerErr(o.name, "token request to "+o.endpoint, err,
			func(msg string) string { return o.secrets.scrub(msg, issued...) })
	}
	defer resp.Body.Close()
	if isRedirect(resp) {
		return tokencache.Token{}, redirectErr(o.name, "token endpoint "+o.endpoint, resp)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponse))
	if err != nil {
		return tokencache.Token{}, fmt.Errorf("%w: injector %q: reading the token response from %s: %v", ErrCredentialUnavailable, o.name, o.endpoint, err)
	}
	var tr tokenResponse
	jsonErr := json.Unmarshal(data, &tr)
	if resp.StatusCode < 200 || resp.StatusCode > 299 || tr.Error != "" {
		// A 400, 401 or 403 refuses the proxy's own request (a wrong secret,
		// scope or grant: a configuration to fix), as does an OAuth error in
		// a 2xx body; 5xx and other answers are the issuer's outage.
		kind := ErrCredentialUnavailable
		switch {
		case resp.StatusCode == http.StatusBadRequest, resp.StatusCode == http.StatusUnauthorized, resp.StatusCode == http.StatusForbidden:
			kind = ErrCredentialRejected
		case resp.StatusCode < 300:
			kind = ErrCredentialRejected
		}
		detail := tr.Error
		if tr.ErrorDescription != "" {
			detail += ": " + tr.ErrorDescription
		}
		if detail == "" {
			detail = string(data)
		}
		hint := ""
		if tr.Error == "invalid_client" && o.authStyle == "private_key_jwt" {
			hint = " (a Zitadel service user authenticates with a key through the JWT-bearer grant: auth_style: jwt_bearer with its key file)"
		}
		err := fmt.Errorf("%w: injector %q: token endpoint %s answered %s: %s%s",
			kind, o.name, o.endpoint, resp.Status, o.secrets.excerpt([]byte(detail), issued...), hint)
		if tr.Error != "" {
			err = &codedError{err: err, code: &OAuthError{Code: tr.Error}}
		}
		return tokencache.Token{}, err
	}
	if jsonErr != nil {
		return tokencache.Token{}, fmt.Errorf("%w: injector %q: token endpoint %s answered %s with a body that is not a token response: %s",
			ErrCredentialUnavailable, o.name, o.endpoint, resp.Status, o.secrets.excerpt(data, issued...))
	}
	value := tr.AccessToken
	if value == "" {
		value = tr.Token // older Obelisk servers
	}
	if value == "" {
		return tokencache.Token{}, fmt.Errorf("%w: injector %q: token endpoint %s answered %s without access_token", ErrCredentialUnavailable, o.name, o.endpoint, resp.Status)
	}
	// The sooner of expires_in and max_valid_time; max_idle_time also ends
	// a token left unused (Obelisk sends expires_in = max_idle_time).
	life := o.lifetime
	switch exp, valid := tr.ExpiresIn.d(), tr.MaxValidTime.d(); {
	case exp > 0 && valid > 0:
		life = min(exp, valid)
	case exp > 0:
		life = exp
	case valid > 0:
		life = valid
	}
	return tokencache.Token{
		Value:       config.NewSecret(o.prefix + value),
		Expiry:      start.Add(life), // from the request's start: the issuer's clock started before ours
		IdleTimeout: tr.MaxIdleTime.d(),
	}, nil
}

// codedError is a fetch error that also carries the issuer's OAuth error
// code, for errors.As; its message is err's, which already names the code.
type codedError struct {
	err  error
	code *OAuthError
}

func (e *codedError) Error() string   { return e.err.Error() }
func (e *codedError) Unwrap() []error { return []error{e.err, e.code} }

// bearerAssertion signs the JWT of the JWT-bearer grant (RFC 7523 §2.1, as
// Zitadel takes it): iss = sub = the service user, aud = the issuer, valid
// for an hour (Zitadel's bound).
func (o *OAuth2) bearerAssertion() (string, error) {
	now := o.now().Unix()
	header := map[string]any{}
	if o.keyID != "" {
		header["kid"] = o.keyID
	}
	id := o.id.Reveal()
	return o.key.sign(header, map[string]any{"iss": id, "sub": id, "aud": o.assertAud, "iat": now, "exp": now + 3600})
}

// assertion signs an RFC 7523 client assertion, valid for one minute.
func (o *OAuth2) assertion() (string, error) {
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", err
	}
	now := o.now().Unix()
	header := map[string]any{}
	if o.keyID != "" {
		header["kid"] = o.keyID
	}
	id := o.id.Reveal()
	return o.key.sign(header, map[string]any{
		"iss": id, "sub": id, "aud": o.assertAud,
		"iat": now, "exp": now + 60, "jti": hex.EncodeToString(jti[:]),
	})
}

type tokenResponse struct {
	AccessToken      string  `json:"access_token"`
	Token            string  `json:"token"`
	TokenType        string  `json:"token_type"`
	ExpiresIn        seconds `json:"expires_in"`
	MaxIdleTime      seconds `json:"max_idle_time"`
	MaxValidTime     seconds `json:"max_valid_time"`
	Error            string  `json:"error"`
	ErrorDescription string  `json:"error_description"`
}

// seconds is a JSON number of seconds, or a string holding one.
type seconds float64

func (s *seconds) UnmarshalJSON(b []byte) error {
	str := strings.Trim(string(b), `"`)
	if str == "" || str == "null" {
		return nil
	}
	v, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return fmt.Errorf("not a number of seconds: %s", b)
	}
	*s = seconds(v)
	return nil
}

func (s seconds) d() time.Duration { return time.Duration(float64(s) * float64(time.Second)) }
