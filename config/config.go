// Package config loads authproxy's YAML configuration.
//
// Loading has two steps, as in smokescreen's config loader: the file is
// decoded strictly into the file-format structs below (unknown or duplicate
// keys are errors), then validated and turned into the runtime Config.
// Every error names its YAML path, and all errors are reported together.
// Injector blocks are kept as raw YAML and decoded by package injectors,
// which knows each kind.
package config

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/authproxy/authproxy/route"
)

// File is the configuration file as written.
type File struct {
	Log        Log                  `yaml:"log"`
	Admin      *Admin               `yaml:"admin"`
	Reload     Reload               `yaml:"reload"`
	Listeners  []Listener           `yaml:"listeners"`
	CA         *CA                  `yaml:"ca"`
	Upstream   Upstream             `yaml:"upstream"`
	Timeouts   Timeouts             `yaml:"timeouts"`
	TokenCache TokenCache           `yaml:"token_cache"`
	Retry      Retry                `yaml:"retry"`
	Tracing    *Tracing             `yaml:"tracing"`
	Clients    map[string]Client    `yaml:"clients"`
	Injectors  map[string]yaml.Node `yaml:"injectors"`
	Routes     []Route              `yaml:"routes"`
}

// Client is a caller the proxy recognises, by one rule: a username and
// password sent as Proxy-Authorization: Basic (what HTTP_PROXY with user
// info makes clients send), a JWT, a TLS client certificate, or the
// connection's source address. A route's clients name who may use its
// credential.
type Client struct {
	Basic   *BasicClient `yaml:"basic"`
	JWT     *JWTClient   `yaml:"jwt"`
	TLS     *TLSClient   `yaml:"tls"`
	Sources []string     `yaml:"sources"` // addresses or CIDR prefixes
}

// TLSClient recognises a caller by the client certificate it presented to
// a listener with tls.client_ca_file: by one URI SAN (a SPIFFE ID) or one
// DNS SAN of the certificate.
type TLSClient struct {
	URISAN string `yaml:"uri_san"`
	DNSSAN string `yaml:"dns_san"`
}

// JWTClient recognises a caller by a JWT (a Kubernetes projected
// service-account token, say) sent as Proxy-Authorization: Bearer or as
// the Basic password, signed (RS256 or ES256) by a key of the JWKS (a file,
// or a URL fetched over verified TLS), with this issuer, audience and
// subject.
type JWTClient struct {
	JWKSFile string `yaml:"jwks_file"`
	// JWKSURL is an https URL serving the JWKS (the cluster's
	// /openid/v1/jwks). Redirects are never followed.
	JWKSURL string `yaml:"jwks_url"`
	// JWKSCAFile is the PEM bundle that verifies jwks_url's server, instead
	// of the system roots and upstream.ca_file (the cluster's ca.crt).
	JWKSCAFile string `yaml:"jwks_ca_file"`
	// JWKSTokenFile holds a bearer token sent to jwks_url, re-read at each
	// fetch (the proxy's own service-account token, which the API server
	// asks for).
	JWKSTokenFile string `yaml:"jwks_token_file"`
	// JWKSRefresh is how often jwks_url is fetched again (default 5m). A
	// token whose kid is unknown fetches it at once, at most once a minute.
	JWKSRefresh Duration `yaml:"jwks_refresh"`
	// JWKSKeep is how long the last keys fetched stay in use while jwks_url
	// cannot be fetched (default 24h); past that, no token verifies.
	JWKSKeep Duration `yaml:"jwks_keep"`
	Issuer   string   `yaml:"issuer"`
	Audience string   `yaml:"audience"`
	// Subject is the sub claim: exact, or a prefix with a trailing "*"
	// (system:serviceaccount:reports:*).
	Subject string `yaml:"subject"`
}

// BasicClient is a client's Proxy-Authorization: Basic username and
// password.
type BasicClient struct {
	Username string       `yaml:"username"`
	Password SecretSource `yaml:"password"`
}

// Tracing exports a span per request and per token fetch to an
// OpenTelemetry collector over OTLP/HTTP. Off when absent.
type Tracing struct {
	// OTLPEndpoint is the collector's OTLP/HTTP URL; "/v1/traces" is
	// added when it has no path (http://otel-collector:4318).
	OTLPEndpoint string `yaml:"otlp_endpoint"`
	// SampleRatio is the fraction of traces started here that are sampled
	// (default 1); a client's traceparent decides for its own traces.
	SampleRatio *float64 `yaml:"sample_ratio"`
	// ServiceName is the service.name of the spans (default authproxy).
	ServiceName string `yaml:"service_name"`
}

// Log configures the proxy's own log (never request bodies or secrets).
type Log struct {
	Level  string `yaml:"level"`  // debug, info (default), warn, error
	Format string `yaml:"format"` // text (default) or json
	// Access logs one line per request (at info): listener, route,
	// injector, method, host, path and query keys, status, duration, bytes
	// each way, upstream, protocol, and the reason of an answer the proxy
	// gave itself; never a header or query value.
	Access bool `yaml:"access"`
	// AccessSample is the fraction of requests logged (default 1).
	AccessSample float64 `yaml:"access_sample"`
}

