// Package injectors holds the credential injectors: one file per kind,
// each built once from its config block (New…(cfg) validates and
// precomputes) and then applied to outbound requests by the proxy.
package injectors

import (
	"crypto/sha256"
	"encoding/hex"
	"reflect"
	"slices"

	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/route"
	"github.com/authproxy/authproxy/tokencache"
	"github.com/authproxy/authproxy/tokencache/redisstore"
	"github.com/authproxy/authproxy/transport"
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
	// ClientHost is the Host (:authority) the client sent, before the
	// proxy pointed the request at its upstream.
	ClientHost string
	// Stripped holds the credential headers the client sent, removed
	// before Inject (nil when there were none): an injector may recognise
	// a token it handed out.
	Stripped http.Header
	// Sidecar is set on sidecar listeners, whose address is ListenerAddr.
	Sidecar      bool
	ListenerAddr string
	// ClientCertThumbprint is the base64url SHA-256 of the client
	// certificate the route's upstream connection presents (tls_client), ""
	// for none: a token bound to a certificate (RFC 8705 cnf.x5t#S256) is
	// sent only where that certificate is presented.
	ClientCertThumbprint string
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
// before the response reaches the client; it may read a bounded prefix of
// resp.Body only if it puts back an equivalent body (see peekBody), or wrap
// resp.Body in a reader that streams it through (see package grpcframe). It
// returns true when the response shows that the credential was stale and
// has been dropped (an upstream 401 or gRPC UNAUTHENTICATED): the proxy then
// sends the request once more, with a fresh credential, if it can replay
// the body.
type ResponseObserver interface {
	ObserveResponse(req *Request, resp *http.Response) (retry bool)
}

// SelectiveObserver is implemented by ResponseObservers that look at the
// responses of some requests only. For the others the proxy neither keeps
// the request body for a retry nor shows the observer the response, so
// Observes must be true of every request whose response ObserveResponse
// or TapMessages would act on.
type SelectiveObserver interface {
	ResponseObserver
	Observes(req *Request) bool
}

// HeadObserver is implemented by ResponseObservers that read nothing of a
// response but its status and headers, and leave its body alone: the frame
// relay passes their responses' heads on at once. For other observers it
// holds a response whose content-length is at most MaxObservedBody until
// its body is complete, so that the observer can read it.
type HeadObserver interface {
	ResponseObserver
	ObservesHeadOnly()
}

// MaxObservedBody bounds the response body an observer may read (an ODIL
// session error, a VISS token error): longer bodies, and bodies of unknown
// length, stream on unread.
const MaxObservedBody = 16 << 10

// MessageObserver is implemented by ResponseObservers that read (and may
// rewrite) the gRPC messages of responses as they stream. The frame relay
// calls TapMessages with the final response head and re-frames the
// messages through the tap, holding one message at a time
// (h2relay.MaxTapMessage); the HTTP/1.1 engine's ObserveResponse wraps the
// body with the same tap (package grpcframe).
type MessageObserver interface {
	ResponseObserver
	// TapMessages returns what reads the messages of req's response, whose
	// final head is status and header; nil reads none.
	TapMessages(req *Request, status int, header http.Header) *MessageTap
}

// MessageTap reads one response's gRPC messages.
type MessageTap struct {
	// Message sees each message (compressed: its flag) and returns what is
	// sent in its place, msg itself or a replacement.
	Message func(compressed bool, msg []byte) []byte
	// End, when set, is called once the response has ended, with its
	// trailers; it is not called for a response that was cut short.
	End func(trailer http.Header)
}

// Immediate is implemented by injectors whose Inject never waits (no
// token to fetch, no I/O): the frame relay runs them on the connection's
// reading goroutine instead of a goroutine of the stream's own.
type Immediate interface {
	InjectsWithoutWaiting()
}

// Prompt is implemented by injectors that can often add the credential
// without waiting (a valid token in the cache, a session token in hand).
// TryInject does what Inject does when it need not wait and reports true;
// when it would have to wait it changes nothing and reports false. The
// frame relay calls it on the connection's reading goroutine, and only a
// stream it reports false for is decided on a goroutine of its own. An
// error is a failure, as Inject's.
type Prompt interface {
	TryInject(req *Request) (bool, error)
}

// Warmer is implemented by injectors that hold credentials known at start
// (a fixed scope set, an ODIL session, the openOBD controller token). With
// warm: true on its block, the proxy calls Warm as it starts, and is not
// ready until Warmed reports them held and valid.
type Warmer interface {
	// CanWarm says why not when the credentials depend on the request
	// ("" when they do not); BuildAll refuses warm: true then.
	CanWarm() string
	// Warm fetches them, trying again after failures, until they are held
	// or ctx ends.
	Warm(ctx context.Context) error
	// Warmed reports whether they are held and valid now (not a use).
	Warmed() bool
}

// takeWarm reads and removes an injector block's warm key (common to
// every kind, so the kinds' strict decoders do not see it).
func takeWarm(n *yaml.Node) (bool, error) {
	var rest []*yaml.Node
	warm := false
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value != "warm" {
			rest = append(rest, n.Content[i], n.Content[i+1])
			continue
		}
		if err := n.Content[i+1].Decode(&warm); err != nil {
			return false, config.Errorf("warm", "expected true or false")
		}
	}
	n.Content = rest
	return warm, nil
}

