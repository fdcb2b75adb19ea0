package injectors

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/tokencache"
)

// ODILConfig is the `kind: odil` block: a session bought with a SAS token
// and user credentials, carried in a header that every response renews.
type ODILConfig struct {
	Kind string `yaml:"kind"`
	// BaseURL is the ODIL service; sessions are created at
	// {base_url}/api/sys/Company/{company}/session/create unless
	// SessionURL says otherwise.
	BaseURL    string              `yaml:"base_url"`
	Company    string              `yaml:"company"`     // default AzureLDMS
	SessionURL string              `yaml:"session_url"` // full session/create URL
	APICode    string              `yaml:"api_code"`    // default TR:SB:OneDealer:OD
	Username   config.SecretSource `yaml:"username"`
	Password   config.SecretSource `yaml:"password"`
	SAS        SASConfig           `yaml:"sas"`
	// SessionHeader carries the session both ways (default Session).
	SessionHeader string `yaml:"session_header"`
	// SessionIdleTimeout, when set, drops a session unused this long
	// without asking (default 0: only when ODIL says it expired).
	SessionIdleTimeout config.Duration `yaml:"session_idle_timeout"`
	// External sets the ODIL external-interface headers.
	External *ODILEntity `yaml:"external"`
}

// ODILEntity is the external interface's entity headers. Both owner IDs
// are required; the dimensions are optional.
type ODILEntity struct {
	OwnerUserID            string `yaml:"owner_user_id"`
	OwnerCompanyID         string `yaml:"owner_company_id"`
	DimensionCompany       string `yaml:"dimension_company"`
	DimensionBranch        string `yaml:"dimension_branch"`
	DimensionLocation      string `yaml:"dimension_location"`
	DimensionMake          string `yaml:"dimension_make"`
	DimensionMarketSegment string `yaml:"dimension_market_segment"`
}

// ODIL session error codes.
const (
	odilSessionExpired = "uri:TR:ErrorCodes:Common:SessionExpired"
	odilSessionInvalid = "uri:TR:ErrorCodes:Common:SessionInvalid"
)

// ODIL injects a rolling ODIL session. It is safe for concurrent use.
type ODIL struct {
	name       string
	events     Events
	cache      *tokencache.Cache
	client     *http.Client
	now        func() time.Time
	sessionURL string
	endpoint   string // sessionURL without query, for messages
	apiCode    string
	username   config.Secret
	password   config.Secret
	sas        sasSigner
	header     string
	idle       time.Duration
	entity     []staticValue
	key        string
	fetchFn    tokencache.FetchFunc
	secrets    scrubber // what createSession sends, in each encoding
}

var (
	_ Injector         = (*ODIL)(nil)
	_ ResponseObserver = (*ODIL)(nil)
	_ Runner           = (*ODIL)(nil)
)