// ParseLogLevel reads log.level ("" is info).
func ParseLogLevel(s string) (slog.Level, error) {
	switch s {
	case "debug":
		return slog.LevelDebug, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown level %q (known: debug, info, warn, error)", s)
}

// Admin is the operator's listener: liveness and readiness for probes,
// and the Go profiler when asked for. Off when absent.
type Admin struct {
	Address string `yaml:"address"` // host:port, loopback unless AllowRemoteClients
	// AllowRemoteClients permits a non-loopback address (a probe from the
	// kubelet reaches the pod's IP, not its loopback).
	AllowRemoteClients bool `yaml:"allow_remote_clients"`
	// PProf serves /debug/pprof/ (CPU and heap profiles of the proxy).
	PProf bool `yaml:"pprof"`
	// Clients who may read and change what the listener serves besides
	// /healthz and /readyz, which stay open to probes; identified by the
	// Authorization header (what Prometheus sends for basic_auth and
	// bearer tokens). Absent: everyone who reaches the listener.
	Clients []string `yaml:"clients"`
}

// Reload says how the configuration is reloaded: on SIGHUP always, and
// with Watch (default true) whenever the config file or a secret file of
// an injector changes.
type Reload struct {
	Watch *bool `yaml:"watch"`
}

// Watching reports whether file changes trigger a reload.
func (r Reload) Watching() bool { return r.Watch == nil || *r.Watch }

// Listener is one address the proxy serves.
type Listener struct {
	Name    string `yaml:"name"`
	Kind    string `yaml:"kind"`    // sidecar or forward
	Address string `yaml:"address"` // host:port
	// Host, on a sidecar, is the host name routes are matched against
	// (default: the Host header the client sent).
	Host string `yaml:"host"`
	// Upstream, on a sidecar, is where routes without their own upstream send.
	Upstream string `yaml:"upstream"`
	// Unmatched says what happens to requests no route matches: on a sidecar
	// "deny" (default, 404) or "pass" (forwarded to Upstream without a
	// credential); on a forward listener "deny" (default, 403) or "tunnel"
	// (CONNECT tunnelled untouched, plain requests forwarded untouched).
	Unmatched string `yaml:"unmatched"`
	// H2C is the retired choice of HTTP/2 engine: every listener now relays
	// HTTP/2 frame by frame. Setting it is an error that says so.
	H2C string `yaml:"h2c"`
	// TunnelAllow, on a forward listener with unmatched: tunnel, opens
	// destinations that tunnels and untouched forwards may not reach by
	// default (loopback, link-local, private and unique local addresses):
	// CIDRs ("10.1.0.0/16"), addresses, and host patterns
	// ("*.corp.example", "db.internal:5432"). The proxy's own addresses
	// stay closed.
	TunnelAllow []string `yaml:"tunnel_allow"`
	// AllowRemoteClients permits a non-loopback address. A listener that
	// injects credentials must not be reachable by others by accident.
	AllowRemoteClients bool `yaml:"allow_remote_clients"`
	// TLS makes the listener speak TLS to its clients: an HTTPS proxy
	// (HTTPS_PROXY=https://...) or a TLS sidecar. Absent: plain TCP.
	TLS *ListenerTLS `yaml:"tls"`
}

// TLSClientCert is a client certificate the proxy presents to an upstream
// or an issuer: PEM files, the key readable by the proxy alone, read
// again when they change.
type TLSClientCert struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// ListenerTLS is a listener's certificate and, with ClientCAFile, the CA
// its clients' certificates must chain to: a client without one, or with
// one that names no tls client, is refused during the handshake. The
// files are read again when they change (at the next handshake).
type ListenerTLS struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
}

// CA is the local certificate authority that signs interception certificates.
type CA struct {
	CertFile      string   `yaml:"cert_file"`
	KeyFile       string   `yaml:"key_file"`
	LeafCacheSize int      `yaml:"leaf_cache_size"` // default 1024
	LeafValidity  Duration `yaml:"leaf_validity"`   // default 24h
	// Generate creates the CA files at start-up when both are missing
	// (laptops, demos). In production, create them once with `authproxy ca
	// init` and mount them, so clients keep trusting the same CA.
	Generate bool `yaml:"generate"`
}

// Upstream configures connections from the proxy to upstream servers. The
// proxy never uses HTTP_PROXY/HTTPS_PROXY from its own environment.
type Upstream struct {
	// CAFile is a PEM bundle trusted in addition to the system roots.
	CAFile string `yaml:"ca_file"`
	// Resolve pins host names to addresses ("api.example.com": "10.0.0.5"),
	// as curl --resolve does.
	Resolve               map[string]string `yaml:"resolve"`
	DialTimeout           Duration          `yaml:"dial_timeout"`            // default 10s
	TLSHandshakeTimeout   Duration          `yaml:"tls_handshake_timeout"`   // default 10s
	ResponseHeaderTimeout Duration          `yaml:"response_header_timeout"` // default 0: none
	IdleConnTimeout       Duration          `yaml:"idle_conn_timeout"`       // default 90s
	MaxIdleConnsPerHost   int               `yaml:"max_idle_conns_per_host"` // default 256
	// GRPCMaxMessageBytes is retired with the grpc-go engine: gRPC
	// messages are relayed in frames, never whole. Setting it is an error
	// that says so.
	GRPCMaxMessageBytes int `yaml:"grpc_max_message_bytes"`
}

// Timeouts bound the client side of every listener. There is deliberately
// no per-request write timeout: it would cut long gRPC streams.
type Timeouts struct {
	ReadHeader   Duration `yaml:"read_header"`   // default 10s
	Idle         Duration `yaml:"idle"`          // default 120s
	TLSHandshake Duration `yaml:"tls_handshake"` // intercepted connections, default 10s
	Shutdown     Duration `yaml:"shutdown"`      // drain bound on SIGINT/SIGTERM, default 30s
	// ShutdownDelay: on SIGINT/SIGTERM readiness turns false at once and
	// the listeners keep serving this long before the drain starts, so
	// that load balancers stop sending first (default 0).
	ShutdownDelay Duration `yaml:"shutdown_delay"`
}