// takeTLSClient removes tls_client from the block and returns it (nil:
// none).
func takeTLSClient(n *yaml.Node) (*config.TLSClientCert, error) {
	var rest []*yaml.Node
	var tc *config.TLSClientCert
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value != "tls_client" {
			rest = append(rest, n.Content[i], n.Content[i+1])
			continue
		}
		tc = new(config.TLSClientCert)
		if err := config.DecodeNode(n.Content[i+1], "tls_client", tc); err != nil {
			return nil, err
		}
		if tc.CertFile == "" || tc.KeyFile == "" {
			return nil, config.Errorf("tls_client", "give cert_file and key_file (the client certificate and its key, PEM)")
		}
	}
	n.Content = rest
	return tc, nil
}

// withClientCert is env for an injector whose issuer connections present
// a client certificate: its HTTP client and transport have pools of their
// own (renewed with the certificate). With SkipSecrets nothing is read.
func withClientCert(env Env, tc config.TLSClientCert) (Env, error) {
	if env.SkipSecrets {
		env.ClientCertFile = tc.CertFile
		return env, nil
	}
	cert, err := transport.LoadClientCert(tc, "tls_client", env.Log)
	if err != nil {
		return env, err
	}
	cs := env.Transport.WithClientCert(cert)
	// The transport of injectors that dial themselves (openOBD's gRPC):
	// its Dial and its TLS config, whose GetClientCertificate always gives
	// the certificate as renewed.
	env.Transport, _ = cs.Current()
	env.HTTPClient = &http.Client{Transport: cs}
	env.ClientCert, env.ClientCertFile = cert, tc.CertFile
	return env, nil
}

// Fingerprints sums each injector block as a reload compares it: its YAML,
// and what its secrets are now (the contents of every file it names under
// a file or *_file key, the values of its env keys). Equal sums mean the
// running instance may go on serving the block.
func Fingerprints(cfg *config.Config, lookupEnv func(string) (string, bool)) map[string]string {
	out := map[string]string{}
	for name, n := range cfg.Injectors {
		h := sha256.New()
		text, _ := yaml.Marshal(&n)
		h.Write(text)
		walkSecrets(&n, func(kind, ref string) {
			fmt.Fprintf(h, "\x00%s\x00%s\x00", kind, ref)
			switch kind {
			case "file":
				b, err := os.ReadFile(ref)
				switch {
				case errors.Is(err, fs.ErrNotExist) || err == nil && writtenHere(ref, b):
					// A file the proxy wrote itself (a generated key) is
					// as it was before: absent.
					h.Write([]byte("absent"))
					return
				case err != nil:
					fmt.Fprintf(h, "error: %v", err)
				}
				h.Write(b)
			case "env":
				v, _ := lookupEnv(ref)
				h.Write([]byte(v))
			}
		})
		out[name] = hex.EncodeToString(h.Sum(nil))
	}
	return out
}

// BlockFingerprints digests each injector's block as written, leaving out
// what its secrets hold (and inline secret values): an injector whose
// Fingerprints changed while its BlockFingerprints did not had only its
// credentials rotated.
func BlockFingerprints(cfg *config.Config) map[string]string {
	out := map[string]string{}
	for name, n := range cfg.Injectors {
		out[name] = config.NodeFingerprint(&n)
	}
	return out
}

