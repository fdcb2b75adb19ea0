// Package injectors holds the credential injectors: one file per kind,
// each built once from its config block (New…(cfg) validates and
// precomputes) and then applied to outbound requests by the proxy.
package injectors

import (
	"context"
	"errors"
	"net/http"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/proxy/route"
)

// Request is one outbound request being given its credential.
type Request struct {
	// Request is the outbound request: the proxy's own copy, whose headers
	// the injector may change. Its context ends when the client goes away.
	*http.Request
	// Route is the name of the matched route.
	Route string
	// Params are the values captured by the route's path template.
	Params route.Params
}

// Injector adds a credential to outbound requests. Implementations are
// safe for concurrent use.
type Injector interface {
	// Headers lists the headers Inject sets. The proxy removes them (with
	// Authorization and Proxy-Authorization) from the client's request
	// before calling Inject, so a client can never supply its own.
	Headers() []string
	// Inject sets the credential on req. An error means the request must
	// not be sent; wrap ErrCredentialUnavailable or ErrCredentialRejected
	// so the client gets the right status.
	Inject(req *Request) error
}

// ResponseObserver is implemented by injectors that learn from responses,
// such as a session header renewed on every response. ObserveResponse runs
// before the response reaches the client and must not read resp.Body.
type ResponseObserver interface {
	ObserveResponse(req *Request, resp *http.Response)
}

// Runner is implemented by injectors with background work (token refresh,
// token streams). The proxy calls Run once; it returns when ctx ends.
type Runner interface {
	Run(ctx context.Context) error
}

// Sentinel errors an injector wraps, mapped to a client status by the proxy.
var (
	// ErrCredentialUnavailable: the credential could not be obtained now
	// (issuer unreachable, timed out). HTTP 503, gRPC UNAVAILABLE.
	ErrCredentialUnavailable = errors.New("credential unavailable")
	// ErrCredentialRejected: the issuer refused the proxy's own credentials
	// (bad client secret). HTTP 502, gRPC UNAUTHENTICATED.
	ErrCredentialRejected = errors.New("credential rejected")
)

// kinds maps a config `kind` to its builder. Each builder decodes its block
// with config.DecodeNode (errors relative to the block) and calls New….
var kinds = map[string]func(n *yaml.Node) (Injector, error){
	"static": buildStatic,
}

// Kinds lists the known injector kinds.
func Kinds() []string {
	out := make([]string, 0, len(kinds))
	for k := range kinds {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// BuildAll builds every injector block of the config. Errors name their
// YAML path (injectors.<name>.…) and are all reported together.
func BuildAll(blocks map[string]yaml.Node) (map[string]Injector, error) {
	names := make([]string, 0, len(blocks))
	for name := range blocks {
		names = append(names, name)
	}
	sort.Strings(names)
	out := make(map[string]Injector, len(blocks))
	var errs []error
	for _, name := range names {
		n := blocks[name]
		path := config.Join("injectors", name)
		inj, err := build(&n)
		if err != nil {
			errs = append(errs, config.Prefix(path, err))
			continue
		}
		out[name] = inj
	}
	return out, config.FirstPerPath(errs...)
}

func build(n *yaml.Node) (Injector, error) {
	if n.Kind != yaml.MappingNode {
		return nil, config.Errorf("", "expected a mapping with a kind (one of %s)", strings.Join(Kinds(), ", "))
	}
	var kind string
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "kind" {
			kind = n.Content[i+1].Value
		}
	}
	b, ok := kinds[kind]
	switch {
	case kind == "":
		return nil, config.Errorf("kind", "required (one of %s)", strings.Join(Kinds(), ", "))
	case !ok:
		return nil, config.Errorf("kind", "unknown injector kind %q (known: %s)", kind, strings.Join(Kinds(), ", "))
	}
	return b(n)
}