// Retry configures the one retry of a request whose credential an
// upstream refused as stale.
type Retry struct {
	// MaxBodyBytes is the largest request body kept to send again (default
	// 65536); larger bodies stream through and the upstream's answer is
	// returned as is.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
}

// TokenCache configures the cache shared by the token-based injectors.
type TokenCache struct {
	Size            int      `yaml:"size"`             // most keys (injector × scope), default 1024
	RefreshFraction float64  `yaml:"refresh_fraction"` // refresh after this fraction of a lifetime, default 0.8
	MinMargin       Duration `yaml:"min_margin"`       // ...and at least this long before expiry, default 30s
	FetchTimeout    Duration `yaml:"fetch_timeout"`    // bound on one token request, default 15s
	MinBackoff      Duration `yaml:"min_backoff"`      // first wait after a failed fetch, default 1s
	MaxBackoff      Duration `yaml:"max_backoff"`      // longest wait, default 60s
	// Shared, when set, shares tokens between proxies through a
	// Redis-protocol store (Redis ≥ 7, Valkey).
	Shared *SharedStore `yaml:"shared"`
}

// SharedStore is token_cache.shared: the Redis-protocol store that proxies
// with the same encryption_key and key_prefix share tokens through.
type SharedStore struct {
	Address       string       `yaml:"address"` // host:port
	TLS           bool         `yaml:"tls"`     // TLS, verified against the upstream roots
	Username      SecretSource `yaml:"username"`
	Password      SecretSource `yaml:"password"`
	KeyPrefix     string       `yaml:"key_prefix"`     // default "authproxy:"
	EncryptionKey SecretSource `yaml:"encryption_key"` // at least 32 characters
}

// Route matches requests and names the injector that adds their credential.
type Route struct {
	Name      string   `yaml:"name"`
	Listeners []string `yaml:"listeners"` // default: every listener
	Match     Match    `yaml:"match"`
	Injector  string   `yaml:"injector"`
	// Upstream is where a sidecar sends the route's requests (default: the
	// listener's upstream). Forward listeners send to the client's target.
	Upstream string `yaml:"upstream"`
	// AllowPlaintext permits sending the credential over plain HTTP.
	AllowPlaintext bool `yaml:"allow_plaintext"`
	// TLSUpgrade makes a forward listener send plain-HTTP requests upstream
	// over TLS (port 80 becomes 443).
	TLSUpgrade bool `yaml:"tls_upgrade"`
	// StripHeaders are more client headers to drop, besides Authorization,
	// Proxy-Authorization and every header the injector sets.
	StripHeaders []string `yaml:"strip_headers"`
	// TLSClient is the client certificate the proxy presents to the
	// route's upstream (mutual TLS). Absent: none.
	TLSClient *TLSClientCert `yaml:"tls_client"`
	// Clients are the clients (names of clients:) that may use the
	// route's credential; "anyone" admits callers with no identity too.
	// Absent: every caller, as without clients.
	Clients []string `yaml:"clients"`
	// UpstreamProtocol chooses the protocol to TLS upstreams: "auto"
	// (default: HTTP/2 for gRPC, a keep-alive pool of HTTP/1.1 connections
	// for everything else), "http1" or "http2" (by ALPN, HTTP/1.1 when the
	// server lacks h2).
	UpstreamProtocol string `yaml:"upstream_protocol"`
}

// Upstream protocols of a route.
const (
	ProtocolAuto  = "auto"
	ProtocolHTTP1 = "http1"
	ProtocolHTTP2 = "http2"
)

// Match is a route's request pattern.
type Match struct {
	Host    string   `yaml:"host"`
	Path    string   `yaml:"path"`
	Methods []string `yaml:"methods"`
	// AllowEncodedSlash lets a {name} value hold %2F, for APIs that put
	// slashes in one path value (org%2Frepo). Dot segments, backslashes and
	// encoded slashes elsewhere are refused all the same.
	AllowEncodedSlash bool `yaml:"allow_encoded_slash"`
}

// Duration is a time.Duration written as "10s", "2m", "1h30m".
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || n.Kind != yaml.ScalarNode {
		return fmt.Errorf("expected a duration such as 10s or 2m, got %q", n.Value)
	}
	if v < 0 {
		return fmt.Errorf("duration %q must not be negative", n.Value)
	}
	*d = Duration(v)
	return nil
}

// D returns the duration, or def when it was not set.
func (d Duration) D(def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

// Listener kinds and unmatched policies.
const (
	KindSidecar = "sidecar"
	KindForward = "forward"

	UnmatchedDeny   = "deny"
	UnmatchedPass   = "pass"
	UnmatchedTunnel = "tunnel"
)

// Config is the validated configuration.
type Config struct {
	File
	// Routes per listener name, in file order, each with its parsed pattern.
	RoutesByListener map[string][]RouteRef
	// Fingerprint tells configurations apart (the status page shows it):
	// the first 16 hex digits of the SHA-256 of the YAML document as
	// parsed, with comments, layout and every scalar under a "value" key
	// left out, so that it carries nothing of a secret written inline (two
	// files that differ only there have the same fingerprint).
	Fingerprint string
}

// RouteRef is a validated route.
type RouteRef struct {
	Index   int // position in File.Routes
	Route   *Route
	Pattern route.Pattern
	// Upstream for sidecar listeners (nil on forward listeners).
	Upstream *url.URL
	// Path is the route's YAML path, for messages.
	Path string
}

// Load reads and validates a configuration file. On validation errors it
// returns both the (partial) Config and the joined errors, so a caller can
// go on to report problems in the injector blocks too; on a YAML syntax
// error the Config is nil.
//
// A relative path in the file — the value of any key named file or ending
// in _file — is taken relative to the directory of the configuration file,
// not the working directory, so a config and its secrets move together.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return parse(data, dir)
}