// NewODIL validates cfg and reads its secrets. It does no network I/O.
func NewODIL(name string, cfg ODILConfig, env Env) (*ODIL, error) {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, config.Errorf(path, format, args...)) }
	o := &ODIL{name: name, events: eventsOf(env), cache: env.Cache, client: noRedirects(env.HTTPClient), now: env.Now,
		apiCode: cfg.APICode, header: http.CanonicalHeaderKey(cfg.SessionHeader), idle: time.Duration(cfg.SessionIdleTimeout)}
	if o.now == nil {
		o.now = time.Now
	}
	if o.apiCode == "" {
		o.apiCode = "TR:SB:OneDealer:OD"
	}
	if cfg.SessionHeader == "" {
		o.header = "Session"
	} else if !httpguts.ValidHeaderFieldName(cfg.SessionHeader) {
		add("session_header", "invalid header name")
	}
	company := cfg.Company
	if company == "" {
		company = "AzureLDMS"
	}
	o.sessionURL = cfg.SessionURL
	if o.sessionURL == "" && cfg.BaseURL != "" {
		o.sessionURL = strings.TrimRight(cfg.BaseURL, "/") + "/api/sys/Company/" + url.PathEscape(company) + "/session/create"
	}
	switch u, err := url.Parse(o.sessionURL); {
	case o.sessionURL == "":
		add("base_url", "required (or session_url)")
	case config.HasUserInfo(o.sessionURL):
		add(odilURLKey(cfg), "%q: takes no user info (it would be sent and shown in messages); give the credentials as username and password", config.RedactURL(o.sessionURL))
	case err != nil || u.Host == "":
		add(odilURLKey(cfg), "%q is not an absolute URL", o.sessionURL)
	case u.Scheme != "https":
		add("base_url", "must be https: the SAS token and password would travel in plaintext")
	default:
		o.endpoint = endpointOf(o.sessionURL)
	}
	var err error
	if o.username, err = env.secret(cfg.Username); err != nil {
		add("username", "%v", err)
	}
	if o.password, err = env.secret(cfg.Password); err != nil {
		add("password", "%v", err)
	}
	var sasErrs []error
	o.sas, sasErrs = newSASSigner(cfg.SAS, cfg.BaseURL, env.secret)
	for _, e := range sasErrs {
		errs = append(errs, config.Prefix("sas", e))
	}
	if o.sas.uri == "" {
		add("sas.resource_uri", "required when session_url is used without base_url")
	}
	if ent := cfg.External; ent != nil {
		for _, h := range []struct{ name, path, value string }{
			{"EntityOwnerUserID", "owner_user_id", ent.OwnerUserID},
			{"EntityOwnerCompanyID", "owner_company_id", ent.OwnerCompanyID},
			{"DimensionCompany", "dimension_company", ent.DimensionCompany},
			{"DimensionBranch", "dimension_branch", ent.DimensionBranch},
			{"DimensionLocation", "dimension_location", ent.DimensionLocation},
			{"DimensionMake", "dimension_make", ent.DimensionMake},
			{"DimensionMarketSegment", "dimension_market_segment", ent.DimensionMarketSegment},
		} {
			switch {
			case h.value == "" && strings.HasPrefix(h.name, "EntityOwner"):
				add(config.Join("external", h.path), "required by the external interface")
			case h.value == "":
			case !httpguts.ValidHeaderFieldValue(h.value):
				add(config.Join("external", h.path), "contains characters not allowed in a header")
			default:
				o.entity = append(o.entity, staticValue{name: h.name, value: []string{h.value}[:1:1]})
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if o.cache == nil || o.client == nil {
		return nil, errors.New("odil: built without a token cache or HTTP client")
	}
	o.key = name + "\x00" + o.apiCode
	o.fetchFn = o.createSession
	// A session rolls with every response: with a shared store, every
	// request reads the current session from it, and each renewal replaces
	// it there first (compare-and-set), so no proxy of the fleet sends a
	// session another has seen replaced.
	o.cache.Rolling(name)
	o.cache.Identify(name, "odil", o.sessionURL, o.username.Reveal(), digest(o.password.Reveal()), digest(string(o.sas.key)))
	o.secrets.add(o.password.Reveal(), string(o.sas.key))
	return o, nil
}

// Headers implements Injector.
func (o *ODIL) Headers() []string {
	out := []string{o.header}
	for _, h := range o.entity {
		out = append(out, h.name)
	}
	return out
}

// Run implements Runner: the shared cache's background work.
func (o *ODIL) Run(ctx context.Context) error { return o.cache.Run(ctx) }

// Inject implements Injector: the current session, and the entity headers.
func (o *ODIL) Inject(req *Request) error {
	tok, err := o.cache.Get(req.Context(), o.key, o.fetchFn)
	if err != nil {
		return tokenErr(req, err)
	}
	o.set(req, tok)
	return nil
}

// CanWarm implements Warmer: the session is known at start.
func (o *ODIL) CanWarm() string { return "" }

// Warm implements Warmer: it creates the session.
func (o *ODIL) Warm(ctx context.Context) error { return o.cache.Warm(ctx, o.key, o.fetchFn) }

// Warmed implements Warmer.
func (o *ODIL) Warmed() bool { return o.cache.Has(o.key) }

// TryInject implements Prompt: the current session, if there is one.
func (o *ODIL) TryInject(req *Request) (bool, error) {
	tok, ok := o.cache.Peek(o.key)
	if ok {
		o.set(req, tok)
	}
	return ok, nil
}

func (o *ODIL) set(req *Request, tok tokencache.Token) {
	req.Header[o.header] = []string{tok.Value.Reveal()}
	for _, h := range o.entity {
		req.Header[h.name] = h.value
	}
}

// ObserveResponse implements ResponseObserver. A renewed session in the
// response replaces the one the request carried (never a newer one: see
// tokencache.Cache.Replace). A 400 saying the session expired or is invalid
// drops it and asks for the request to be sent again with a new one.
func (o *ODIL) ObserveResponse(req *Request, resp *http.Response) bool {
	sent := req.Header.Get(o.header)
	if renewed := resp.Header.Get(o.header); renewed != "" && renewed != sent {
		if o.cache.Replace(o.key, sent, tokencache.Token{Value: config.NewSecret(renewed), IdleTimeout: o.idle}) {
			o.events.Event(o.name, "renewal")
		}
	}
	if resp.StatusCode != http.StatusBadRequest {
		return false
	}
	var e struct{ Code string }
	if json.Unmarshal(peekBody(resp, MaxObservedBody), &e) != nil || (e.Code != odilSessionExpired && e.Code != odilSessionInvalid) {
		return false
	}
	o.events.Event(o.name, "session_expired") // the next request creates a session
	return o.cache.Invalidate(o.key, sent)
}

// peekBody reads up to n bytes of resp.Body and puts them back in front of
// the rest, so the client still gets the whole body.
func peekBody(resp *http.Response, n int64) []byte {
	buf, _ := io.ReadAll(io.LimitReader(resp.Body, n))
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(buf), resp.Body), resp.Body}
	return buf
}

