package injectors

import (
	"context"
	"errors"
	"net/http"
	"sort"

	"golang.org/x/net/http/httpguts"
	"gopkg.in/yaml.v3"

	"github.com/authproxy/authproxy/config"
)

// StaticConfig is the `kind: static` block: fixed headers whose values are
// secrets.
//
//	kind: static
//	headers:
//	  Authorization: {env: API_TOKEN, prefix: "Bearer "}
//	  X-Api-Key: {file: /var/run/secrets/api-key}
type StaticConfig struct {
	Kind    string                  `yaml:"kind"`
	Headers map[string]StaticHeader `yaml:"headers"`
}

// StaticHeader is one header: a secret source and an optional prefix
// written before the secret (such as "Bearer ").
type StaticHeader struct {
	config.SecretSource `yaml:",inline"`
	Prefix              string `yaml:"prefix"`
}

// Static sets fixed headers. It is immutable and safe for concurrent use.
type Static struct {
	headers []staticValue
	names   []string
}

type staticValue struct {
	name  string   // canonical header name
	value []string // one element; shared by every request, never appended to (cap == len)
}

var _ Injector = (*Static)(nil)

func buildStatic(n *yaml.Node, b builder) (Injector, error) {
	var cfg StaticConfig
	derr := config.DecodeNode(n, "", &cfg)
	s, err := newStatic(cfg, b.env.secret)
	if err = errors.Join(derr, err); err != nil {
		return nil, err
	}
	return s, nil
}

// NewStatic validates cfg and reads its secrets (lookupEnv is os.LookupEnv
// when nil). Errors name the header, never its value.
func NewStatic(cfg StaticConfig, lookupEnv func(string) (string, bool)) (*Static, error) {
	return newStatic(cfg, Env{LookupEnv: lookupEnv}.secret)
}

func newStatic(cfg StaticConfig, secret func(config.SecretSource) (config.Secret, error)) (*Static, error) {
	if len(cfg.Headers) == 0 {
		return nil, config.Errorf("headers", "at least one header is required")
	}
	names := make([]string, 0, len(cfg.Headers))
	for name := range cfg.Headers {
		names = append(names, name)
	}
	sort.Strings(names)
	s := &Static{}
	var errs []error
	for _, name := range names {
		h := cfg.Headers[name]
		path := config.Join("headers", name)
		if !httpguts.ValidHeaderFieldName(name) {
			errs = append(errs, config.Errorf(path, "invalid header name"))
			continue
		}
		if why, ok := notInjectable[http.CanonicalHeaderKey(name)]; ok {
			errs = append(errs, config.Errorf(path, "%s cannot be set by an injector: %s; remove it", http.CanonicalHeaderKey(name), why))
			continue
		}
		secret, err := secret(h.SecretSource)
		if err != nil {
			errs = append(errs, config.Errorf(path, "%v", err))
			continue
		}
		v := h.Prefix + secret.Reveal()
		if !httpguts.ValidHeaderFieldValue(v) {
			errs = append(errs, config.Errorf(path, "the value contains characters not allowed in a header (such as a newline)"))
			continue
		}
		canon := http.CanonicalHeaderKey(name)
		s.headers = append(s.headers, staticValue{name: canon, value: []string{v}[:1:1]})
		s.names = append(s.names, canon)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// notInjectable are the fields a request's transport writes itself, which
// an injected value would never reach the upstream as: each with why.
var notInjectable = map[string]string{
	"Host":              "the proxy sends the route's upstream host (or the client's, on a forward listener) as Host and :authority",
	"Content-Length":    "it describes the body the client sent",
	"Transfer-Encoding": "it describes the body the client sent",
	"Te":                "it is connection-specific",
	"Trailer":           "it declares the client's trailers",
	"Connection":        "it is connection-specific and dropped at every hop",
	"Keep-Alive":        "it is connection-specific and dropped at every hop",
	"Proxy-Connection":  "it is connection-specific and dropped at every hop",
	"Upgrade":           "it is connection-specific and dropped at every hop",
}

// Headers implements Injector.
func (s *Static) Headers() []string { return s.names }

// CanWarm implements Warmer: the values are read at start, so a static
// injector is always warm.
func (s *Static) CanWarm() string { return "" }

// Warm implements Warmer: there is nothing to fetch.
func (s *Static) Warm(context.Context) error { return nil }

// Warmed implements Warmer.
func (s *Static) Warmed() bool { return true }

// InjectsWithoutWaiting implements Immediate.
func (s *Static) InjectsWithoutWaiting() {}

// Inject implements Injector.
func (s *Static) Inject(req *Request) error {
	for _, h := range s.headers {
		req.Header[h.name] = h.value
	}
	return nil
}