// Parse is Load on bytes; relative paths stay relative to the working
// directory.
func Parse(data []byte) (*Config, error) { return parse(data, "") }

func parse(data []byte, dir string) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("config: %v", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if dir != "" {
		resolvePaths(&root, dir)
	}
	cfg := &Config{}
	if len(root.Content) == 0 {
		return cfg, Errorf("", "the configuration is empty")
	}
	cfg.Fingerprint = fingerprint(&root)
	errs := Flatten(DecodeNode(&root, "", &cfg.File))
	errs = append(errs, cfg.validate()...)
	return cfg, FirstPerPath(errs...)
}

func (c *Config) validate() []error {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, Errorf(path, format, args...)) }

	if _, err := ParseLogLevel(c.Log.Level); err != nil {
		add("log.level", "%v", err)
	}
	usernames, sans := map[string]string{}, map[string]string{}
	for _, name := range sortedMapKeys(c.Clients) {
		cl, path := c.Clients[name], Join("clients", name)
		switch {
		case name == "anyone" || name == "unknown":
			add(path, "%q is a word routes and metrics use for callers with no identity: give the client another name", name)
		case btoi(cl.Basic != nil)+btoi(cl.JWT != nil)+btoi(cl.TLS != nil)+btoi(len(cl.Sources) > 0) != 1:
			add(path, "give exactly one rule: basic: {username, password}, jwt: {jwks_file or jwks_url, issuer, audience, subject}, tls: {uri_san or dns_san} or sources: [CIDR, ...]")
		case cl.TLS != nil:
			san := "uri:" + cl.TLS.URISAN
			switch {
			case (cl.TLS.URISAN == "") == (cl.TLS.DNSSAN == ""):
				add(Join(path, "tls"), "give one of uri_san (a SPIFFE ID: spiffe://cluster.local/ns/NS/sa/NAME) or dns_san")
			case cl.TLS.URISAN != "" && !strings.Contains(cl.TLS.URISAN, ":"):
				add(Join(path, "tls", "uri_san"), "%q is not a URI (spiffe://cluster.local/ns/NS/sa/NAME)", cl.TLS.URISAN)
			default:
				if cl.TLS.DNSSAN != "" {
					san = "dns:" + cl.TLS.DNSSAN
				}
				if other, dup := sans[san]; dup {
					add(Join(path, "tls"), "client %q has the same SAN", other)
				}
				sans[san] = name
			}
			if !slices.ContainsFunc(c.Listeners, func(l Listener) bool { return l.TLS != nil && l.TLS.ClientCAFile != "" }) {
				add(Join(path, "tls"), "no listener asks its clients for a certificate: set tls: {cert_file, key_file, client_ca_file} on the listener they reach")
			}
		case cl.JWT != nil:
			required := []struct{ key, v string }{{"issuer", cl.JWT.Issuer}, {"audience", cl.JWT.Audience}, {"subject", cl.JWT.Subject}}
			switch {
			case (cl.JWT.JWKSFile == "") == (cl.JWT.JWKSURL == ""):
				add(Join(path, "jwt"), "give one of jwks_file (a JWKS on disk) or jwks_url (https://...)")
			case cl.JWT.JWKSURL != "":
				if u, err := url.Parse(cl.JWT.JWKSURL); err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
					add(Join(path, "jwt", "jwks_url"), "%q is not an https URL without user info (https://kubernetes.default.svc/openid/v1/jwks)", RedactURL(cl.JWT.JWKSURL))
				}
			default:
				for _, f := range []struct {
					key string
					set bool
				}{{"jwks_ca_file", cl.JWT.JWKSCAFile != ""}, {"jwks_token_file", cl.JWT.JWKSTokenFile != ""}, {"jwks_refresh", cl.JWT.JWKSRefresh != 0}, {"jwks_keep", cl.JWT.JWKSKeep != 0}} {
					if f.set {
						add(Join(path, "jwt", f.key), "only for jwks_url (a jwks_file is read again when it changes)")
					}
				}
			}
			if r := cl.JWT.JWKSRefresh; r != 0 && r.D(0) < time.Minute {
				add(Join(path, "jwt", "jwks_refresh"), "at least 1m (an unknown kid fetches the keys at once anyway)")
			}
			if k := cl.JWT.JWKSKeep; k != 0 && k.D(0) < cl.JWT.JWKSRefresh.D(5*time.Minute) {
				add(Join(path, "jwt", "jwks_keep"), "at least jwks_refresh (%s): keys must outlive a refresh", cl.JWT.JWKSRefresh.D(5*time.Minute))
			}
			for _, f := range required {
				if f.v == "" {
					add(Join(path, "jwt", f.key), "required")
				}
			}
			if i := strings.Index(cl.JWT.Subject, "*"); i >= 0 && i != len(cl.JWT.Subject)-1 {
				add(Join(path, "jwt", "subject"), "a * may only end the subject (a prefix), as in system:serviceaccount:reports:*")
			}
		case cl.Basic != nil:
			if cl.Basic.Username == "" || strings.Contains(cl.Basic.Username, ":") {
				add(Join(path, "basic", "username"), "required, and without a colon (Basic authentication splits at the first one)")
			} else if other, dup := usernames[cl.Basic.Username]; dup {
				add(Join(path, "basic", "username"), "client %q has the same username", other)
			}
			usernames[cl.Basic.Username] = name
			if err := cl.Basic.Password.Check(); err != nil {
				add(Join(path, "basic", "password"), "%v", err)
			}
		default:
			for i, src := range cl.Sources {
				if _, err := ParseSource(src); err != nil {
					add(fmt.Sprintf("%s.sources[%d]", path, i), "%v", err)
				}
			}
		}
	}
	if c.Admin != nil {
		for j, name := range c.Admin.Clients {
			if _, ok := c.Clients[name]; !ok && name != "anyone" {
				add(fmt.Sprintf("admin.clients[%d]", j), "no client %q under clients: (known: %s, and anyone)", name, strings.Join(sortedMapKeys(c.Clients), ", "))
			}
		}
	}
	for i, r := range c.Routes {
		for j, name := range r.Clients {
			if _, ok := c.Clients[name]; !ok && name != "anyone" {
				add(fmt.Sprintf("routes[%d].clients[%d]", i, j), "no client %q under clients: (known: %s, and anyone)", name, strings.Join(sortedMapKeys(c.Clients), ", "))
			}
		}
	}
	// Safe by default: a listener that takes remote clients hands no
	// credential to whoever reaches it.
	for i, r := range c.Routes {
		if r.Clients != nil {
			continue
		}
		for j, l := range c.Listeners {
			if l.AllowRemoteClients && (len(r.Listeners) == 0 || slices.Contains(r.Listeners, l.Name)) {
				add(fmt.Sprintf("routes[%d]", i), "route %q is served by listeners[%d] (%q), which takes remote clients (allow_remote_clients: true): whoever reaches it would get the route's credential. Name who may use it: clients: [NAME, ...] with the callers under clients: (docs/clients.md; clients: [anyone] opens it to every caller on purpose), or serve it on loopback listeners only (listeners: [...])", r.Name, j, l.Name)
				break
			}
		}
	}
	if tr := c.Tracing; tr != nil {
		shown := RedactURL(tr.OTLPEndpoint)
		switch u, err := url.Parse(tr.OTLPEndpoint); {
		case tr.OTLPEndpoint == "":
			add("tracing.otlp_endpoint", "required: the collector's OTLP/HTTP URL, for example http://otel-collector:4318")
		case HasUserInfo(tr.OTLPEndpoint):
			add("tracing.otlp_endpoint", "%q: takes no user info (it would be shown in messages)", shown)
		case err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https"):
			add("tracing.otlp_endpoint", "%q is not an http or https URL such as http://otel-collector:4318", shown)
		}
		if r := tr.SampleRatio; r != nil && (*r < 0 || *r > 1) {
			add("tracing.sample_ratio", "must be a fraction from 0 to 1, not %v", *r)
		}
	}
	switch c.Log.Format {
	case "", "text", "json":
	default:
		add("log.format", "unknown format %q (known: text, json)", c.Log.Format)
	}
	if s := c.Log.AccessSample; s < 0 || s > 1 {
		add("log.access_sample", "must be a fraction from 0 (exclusive) to 1, not %v", s)
	}

	listeners := map[string]*Listener{}
	listenerIndex := map[string]int{}
	bound := make([]string, len(c.Listeners)) // valid listen addresses by index, for the one-socket check
	hasForward := false
	if len(c.Listeners) == 0 {
		add("listeners", "at least one listener is required")
	}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		p := Index("listeners", i)
		switch {
		case l.Name == "":
			add(Join(p, "name"), "required")
		case listeners[l.Name] != nil:
			add(Join(p, "name"), "duplicate listener name %q", l.Name)
		default:
			listeners[l.Name] = l
			listenerIndex[l.Name] = i
		}
		if t := l.TLS; t != nil {
			if t.CertFile == "" || t.KeyFile == "" {
				add(Join(p, "tls"), "give cert_file and key_file (the listener's certificate and key, PEM)")
			}
			if t.ClientCAFile != "" && !slices.ContainsFunc(slices.Collect(maps.Values(c.Clients)), func(cl Client) bool { return cl.TLS != nil }) {
				add(Join(p, "tls", "client_ca_file"), "no client is recognised by its certificate, so every one would be refused: add clients: {NAME: {tls: {uri_san: ...}}}, or remove client_ca_file")
			}
		}
		if err := checkListenAddress(l.Address, l.AllowRemoteClients); err != nil {
			add(Join(p, "address"), "%v", err)
		} else {
			for j, other := range bound[:i] {
				if other != "" && sameSocket(other, l.Address) {
					add(Join(p, "address"), "%s is also the address of listeners[%d] (%q): two listeners cannot share a socket", l.Address, j, c.Listeners[j].Name)
					break
				}
			}
			bound[i] = l.Address
		}
		if l.H2C != "" {
			add(Join(p, "h2c"), "no longer needed: every listener relays HTTP/2 (h2c, gRPC included) frame by frame, for every injector; remove it")
		}
		switch l.Kind {
		case KindSidecar:
			if l.Unmatched == "" {
				l.Unmatched = UnmatchedDeny
			}
			if l.Unmatched != UnmatchedDeny && l.Unmatched != UnmatchedPass {
				add(Join(p, "unmatched"), "a sidecar takes deny or pass, not %q", l.Unmatched)
			}
			if l.Upstream != "" {
				if _, err := parseUpstream(l.Upstream); err != nil {
					add(Join(p, "upstream"), "%v", err)
				}
			} else if l.Unmatched == UnmatchedPass {
				add(Join(p, "upstream"), "required when unmatched is pass")
			}
			if l.Host != "" {
				if _, err := route.ParseHost(l.Host); err != nil {
					add(Join(p, "host"), "%v", err)
				}
			}
			if len(l.TunnelAllow) > 0 {
				add(Join(p, "tunnel_allow"), "only forward listeners tunnel")
			}
		case KindForward:
			hasForward = true
			if l.Unmatched == "" {
				l.Unmatched = UnmatchedDeny
			}
			if l.Unmatched != UnmatchedDeny && l.Unmatched != UnmatchedTunnel {
				add(Join(p, "unmatched"), "a forward listener takes deny or tunnel, not %q", l.Unmatched)
			}
			if l.Host != "" {
				add(Join(p, "host"), "only sidecar listeners take a host")
			}
			if l.Upstream != "" {
				add(Join(p, "upstream"), "only sidecar listeners take an upstream; a forward listener sends to the client's target")
			}
			if len(l.TunnelAllow) > 0 && l.Unmatched != UnmatchedTunnel {
				add(Join(p, "tunnel_allow"), "only used with unmatched: tunnel")
			}
			for j, e := range l.TunnelAllow {
				if _, _, err := ParseTunnelAllow([]string{e}); err != nil {
					add(Index(Join(p, "tunnel_allow"), j), "%v", err)
				}
			}
		case "":
			add(Join(p, "kind"), "required (sidecar or forward)")
		default:
			add(Join(p, "kind"), "unknown kind %q (known: sidecar, forward)", l.Kind)
		}
	}

	if a := c.Admin; a != nil {
		if err := checkAddress(a.Address, a.AllowRemoteClients, "the admin listener shows the proxy's state and profiles"); err != nil {
			add("admin.address", "%v", err)
		} else {
			for j, other := range bound {
				if other != "" && sameSocket(other, a.Address) {
					add("admin.address", "%s is also the address of listeners[%d] (%q): two listeners cannot share a socket", a.Address, j, c.Listeners[j].Name)
					break
				}
			}
		}
	}
	if hasForward && (c.CA == nil || c.CA.CertFile == "" || c.CA.KeyFile == "") {
		add("ca", "a forward listener needs ca.cert_file and ca.key_file (create them with `authproxy ca init`)")
	}
	if c.CA != nil && c.CA.LeafCacheSize < 0 {
		add("ca.leaf_cache_size", "must not be negative")
	}
	if c.Upstream.GRPCMaxMessageBytes != 0 {
		add("upstream.grpc_max_message_bytes", "no longer used: gRPC messages are relayed frame by frame, never held whole; remove it")
	}
	if c.Retry.MaxBodyBytes < 0 {
		add("retry.max_body_bytes", "must not be negative")
	}
	if c.TokenCache.Size < 0 {
		add("token_cache.size", "must not be negative")
	}
	if f := c.TokenCache.RefreshFraction; f < 0 || f >= 1 {
		add("token_cache.refresh_fraction", "must be between 0 and 1 (for example 0.8)")
	}
	if c.TokenCache.MaxBackoff != 0 && c.TokenCache.MaxBackoff < c.TokenCache.MinBackoff {
		add("token_cache.max_backoff", "must not be shorter than min_backoff")
	}
	if sh := c.TokenCache.Shared; sh != nil {
		if host, port, err := net.SplitHostPort(sh.Address); err != nil || host == "" || !validPort(port) || port == "0" {
			add("token_cache.shared.address", "expected host:port, such as 127.0.0.1:6379")
		}
		if !sh.EncryptionKey.IsSet() {
			add("token_cache.shared.encryption_key", "required: every value is sealed with it before it reaches the store (at least 32 characters)")
		} else if err := sh.EncryptionKey.Check(); err != nil {
			add("token_cache.shared.encryption_key", "%v", err)
		}
		if err := sh.Username.Check(); sh.Username.IsSet() && err != nil {
			add("token_cache.shared.username", "%v", err)
		}
		if err := sh.Password.Check(); sh.Password.IsSet() && err != nil {
			add("token_cache.shared.password", "%v", err)
		}
	}
	if c.Upstream.MaxIdleConnsPerHost < 0 {
		add("upstream.max_idle_conns_per_host", "must not be negative")
	}
	for _, host := range sortedMapKeys(c.Upstream.Resolve) {
		if c.Upstream.Resolve[host] == "" || strings.Contains(c.Upstream.Resolve[host], "/") {
			add(Join("upstream.resolve", host), "expected an address such as 10.0.0.5 or [::1]")
		}
	}

	injectorNames := sortedMapKeys(c.Injectors)
	c.RoutesByListener = map[string][]RouteRef{}
	routeNames := map[string]int{}
	for i := range c.Routes {
		r := &c.Routes[i]
		p := Index("routes", i)
		if r.Name == "" {
			add(Join(p, "name"), "required")
		} else if j, dup := routeNames[r.Name]; dup {
			add(Join(p, "name"), "duplicate route name %q (also routes[%d])", r.Name, j)
		} else {
			routeNames[r.Name] = i
		}
		ref := RouteRef{Index: i, Route: r, Path: p}
		var err error
		ok := true
		if ref.Pattern.Host, err = route.ParseHost(r.Match.Host); err != nil {
			add(Join(p, "match", "host"), "%v", err)
			ok = false
		}
		if ref.Pattern.Path, err = route.ParsePath(r.Match.Path); err != nil {
			add(Join(p, "match", "path"), "%v", err)
			ok = false
		}
		if ref.Pattern.Methods, err = route.ParseMethods(r.Match.Methods); err != nil {
			add(Join(p, "match", "methods"), "%v", err)
			ok = false
		}
		ref.Pattern.EncodedSlash = r.Match.AllowEncodedSlash
		if r.Match.AllowEncodedSlash && len(ref.Pattern.Path.Params()) == 0 {
			add(Join(p, "match", "allow_encoded_slash"), "applies to {name} values, and %q has none", ref.Pattern.Path)
		}
		switch {
		case r.Injector == "":
			add(Join(p, "injector"), "required")
		case c.Injectors[r.Injector].Kind == 0:
			add(Join(p, "injector"), "unknown injector %q (defined: %s)", r.Injector, orNone(injectorNames))
		}
		var routeUpstream *url.URL
		if r.Upstream != "" {
			if routeUpstream, err = parseUpstream(r.Upstream); err != nil {
				add(Join(p, "upstream"), "%v", err)
				ok = false
			}
		}
		if routeUpstream != nil && routeUpstream.Scheme != "https" && !r.AllowPlaintext {
			add(Join(p, "upstream"), "%s sends the credential in plaintext; use https or set allow_plaintext: true", r.Upstream)
		}
		if tc := r.TLSClient; tc != nil {
			switch {
			case tc.CertFile == "" || tc.KeyFile == "":
				add(Join(p, "tls_client"), "give cert_file and key_file (the client certificate and its key, PEM)")
			case routeUpstream != nil && routeUpstream.Scheme != "https":
				add(Join(p, "tls_client"), "a client certificate is presented over TLS only, and the upstream is %s", r.Upstream)
			}
		}
		switch r.UpstreamProtocol {
		case "", ProtocolAuto, ProtocolHTTP1, ProtocolHTTP2:
		default:
			add(Join(p, "upstream_protocol"), "unknown protocol %q (known: auto, http1, http2)", r.UpstreamProtocol)
		}
		for j, h := range r.StripHeaders {
			if h == "" || strings.ContainsAny(h, " :\t") {
				add(Index(Join(p, "strip_headers"), j), "invalid header name %q", h)
			}
		}
		serves := r.Listeners
		if len(serves) == 0 {
			for _, l := range c.Listeners {
				serves = append(serves, l.Name)
			}
		}
		slices.Sort(serves)
		serves = slices.Compact(slices.Clone(serves))
		for j, name := range r.Listeners {
			if listeners[name] == nil {
				add(Index(Join(p, "listeners"), j), "unknown listener %q", name)
			}
		}
		if !ok {
			continue
		}
		for _, name := range serves {
			l := listeners[name]
			if l == nil {
				continue
			}
			ref := ref
			switch l.Kind {
			case KindForward:
				if ref.Pattern.Host.IsAny() {
					add(Join(p, "match", "host"), "required: forward listener %q intercepts only the hosts routes name", name)
				}
				if r.Upstream != "" && len(r.Listeners) > 0 {
					add(Join(p, "upstream"), "forward listener %q sends to the client's target; upstream applies to sidecars only", name)
				}
			case KindSidecar:
				if err := sidecarHostMatches(ref.Pattern.Host, l, listenerIndex[name]); err != nil {
					add(Join(p, "match", "host"), "%v", err)
				}
				ref.Upstream = routeUpstream
				if ref.Upstream == nil && l.Upstream != "" {
					ref.Upstream, _ = parseUpstream(l.Upstream)
					if ref.Upstream != nil && ref.Upstream.Scheme != "https" && !r.AllowPlaintext {
						add(Join(p, "allow_plaintext"), "listener %q sends to %s in plaintext; set allow_plaintext: true to allow that for this route", name, l.Upstream)
					}
				}
				if ref.Upstream == nil {
					add(Join(p, "upstream"), "required: sidecar listener %q has no upstream of its own", name)
				}
			}
			c.RoutesByListener[name] = append(c.RoutesByListener[name], ref)
		}
	}

	for _, l := range c.Listeners {
		refs := c.RoutesByListener[l.Name]
		entries := make([]route.Entry[int], len(refs))
		for i, ref := range refs {
			entries[i] = route.Entry[int]{Pattern: ref.Pattern, Value: i}
		}
		_, conflicts := route.NewTable(entries)
		for _, cf := range conflicts {
			a, b := refs[cf.A], refs[cf.B]
			add(b.Path, "overlaps %s (%q) with equal specificity: both match %s and %s; make one more specific",
				a.Path, a.Route.Name, a.Pattern, b.Pattern)
		}
	}
	return errs
}