// createSession buys a session: POST session/create with the SAS token
// and the user's credentials.
func (o *ODIL) createSession(ctx context.Context) (tokencache.Token, error) {
	body, _ := json.Marshal(map[string]any{
		"Target":      map[string]string{"ApiCode": o.apiCode},
		"Credentials": map[string]string{"Username": o.username.Reveal(), "Password": o.password.Reveal()},
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.sessionURL, bytes.NewReader(body))
	if err != nil {
		return tokencache.Token{}, fmt.Errorf("%w: injector %q: %v", ErrCredentialUnavailable, o.name, err)
	}
	sas := o.sas.token(o.now())
	req.Header.Set("Authorization", sas)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := o.client.Do(req)
	if err != nil {
		return tokencache.Token{}, issuerErr(o.name, "session/create at "+o.endpoint, err,
			func(msg string) string { return o.secrets.scrub(msg, o.sas.parts(sas)...) })
	}
	defer resp.Body.Close()
	if isRedirect(resp) {
		return tokencache.Token{}, redirectErr(o.name, "session/create at "+o.endpoint, resp)
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponse))
	var r struct{ Session, Code, Message string }
	jsonErr := json.Unmarshal(data, &r)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		kind := ErrCredentialUnavailable
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden ||
			resp.StatusCode == http.StatusBadRequest && strings.HasSuffix(r.Code, "AuthenticationFailed") {
			kind = ErrCredentialRejected
		}
		detail := r.Code
		if r.Message != "" {
			detail += " (" + r.Message + ")"
		}
		if detail == "" {
			detail = string(data)
		}
		return tokencache.Token{}, fmt.Errorf("%w: injector %q: session/create at %s answered %s: %s",
			kind, o.name, o.endpoint, resp.Status, o.secrets.excerpt([]byte(detail), o.sas.parts(sas)...))
	}
	if jsonErr != nil || r.Session == "" {
		return tokencache.Token{}, fmt.Errorf("%w: injector %q: session/create at %s answered %s without a Session",
			ErrCredentialUnavailable, o.name, o.endpoint, resp.Status)
	}
	return tokencache.Token{Value: config.NewSecret(r.Session), IdleTimeout: o.idle}, nil
}

// odilURLKey is the key an ODIL session URL came from.
func odilURLKey(cfg ODILConfig) string {
	if cfg.SessionURL != "" {
		return "session_url"
	}
	return "base_url"
}