// written holds the files the proxy wrote itself (a generated long-term
// key), by absolute path, with the SHA-256 of what it wrote. Such a file
// is the proxy's state, not configuration: its appearance is no change to
// reload for.
var written sync.Map // string -> [32]byte

// writeOnce writes content to path as a file of mode 0600 that must not
// exist yet, whole (a link to a finished temporary file, so that no one
// ever sees it in part), and records it as written by the proxy.
func writeOnce(path string, content []byte) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(abs), "."+filepath.Base(abs)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(content)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	written.Store(abs, sha256.Sum256(content))
	if err := os.Link(tmp.Name(), abs); err != nil {
		written.Delete(abs)
		return err
	}
	return nil
}

// WrittenByProxy reports whether path holds what the proxy itself wrote
// there (writeOnce), for a watcher that must not reload for it.
func WrittenByProxy(path string) bool {
	b, err := os.ReadFile(path)
	return err == nil && writtenHere(path, b)
}

func writtenHere(path string, content []byte) bool {
	abs, err := filepath.Abs(path)
	if err != nil {
		return false
	}
	sum, ok := written.Load(abs)
	return ok && sum.([32]byte) == sha256.Sum256(content)
}

// SecretFiles lists the files the injector blocks name (file and *_file
// keys), for a watcher.
func SecretFiles(cfg *config.Config) []string {
	var out []string
	for _, n := range cfg.Injectors {
		walkSecrets(&n, func(kind, ref string) {
			if kind == "file" {
				out = append(out, ref)
			}
		})
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// IssuedTokenFiles lists the files of tokens someone else issues that the
// injector blocks read at each use (PerUseKeys): not watched, but they
// must be there.
func IssuedTokenFiles(cfg *config.Config) []string {
	var out []string
	for _, n := range cfg.Injectors {
		if n.Kind != yaml.MappingNode {
			continue
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k, v := n.Content[i].Value, n.Content[i+1]; slices.Contains(PerUseKeys, k) && v.Kind == yaml.MappingNode {
				for j := 0; j+1 < len(v.Content); j += 2 {
					if v.Content[j].Value == "file" && v.Content[j+1].Value != "" {
						out = append(out, v.Content[j+1].Value)
					}
				}
			}
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// walkSecrets calls fn for every file and env a block names, but for the
// issued tokens it reads at each use (PerUseKeys).
func walkSecrets(n *yaml.Node, fn func(kind, ref string)) {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i].Value, n.Content[i+1]
			switch {
			case slices.Contains(PerUseKeys, k):
			case v.Kind == yaml.ScalarNode && config.IsFileKey(k) && v.Value != "":
				fn("file", v.Value)
			case v.Kind == yaml.ScalarNode && k == "env" && v.Value != "":
				fn("env", v.Value)
			default:
				walkSecrets(v, fn)
			}
		}
	case yaml.SequenceNode:
		for _, c := range n.Content {
			walkSecrets(c, fn)
		}
	}
}

// WarmNames lists the injectors whose blocks say warm: true, sorted.
func WarmNames(cfg *config.Config) []string {
	var out []string
	for name, n := range cfg.Injectors {
		if n.Kind != yaml.MappingNode {
			continue
		}
		if warm, err := takeWarm(&n); err == nil && warm {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// Events counts what injectors do besides fetching (for metrics): event
// is a fixed word ("rotation", "reconnect", "renewal", "session_expired").
type Events interface {
	Event(injector, event string)
}

type noEvents struct{}

func (noEvents) Event(string, string) {}

func eventsOf(env Env) Events {
	if env.Events == nil {
		return noEvents{}
	}
	return env.Events
}

// Reporter is implemented by injectors that hold sessions of their own
// (openOBD), for the status page.
type Reporter interface {
	Sessions() []SessionReport
}

// SessionReport describes a session an injector holds: never a token.
type SessionReport struct {
	ID, State, Endpoint string
	Since               time.Time // when the proxy learned of it
	Ended               string    // why it ended ("" while live)
	Stream              string    // its token stream: open, connecting, closed…
	Rotations           int       // tokens received over the stream
	LastRotation        time.Time
	Reconnects          int
}

// PathParamUser is implemented by injectors whose templates read path
// values; the proxy checks that every route using the injector captures
// them.
type PathParamUser interface {
	PathParams() []string
}

// StartWarner is implemented by injectors whose configuration is allowed
// but risky (a plain-HTTP issuer): the proxy logs each warning at start.
type StartWarner interface {
	StartWarnings() []string
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
	// ErrBadRequest: the request lacks what the credential needs (a value
	// a scope template reads). HTTP 400, gRPC INVALID_ARGUMENT.
	ErrBadRequest = errors.New("request cannot be given a credential")
	// ErrFailedPrecondition: the request cannot be matched to the state
	// its credential belongs to (which session?). HTTP 412, gRPC
	// FAILED_PRECONDITION; the message after the sentinel reaches the client.
	ErrFailedPrecondition = errors.New("request does not fit the credential's state")
)

// Env is what builders get besides their config block. Zero fields take
// defaults built from the config.
type Env struct {
	// Cache is the token cache shared by token-based injectors.
	Cache *tokencache.Cache
	// Shared, when set, is the fleet's store (token_cache.shared) for
	// state other than tokens: openOBD sessions.
	Shared SharedState
	// HTTPClient sends token requests (never through an environment proxy).
	HTTPClient *http.Client
	// Transport dials upstreams for injectors with connections of their
	// own (gRPC token streams).
	Transport *transport.Set
	// LookupEnv reads environment variables for secrets (os.LookupEnv).
	LookupEnv func(string) (string, bool)
	// Now is the clock (time.Now).
	Now func() time.Time
	// Log receives what an injector notices while it runs (nil discards).
	Log *slog.Logger
	// Events counts injectors' events (nil: none).
	Events Events
	// ClientCert is the client certificate the injector's issuer
	// connections present (tls_client; nil: none).
	ClientCert *transport.ClientCert
	// ClientCertFile is tls_client's cert_file (set with SkipSecrets too).
	ClientCertFile string
	// SkipSecrets (authproxy check -skip-secrets) reads no secret: each
	// source is checked for its shape only and stands for a placeholder,
	// and what would be parsed out of one (a signing key, a key file) is
	// not checked. Such injectors are for validating a config, never for
	// serving.
	SkipSecrets bool
}

// secret reads a secret source, or with SkipSecrets checks its shape.
func (e Env) secret(s config.SecretSource) (config.Secret, error) {
	if e.SkipSecrets {
		if err := s.Check(); err != nil {
			return config.Secret{}, err
		}
		return config.NewSecret(skippedSecret), nil
	}
	return s.Resolve(e.LookupEnv)
}

// skippedSecret stands for a secret that was not read: a valid header
// value and valid base64, as a SAS key must be.
const skippedSecret = "c2tpcHBlZA=="

// builder is what each kind's build function receives.
type builder struct {
	name string // the injector's name in the config
	env  Env
}

// kinds maps a config `kind` to its builder. Each builder decodes its block
// with config.DecodeNode (errors relative to the block) and calls New….
var kinds = map[string]func(n *yaml.Node, b builder) (Injector, error){
	"static":  buildStatic,
	"oauth2":  decodeThen(NewOAuth2),
	"odil":    decodeThen(NewODIL),
	"openobd": decodeThen(NewOpenOBD),
	"viss":    decodeThen(NewVISS),
}

// decodeThen is the builder of a kind whose block decodes into C and whose
// constructor is newFn.
func decodeThen[C any, I Injector](newFn func(name string, cfg C, env Env) (I, error)) func(*yaml.Node, builder) (Injector, error) {
	return func(n *yaml.Node, b builder) (Injector, error) {
		var cfg C
		if err := config.DecodeNode(n, "", &cfg); err != nil {
			return nil, err
		}
		inj, err := newFn(b.name, cfg, b.env)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return inj, nil
	}
}

// KindTypes gives the type each kind's block decodes into (less warm,
// which every kind takes): what config.Schema describes.
func KindTypes() map[string]reflect.Type {
	return map[string]reflect.Type{
		"static":  reflect.TypeFor[StaticConfig](),
		"oauth2":  reflect.TypeFor[OAuth2Config](),
		"odil":    reflect.TypeFor[ODILConfig](),
		"openobd": reflect.TypeFor[OpenOBDConfig](),
		"viss":    reflect.TypeFor[VISSConfig](),
	}
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

// CacheOptions are the token cache's options as token_cache configures
// them; now is the clock (nil: time.Now).
func CacheOptions(tc config.TokenCache, now func() time.Time) tokencache.Options {
	return tokencache.Options{
		Size: tc.Size, RefreshFraction: tc.RefreshFraction, MinMargin: time.Duration(tc.MinMargin),
		FetchTimeout: time.Duration(tc.FetchTimeout), MinBackoff: time.Duration(tc.MinBackoff),
		MaxBackoff: time.Duration(tc.MaxBackoff), Now: now,
	}
}

// digest is a secret's SHA-256 in hex: part of an identity (Cache.Identify),
// never shown.
func digest(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// SharedState is what the fleet's store keeps besides tokens: values
// sealed under keys (never readable by the store), and leases that one
// proxy at a time holds.
type SharedState interface {
	// Up reports whether the store is reachable.
	Up() bool
	Put(ctx context.Context, key string, value []byte, ttl time.Duration) error
	Get(ctx context.Context, key string) ([]byte, bool, error)
	// Lease takes key's lease for this proxy, or renews it, for ttl, and
	// reports whether this proxy holds it.
	Lease(ctx context.Context, key string, ttl time.Duration) (bool, error)
}

// NewStore builds the shared token store of token_cache.shared (nil when
// there is none), reading its secrets; errors name their YAML path. With
// SkipSecrets, or when the config's own validation reports the block, it
// returns nil. env.Log gets the store's state changes.
func NewStore(cfg *config.Config, env Env) (*redisstore.Store, error) {
	sh := cfg.TokenCache.Shared
	if sh == nil || env.SkipSecrets {
		return nil, nil
	}
	if !sh.EncryptionKey.IsSet() || sh.Address == "" || sh.EncryptionKey.Check() != nil {
		return nil, nil // config validation says what is wrong
	}
	var errs []error
	read := func(path string, src config.SecretSource) string {
		if !src.IsSet() || src.Check() != nil { // a bad shape is config validation's
			return ""
		}
		v, err := env.secret(src)
		if err != nil {
			errs = append(errs, config.Errorf(path, "%v", err))
		}
		return v.Reveal()
	}
	key := read("token_cache.shared.encryption_key", sh.EncryptionKey)
	if len(errs) == 0 && len(key) < redisstore.MinKeyLength {
		errs = append(errs, config.Errorf("token_cache.shared.encryption_key", "%d characters; at least %d are needed", len(key), redisstore.MinKeyLength))
	}
	user := read("token_cache.shared.username", sh.Username)
	pass := read("token_cache.shared.password", sh.Password)
	set := env.Transport
	if set == nil {
		var err error
		if set, err = transport.New(cfg.Upstream); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	opts := redisstore.Options{
		Address: sh.Address, Username: user, Password: pass, KeyPrefix: sh.KeyPrefix, EncryptionKey: []byte(key),
		Dial:         set.Dial,
		FetchTimeout: time.Duration(cfg.TokenCache.FetchTimeout), MinBackoff: time.Duration(cfg.TokenCache.MinBackoff),
		MaxBackoff: time.Duration(cfg.TokenCache.MaxBackoff), Log: env.Log,
	}
	if sh.TLS {
		host, _, _ := net.SplitHostPort(sh.Address)
		opts.TLS = &tls.Config{RootCAs: set.TLS.TLSClientConfig.RootCAs, ServerName: host, MinVersion: tls.VersionTLS12}
	}
	st, err := redisstore.New(opts)
	if err != nil {
		return nil, config.Errorf("token_cache.shared", "%v", err)
	}
	return st, nil
}

// BuildAll builds every injector block of the config. Errors name their
// YAML path (injectors.<name>.…) and are all reported together.
func BuildAll(cfg *config.Config, env Env) (map[string]Injector, error) {
	if env.Cache == nil {
		opts := CacheOptions(cfg.TokenCache, env.Now)
		opts.Log = env.Log
		env.Cache = tokencache.New(opts)
	}
	var errs []error
	if env.Transport == nil {
		set, err := transport.New(cfg.Upstream)
		if err != nil {
			errs = append(errs, err) // reported with the rest; build on with the defaults
			set, _ = transport.New(config.Upstream{})
		}
		env.Transport = set
	}
	if env.HTTPClient == nil {
		env.HTTPClient = env.Transport.Client(0) // each fetch is bounded by the cache's fetch timeout
	}
	if env.LookupEnv == nil {
		env.LookupEnv = os.LookupEnv
	}
	if env.Now == nil {
		env.Now = time.Now
	}
	if env.Log == nil {
		env.Log = slog.New(slog.DiscardHandler)
	}
	if env.Events == nil {
		env.Events = noEvents{}
	}
	blocks := cfg.Injectors
	names := make([]string, 0, len(blocks))
	for name := range blocks {
		names = append(names, name)
	}
	sort.Strings(names)
	out := make(map[string]Injector, len(blocks))
	for _, name := range names {
		n := blocks[name]
		path := config.Join("injectors", name)
		inj, err := build(&n, builder{name: name, env: env})
		if err != nil {
			errs = append(errs, config.Prefix(path, err))
			continue
		}
		out[name] = inj
	}
	return out, config.FirstPerPath(errs...)
}

func build(n *yaml.Node, bld builder) (Injector, error) {
	if n.Kind != yaml.MappingNode {
		return nil, config.Errorf("", "expected a mapping with a kind (one of %s)", strings.Join(Kinds(), ", "))
	}
	warm, err := takeWarm(n)
	if err != nil {
		return nil, err
	}
	tlsClient, err := takeTLSClient(n)
	if err != nil {
		return nil, err
	}
	var kind string
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "kind" {
			kind = n.Content[i+1].Value
		}
	}
	if tlsClient != nil {
		if kind == "static" {
			return nil, config.Errorf("tls_client", "a static injector calls no issuer: a client certificate for the upstream goes on the route (routes[].tls_client)")
		}
		if bld.env, err = withClientCert(bld.env, *tlsClient); err != nil {
			return nil, err
		}
	}

	b, ok := kinds[kind]
	switch {
	case kind == "":
		return nil, config.Errorf("kind", "required (one of %s)", strings.Join(Kinds(), ", "))
	case !ok:
		return nil, config.Errorf("kind", "unknown injector kind %q (known: %s)", kind, strings.Join(Kinds(), ", "))
	}
	inj, err := b(n, bld)
	if err != nil || !warm {
		return inj, err
	}
	w, ok := inj.(Warmer)
	if !ok {
		return nil, config.Errorf("warm", "a %s injector cannot be warmed", kind)
	}
	if why := w.CanWarm(); why != "" {
		return nil, config.Errorf("warm", "no credential is known before a request arrives: %s", why)
	}
	return inj, nil
}

// tokenErr is what a token-based injector returns when it has no token:
// the caller's own cancellation as it is, an issuer's refusal as it is, and
// anything else as ErrCredentialUnavailable.
func tokenErr(req *Request, err error) error {
	if req.Context().Err() != nil || errors.Is(err, ErrCredentialRejected) || errors.Is(err, ErrCredentialUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrCredentialUnavailable, err)
}

// ErrTimeout is wrapped, besides ErrCredentialUnavailable, by the error of
// a request to an issuer that timed out (metrics tell it apart).
var ErrTimeout = errors.New("timed out")

type timedOut struct{ error }

func (t timedOut) Unwrap() []error { return []error{t.error, ErrTimeout} }

// issuerErr describes a request to a credential issuer that got no answer,
// as ErrCredentialUnavailable naming the injector and the request ("token
// request to https://…"): "timed out" for a deadline, else the transport's
// error without url.Error's copy of the URL. scrub, when set, cleans the
// message of the request's own secrets.
func issuerErr(injector, request string, err error, scrub func(string) string) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return timedOut{fmt.Errorf("%w: injector %q: %s timed out", ErrCredentialUnavailable, injector, request)}
	}
	msg := err.Error()
	if scrub != nil {
		msg = scrub(msg)
	}
	// Go's HTTP/2 client may drop the TLS alert with which a server refused
	// a client certificate after the handshake (TLS 1.3): say what it most
	// likely was.
	if strings.Contains(msg, "client conn could not be established") || strings.Contains(msg, "remote error: tls:") {
		msg += " (the TLS connection was refused: does the issuer require a client certificate (tls_client), and trust the one given?)"
	}
	return fmt.Errorf("%w: injector %q: %s: %s", ErrCredentialUnavailable, injector, request, msg)
}

// endpointOf is a URL without its query or fragment, for messages.
func endpointOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	return u.Scheme + "://" + u.Host + u.Path
}