// validPort reports whether port is a decimal number from 0 to 65535.
func validPort(port string) bool {
	n, err := strconv.Atoi(port)
	return err == nil && n >= 0 && n <= 65535 && port != "" && strings.Trim(port, "0123456789") == ""
}

func checkListenAddress(addr string, allowRemote bool) error {
	return checkAddress(addr, allowRemote, "a listener that adds credentials must not be reachable by others")
}

// checkAddress checks a listen address; off loopback it needs allowRemote,
// and why says what would be exposed.
func checkAddress(addr string, allowRemote bool, why string) error {
	if addr == "" {
		return errors.New("required (for example 127.0.0.1:15001)")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return fmt.Errorf("%q is not host:port", addr)
	}
	if !validPort(port) {
		return fmt.Errorf("%q: the port must be a number from 0 to 65535", addr)
	}
	if allowRemote {
		return nil
	}
	if host == "localhost" {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("%q is not a loopback address; %s (set allow_remote_clients: true if it must)", addr, why)
	}
	return nil
}

// ParseTunnelAllow reads tunnel_allow entries: CIDRs, addresses (a /32 or
// /128) and host patterns (route.ParseHost; not the any-host pattern).
func ParseTunnelAllow(entries []string) (nets []netip.Prefix, hosts []route.Host, err error) {
	for _, e := range entries {
		if p, perr := netip.ParsePrefix(e); perr == nil {
			if a := p.Addr(); a.Is4In6() {
				p = netip.PrefixFrom(a.Unmap(), max(p.Bits()-96, 0))
			}
			nets = append(nets, p.Masked())
			continue
		}
		if ip, perr := netip.ParseAddr(strings.Trim(e, "[]")); perr == nil {
			ip = ip.Unmap()
			nets = append(nets, netip.PrefixFrom(ip, ip.BitLen()))
			continue
		}
		h, herr := route.ParseHost(e)
		if herr != nil || h.IsAny() {
			return nil, nil, fmt.Errorf("%q is neither a CIDR, an address nor a host pattern (such as *.corp.example)", e)
		}
		hosts = append(hosts, h)
	}
	return nets, hosts, nil
}

// sameSocket reports whether two valid listen addresses would bind the same
// socket: one port (not 0, which picks a free one), and one host, or a
// wildcard host on either side.
func sameSocket(a, b string) bool {
	ha, pa, _ := net.SplitHostPort(a)
	hb, pb, _ := net.SplitHostPort(b)
	if pa != pb || pa == "0" {
		return false
	}
	norm := func(h string) string {
		if h == "localhost" {
			return "127.0.0.1"
		}
		if ip, err := netip.ParseAddr(h); err == nil {
			if ip.IsUnspecified() {
				return ""
			}
			return ip.Unmap().String()
		}
		return strings.ToLower(h)
	}
	na, nb := norm(ha), norm(hb)
	return na == nb || na == "" || nb == ""
}

// sidecarHostMatches checks that a route's host pattern can match on a
// sidecar listener (listeners[i]). With host: set, every request is
// matched as that host. Without it, requests are matched by the Host
// clients send, which on a loopback listener is its own address (clients
// call http://127.0.0.1:port/ or localhost): a route naming another host
// would only match a client that sends that Host on purpose, which is what
// host: is for.
func sidecarHostMatches(h route.Host, l *Listener, i int) error {
	if h.IsAny() {
		return nil
	}
	if l.Host != "" {
		name, port, err := net.SplitHostPort(l.Host)
		if err != nil {
			name, port = l.Host, ""
		}
		name = strings.ToLower(strings.TrimSuffix(name, "."))
		if h.Match(name, port) {
			return nil
		}
		return fmt.Errorf("%q never matches on sidecar listener %q, which matches every request as host %q (listeners[%d].host)", h, l.Name, l.Host, i)
	}
	host, port, _ := net.SplitHostPort(l.Address)
	if ip, err := netip.ParseAddr(host); host != "localhost" && (err != nil || !ip.IsLoopback()) {
		return nil // reachable by other names (a Service, the pod's address)
	}
	names := []string{strings.ToLower(host), "localhost", "127.0.0.1", "::1"}
	for _, n := range names {
		if h.Match(n, port) || (port == "0" && h.Match(n, h.Port())) || h.Match(n, "") {
			return nil
		}
	}
	return fmt.Errorf("%q never matches on sidecar listener %q: without listeners[%d].host, routes match the Host clients send, which is the listener's address %s; set host: on the listener to the name this route matches", h, l.Name, i, l.Address)
}

func parseUpstream(s string) (*url.URL, error) {
	shown := RedactURL(s)
	if HasUserInfo(s) {
		return nil, fmt.Errorf("%q: an upstream takes no user info (a password there would be sent to it and shown in messages); give the credential to an injector", shown)
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%q is not an absolute URL such as https://api.example.com", shown)
	}
	if !slices.Contains([]string{"https", "http", "h2c"}, u.Scheme) {
		return nil, fmt.Errorf("%q: scheme must be https, http or h2c", shown)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%q: an upstream takes no query or fragment", shown)
	}
	return u, nil
}

func sortedMapKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func orNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// IsFileKey reports whether a mapping key names a file: file (a secret's
// source) or any key ending in _file.
func IsFileKey(k string) bool { return k == "file" || strings.HasSuffix(k, "_file") }

// resolvePaths rewrites, in place, every relative path in the tree to one
// under dir. A path is the scalar value of a mapping key named file or
// ending in _file (cert_file, key_file, ca_file, a secret's file); the
// injector blocks are resolved here too, before each injector decodes its
// own block.
func resolvePaths(n *yaml.Node, dir string) {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			resolvePaths(c, dir)
		}
	case yaml.AliasNode:
		// The anchor it names is resolved where it is defined.
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if v.Kind == yaml.ScalarNode && IsFileKey(k.Value) {
				if v.ShortTag() == "!!str" && v.Value != "" && !filepath.IsAbs(v.Value) {
					v.Value = filepath.Join(dir, v.Value)
				}
				continue
			}
			resolvePaths(v, dir)
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// ParseSource reads a client's source: an address (one host) or a CIDR
// prefix.
func ParseSource(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither an address nor a CIDR prefix such as 10.0.0.0/8", s)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// NodeFingerprint is Fingerprint's digest of one block (an injector's):
// two blocks that differ only in values under "value" keys (inline
// secrets) have the same.
func NodeFingerprint(n *yaml.Node) string { return fingerprint(n) }

// fingerprint is Config.Fingerprint of a parsed document.
func fingerprint(root *yaml.Node) string {
	h := sha256.New()
	var walk func(n *yaml.Node, underValue bool)
	walk = func(n *yaml.Node, underValue bool) {
		fmt.Fprintf(h, "%d:%d:", n.Kind, len(n.Content))
		// An alias is hashed by its anchor's name, not followed: what
		// it names is hashed where it is defined.
		if n.Kind == yaml.ScalarNode || n.Kind == yaml.AliasNode {
			if underValue {
				fmt.Fprint(h, "-;")
			} else {
				fmt.Fprintf(h, "%d:%s;", len(n.Value), n.Value)
			}
		}
		for i, c := range n.Content {
			v := underValue
			if n.Kind == yaml.MappingNode && i%2 == 1 && n.Content[i-1].Value == "value" {
				v = true
			}
			walk(c, v)
		}
	}
	walk(root, false)
	return hex.EncodeToString(h.Sum(nil))[:16]
}
