// Package proxy serves authproxy's listeners: sidecar listeners that take
// plain HTTP/1.1 and h2c from local applications, and forward listeners
// that applications reach through HTTP_PROXY/HTTPS_PROXY. Both match each
// request to a route, strip the client's credentials, let the route's
// injector add the real one, and stream the request upstream.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/authproxy/authproxy/ca"
	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/h2relay"
	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/metrics"
	"github.com/authproxy/authproxy/route"
	"github.com/authproxy/authproxy/tokencache"
	"github.com/authproxy/authproxy/tracing"
	"github.com/authproxy/authproxy/transport"
)

// Options are what New needs besides the config. The zero value is usable.
type Options struct {
	// Logger receives the proxy's log; nil discards it.
	Logger *slog.Logger
	// Listeners are pre-bound listeners by listener name (socket
	// activation, tests); the others are bound by Run.
	Listeners map[string]net.Listener
	// Admin is the admin listener, pre-bound; nil: Run binds admin.address.
	Admin net.Listener
	// Metrics receives what the proxy does (served at the admin
	// listener's /metrics); nil records nothing.
	Metrics *metrics.Metrics
	// Cache is the injectors' token cache, whose credentials the admin
	// listener's /status describes; nil shows none.
	Cache *tokencache.Cache
	// LogLevel is the level of Logger (and of every logger of the
	// process): the proxy sets it to log.level, at start and at each
	// reload, and the admin listener's /logging overrides it for a while.
	// nil: the level is fixed, and /logging says so.
	LogLevel *slog.LevelVar
	// Version is the build's, for the status page ("" shows "dev").
	Version string
	// Tracer exports a span per request (config tracing); nil: off.
	Tracer *tracing.Tracer
	// SkipSecrets reads no client password, JWKS or TLS listener file
	// (check -skip-secrets): such a server is for checking, not serving.
	SkipSecrets bool
}

// Server runs every configured listener. Build it with New, then Run it.
type Server struct {
	log       *slog.Logger
	up        *transport.Set
	listeners []*listener
	runners   []injectors.Runner
	core      *core
	authority *ca.CA
	opts      Options
	cfg       *config.Config
	injs      map[string]injectors.Injector
	cache     *tokencache.Cache
	logging   *logControl

	// Background work, started by Run and by reloads.
	bgMu     sync.Mutex
	bgCtx    context.Context // nil until Run starts it
	bg       sync.WaitGroup
	running  map[injectors.Runner]context.CancelFunc
	reload   sync.Mutex     // one reload at a time
	servers  sync.WaitGroup // the goroutines serving listeners
	errc     chan error     // Run's, for a listener's failure
	warnings []string       // injectors' StartWarnings, logged by Run
	shutdown time.Duration
	delay    time.Duration // timeouts.shutdown_delay

	metrics   *metrics.Metrics
	admin     *http.Server // nil without an admin listener
	adminAddr string
	adminLn   net.Listener
	rmu       sync.RWMutex // guards warm, status and configState, which reloads replace
	// configState is the running configuration's fingerprint and load
	// time, and the last reload tried (the status page's).
	configState statusConfig
	started     time.Time
	warm        []warmer // injectors with warm: true
	status      *statusSource
	serving     atomic.Bool // every listener is bound and served (readiness)
	stopping    atomic.Bool // shutdown has started (readiness false)

	ready chan struct{}
	mu    sync.Mutex
	addrs map[string]net.Addr
	own   *ownAddrs // the listeners' addresses, which no tunnel may reach
}

type listener struct {
	name, kind, address string
	conf                config.Listener // as configured, for reloads
	srv                 *http.Server
	sc                  *sidecar       // sidecar listeners only
	fwd                 *forward       // forward listeners only
	relay               *h2relay.Relay // sidecars: relays their h2c connections (forward: fwd.relay)
	tls                 *listenerTLS   // listeners with tls only
	ln                  net.Listener
}

// wrap puts on the bound socket what the listener's connections pass
// through: the forward listener's connection tracking, then TLS.
func (l *listener) wrap() {
	if l.fwd != nil {
		l.ln = &trackingListener{Listener: l.ln, set: &l.fwd.conns}
	}
	if l.tls != nil {
		l.ln = &tlsListener{Listener: l.ln, t: l.tls}
	}
}

// New builds the server. It does no network I/O and starts no goroutines.
func New(cfg *config.Config, injs map[string]injectors.Injector, opts Options) (*Server, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	up, err := transport.New(cfg.Upstream)
	if err != nil {
		return nil, err
	}
	var authority *ca.CA
	if cfg.CA != nil && cfg.CA.CertFile != "" {
		authority, err = ca.Load(cfg.CA.CertFile, cfg.CA.KeyFile, ca.Options{
			LeafCacheSize: cfg.CA.LeafCacheSize,
			LeafValidity:  time.Duration(cfg.CA.LeafValidity),
		})
		if err != nil {
			return nil, CAError(cfg.CA, err)
		}
	}
	t := cfg.Timeouts
	s := &Server{
		cfg:      cfg,
		injs:     injs,
		cache:    opts.Cache,
		log:      logger,
		up:       up,
		shutdown: t.Shutdown.D(30 * time.Second),
		delay:    time.Duration(t.ShutdownDelay),
		ready:    make(chan struct{}),
		addrs:    map[string]net.Addr{},
		own:      &ownAddrs{},
	}
	s.metrics = opts.Metrics
	if authority != nil {
		s.metrics.CAExpiry(authority.NotAfter())
		if left := time.Until(authority.NotAfter()); left < CAExpiryWarning {
			logger.Warn(CAExpiresSoon(authority.NotAfter()), "cert_file", cfg.CA.CertFile)
		}
	}
	if a := cfg.Admin; a != nil {
		s.admin = s.newAdminServer(a.PProf, t.ReadHeader.D(10*time.Second))
		s.adminAddr, s.adminLn = a.Address, opts.Admin
	}
	c := newCore(up, logger)
	c.metrics = opts.Metrics
	c.access.Store(newAccessLog(cfg.Log))
	c.tracer = opts.Tracer
	c.jwks = newJWKSSources(up, logger)
	clients, err := newClientRules(cfg, opts.SkipSecrets, c.jwks)
	if err != nil {
		return nil, err
	}
	c.clients.Store(clients)
	c.observed.Store(c.metrics != nil || cfg.Log.Access || cfg.Admin != nil || c.tracer != nil)
	s.status = newStatusSource(cfg, injs, opts.Cache)
	s.logging = &logControl{lv: opts.LogLevel, log: logger}
	s.started = time.Now()
	s.configState = statusConfig{Fingerprint: cfg.Fingerprint, LoadedAt: s.started.UTC().Format(time.RFC3339)}
	level, _ := config.ParseLogLevel(cfg.Log.Level)
	s.logging.setBase(level)
	c.maxReplay = cfg.Retry.MaxBodyBytes
	if c.maxReplay == 0 {
		c.maxReplay = defaultMaxReplayBody
	}

	tables, routes, err := buildTables(cfg, injs, c, opts.SkipSecrets)
	if err != nil {
		return nil, err
	}
	s.status.routes = routes
	s.core, s.authority, s.opts = c, authority, opts
	for _, l := range cfg.Listeners {
		ln, err := s.buildListener(cfg, l, tables[l.Name])
		if err != nil {
			return nil, err
		}
		if pre, ok := opts.Listeners[l.Name]; ok {
			ln.ln = pre
		}
		s.listeners = append(s.listeners, ln)
	}

	for _, name := range slices.Sorted(maps.Keys(injs)) {
		if r, ok := injs[name].(injectors.Reporter); ok {
			opts.Metrics.WatchSessions(name, r)
		}
	}
	for _, name := range injectors.WarmNames(cfg) {
		if w, ok := injs[name].(injectors.Warmer); ok {
			s.warm = append(s.warm, warmer{name: name, w: w})
		}
	}
	seen := map[injectors.Runner]bool{}
	for _, name := range slices.Sorted(maps.Keys(injs)) {
		if w, ok := injs[name].(injectors.StartWarner); ok {
			s.warnings = append(s.warnings, w.StartWarnings()...)
		}
		if r, ok := injs[name].(injectors.Runner); ok && !seen[r] {
			seen[r] = true
			s.runners = append(s.runners, r)
		}
	}
	return s, nil
}

// buildListener builds a listener of cfg (not yet bound) serving table.
func (s *Server) buildListener(cfg *config.Config, l config.Listener, table *route.Table[*routeRT]) (*listener, error) {
	c, authority, opts, logger, up, t := s.core, s.authority, s.opts, s.log, s.up, cfg.Timeouts
	ln := &listener{name: l.Name, kind: l.Kind, address: l.Address, conf: l}
	var handler http.Handler
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true) // HTTP/2 goes to the relay
	switch l.Kind {
	case config.KindSidecar:
		sc := &sidecar{core: c}
		sc.table.Store(table)
		ln.sc = sc
		if l.Host != "" {
			sc.host, sc.port = splitHost(l.Host, "")
		}
		if l.Unmatched == config.UnmatchedPass {
			u, _ := url.Parse(l.Upstream)
			if u.Scheme == "h2c" {
				sc.passH2C = true
				u.Scheme = "http"
			}
			sc.pass = u
		}
		handler = sc
		ln.relay = newRelay(c, relayHandler{core: c, listener: l.Name, exchangeFor: func(r *http.Request, _ any) (*exchange, error) {
			return sc.exchangeFor(r)
		}}, cfg, l.Name)
		c.observeRelay(l.Name, ln.relay)
	case config.KindForward:
		if authority == nil {
			return nil, config.Errorf("ca", "a forward listener needs a CA")
		}
		nets, hosts, _ := config.ParseTunnelAllow(l.TunnelAllow) // validated by config
		dest := &destPolicy{allowNets: nets, allowHosts: hosts, lookup: up.Lookup,
			timeout: cfg.Upstream.DialTimeout.D(10 * time.Second), own: s.own}
		ln.fwd = newForward(c, table, l.Unmatched == config.UnmatchedTunnel, dest, authority, t, logger.With("listener", l.Name))
		ln.fwd.relay = newRelay(c, relayHandler{core: c, listener: l.Name, exchangeFor: ln.fwd.interceptedExchange}, cfg, l.Name)
		c.observeRelay(l.Name, ln.fwd.relay)
		ln.fwd.metrics, ln.fwd.name = opts.Metrics, l.Name
		ln.fwd.mitm.Handler = c.instrument(l.Name, ln.fwd.mitm.Handler)
		if opts.Metrics != nil {
			ln.fwd.mitm.ConnState = connStates(opts.Metrics, l.Name, ln.fwd.mitm.ConnState)
		}
		handler = ln.fwd
	}
	if l.TLS != nil && !opts.SkipSecrets { // check -skip-secrets reads no key
		alpn := []string{"h2", "http/1.1"} // a sidecar relays h2 (grpc-go asks for it)
		if l.Kind == config.KindForward {
			alpn = []string{"http/1.1"} // CONNECT and absolute URIs
		}
		var err error
		ln.tls, err = newListenerTLS(*l.TLS, config.Join(config.Index("listeners", listenerIndex(cfg, l.Name)), "tls"), alpn,
			c.clients.Load, logger.With("listener", l.Name))
		if err != nil {
			return nil, err
		}
		if opts.Metrics != nil {
			ln.tls.failed = func() { opts.Metrics.ListenerTLSFailed(l.Name) }
		}
	}
	ln.srv = &http.Server{
		Handler:           c.instrument(l.Name, handler),
		ConnContext:       withPeer,
		Protocols:         protocols,
		MaxHeaderBytes:    maxHeaderBytes,
		ReadHeaderTimeout: t.ReadHeader.D(10 * time.Second),
		IdleTimeout:       t.Idle.D(120 * time.Second),
		ErrorLog:          stdLogger(logger.With("listener", l.Name)),
	}
	if opts.Metrics != nil {
		ln.srv.ConnState = connStates(opts.Metrics, l.Name, nil)
	}
	return ln, nil
}

// listenerIndex is the index of the listener named name in cfg.
func listenerIndex(cfg *config.Config, name string) int {
	return slices.IndexFunc(cfg.Listeners, func(l config.Listener) bool { return l.Name == name })
}

// buildTables builds every listener's route table, and returns the routes.
func buildTables(cfg *config.Config, injs map[string]injectors.Injector, c *core, skipSecrets bool) (map[string]*route.Table[*routeRT], []*routeRT, error) {
	if err := checkPathParams(cfg, injs); err != nil {
		return nil, nil, err
	}
	// A route's client certificate: one per route, whichever listeners
	// serve it (none read with skipSecrets).
	certs := map[string]*routeClient{}
	var errs []error
	for i, r := range cfg.Routes {
		path := config.Join(config.Index("routes", i), "tls_client")
		// Tokens bound to a certificate (RFC 8705) go only where it is
		// presented.
		if b, ok := injs[r.Injector].(interface{ BoundToCertificate() (string, bool) }); ok {
			if file, bound := b.BoundToCertificate(); bound && (r.TLSClient == nil || r.TLSClient.CertFile != file) {
				errs = append(errs, config.Errorf(path,
					"injector %q authenticates with its client certificate (%s), and its tokens are bound to it (RFC 8705): the route must present the same one, tls_client: {cert_file: %s, key_file: ...}", r.Injector, file, file))
			}
		}
		if r.TLSClient == nil || skipSecrets {
			continue
		}
		cert, err := transport.LoadClientCert(*r.TLSClient, path, c.log.With("route", r.Name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		certs[r.Name] = &routeClient{set: c.up.WithClientCert(cert), core: c}
	}
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	tables := map[string]*route.Table[*routeRT]{}
	var routes []*routeRT
	for _, l := range cfg.Listeners {
		var entries []route.Entry[*routeRT]
		for _, ref := range cfg.RoutesByListener[l.Name] {
			inj, ok := injs[ref.Route.Injector]
			if !ok {
				return nil, nil, config.Errorf(config.Join(ref.Path, "injector"), "injector %q was not built", ref.Route.Injector)
			}
			rt := newRouteRT(ref, inj)
			rt.client = certs[ref.Route.Name]
			routes = append(routes, rt)
			entries = append(entries, route.Entry[*routeRT]{Pattern: ref.Pattern, Value: rt})
		}
		table, conflicts := route.NewTable(entries)
		if len(conflicts) > 0 {
			return nil, nil, fmt.Errorf("listener %q: routes overlap (run `authproxy check`)", l.Name)
		}
		tables[l.Name] = table
	}
	return tables, routes, nil
}

// checkPathParams makes sure every route captures the path values its
// injector's templates read (such as {mount} in "mount:{mount}").
func checkPathParams(cfg *config.Config, injs map[string]injectors.Injector) error {
	var errs []error
	seen := map[int]bool{}
	for _, refs := range cfg.RoutesByListener {
		for _, ref := range refs {
			user, ok := injs[ref.Route.Injector].(injectors.PathParamUser)
			if !ok || seen[ref.Index] {
				continue
			}
			seen[ref.Index] = true
			captured := ref.Pattern.Path.Params()
			for _, name := range user.PathParams() {
				if !slices.Contains(captured, name) {
					errs = append(errs, config.Errorf(config.Join(ref.Path, "match", "path"),
						"injector %q reads {%s}, which %q does not capture", ref.Route.Injector, name, ref.Pattern.Path))
				}
			}
		}
	}
	return config.FirstPerPath(errs...)
}

// Ready is closed once every listener is bound.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// AdminAddr returns the admin listener's bound address, after Ready (nil
// without one).
func (s *Server) AdminAddr() net.Addr {
	if s.adminLn == nil {
		return nil
	}
	return s.adminLn.Addr()
}

// Addr returns the bound address of a listener, after Ready.
func (s *Server) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs[name]
}

// Run binds every listener, starts the injectors' background work, and
// serves until ctx ends. Then it stops accepting, lets requests in flight
// finish for up to the shutdown bound, closes what remains, and returns.
// It returns an error if a listener cannot be bound or fails. Run may be
// called once.
func (s *Server) Run(ctx context.Context) error {
	for _, l := range s.listeners {
		if l.ln != nil {
			continue
		}
		ln, err := net.Listen("tcp", l.address)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("listener %q: %w", l.name, err)
		}
		l.ln = ln
	}
	if s.admin != nil && s.adminLn == nil {
		ln, err := net.Listen("tcp", s.adminAddr)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("admin listener: %w", err)
		}
		s.adminLn = ln
	}
	s.mu.Lock()
	s.setOwn(s.listeners)
	for _, l := range s.listeners {
		s.addrs[l.name] = l.ln.Addr()
		if l.sc != nil {
			l.sc.addr = l.ln.Addr().String()
		}
		l.wrap()
	}
	s.mu.Unlock()
	s.core.jwks.start()   // the JWT clients' jwks_url keys, in the background
	s.serving.Store(true) // every listener is bound: connections wait in their backlogs
	close(s.ready)

	for _, w := range s.warnings {
		s.log.Warn(w)
	}
	runCtx, stopRunners := context.WithCancel(context.WithoutCancel(ctx))
	s.bgMu.Lock()
	s.bgCtx = runCtx
	s.bgMu.Unlock()
	// One slot per server that may report a failure, so none blocks: a
	// sidecar has two (net/http and the relay, on one socket), a forward
	// listener two (net/http, and the HTTP/1.1 server of intercepted
	// connections), and the admin listener one.
	servers := 2*len(s.listeners) + 1
	errc := make(chan error, servers)
	for _, r := range s.runners {
		s.startRunner(r)
	}
	for _, w := range s.warm {
		s.startWarm(w)
	}
	s.mu.Lock()
	s.errc = errc
	s.mu.Unlock()
	for _, l := range s.listeners {
		s.serveListener(l)
	}

	var adminDone chan struct{}
	if s.admin != nil {
		adminDone = make(chan struct{})
		s.log.Info("listening", "listener", "admin", "address", s.adminLn.Addr().String())
		go func() {
			defer close(adminDone)
			if err := s.admin.Serve(s.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("admin listener: %w", err)
			}
		}()
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	s.stopping.Store(true) // readiness turns false at once
	if s.delay > 0 && runErr == nil {
		s.log.Info("shutting down: not ready; listeners serve until the shutdown delay ends", "shutdown_delay", s.delay.String())
		time.Sleep(s.delay)
	}
	s.log.Info("shutting down", "drain_bound", s.shutdown.String())
	sctx, cancel := context.WithTimeout(context.Background(), s.shutdown)
	defer cancel()
	var drain sync.WaitGroup
	s.mu.Lock()
	listeners := slices.Clone(s.listeners)
	s.mu.Unlock()
	for _, l := range listeners {
		drain.Go(func() { s.drainListener(sctx, l) })
	}
	drain.Wait()
	s.servers.Wait()
	if s.admin != nil { // the last to go: liveness answers through the drain
		actx, acancel := context.WithTimeout(context.Background(), time.Second)
		if s.admin.Shutdown(actx) != nil {
			_ = s.admin.Close()
		}
		acancel()
		<-adminDone
	}
	stopRunners()
	s.bg.Wait()
	s.up.Close()
	s.log.Info("stopped")
	return runErr
}

// serveListener serves a bound listener: HTTP/1.1 through net/http, HTTP/2
// (told by a connection's first bytes) through the relay.
func (s *Server) serveListener(l *listener) {
	s.log.Info("listening", "listener", l.name, "kind", l.kind, "address", l.ln.Addr().String())
	httpLn := l.ln
	if l.relay != nil {
		split := newSplitter(l.ln, l.srv.ReadHeaderTimeout)
		httpLn = split.h1
		h2Ln := split.h2 // connections that open with the HTTP/2 preface
		s.servers.Go(split.run)
		s.servers.Go(func() {
			for {
				c, err := h2Ln.Accept()
				if err != nil {
					if !errors.Is(err, net.ErrClosed) {
						s.fail(fmt.Errorf("listener %q: %w", l.name, err))
					}
					return
				}
				if pc := peerOf(c); pc != nil {
					go l.relay.ServeConnWith(c, pc)
				} else {
					go l.relay.ServeConn(c)
				}
			}
		})
	}
	if l.fwd != nil {
		s.servers.Go(func() {
			if err := l.fwd.mitm.Serve(l.fwd.mitmLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.fail(fmt.Errorf("listener %q: intercepted connections: %w", l.name, err))
			}
		})
	}
	s.servers.Go(func() {
		if err := l.srv.Serve(httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.fail(fmt.Errorf("listener %q: %w", l.name, err))
		}
	})
}

// fail reports a listener's failure to Run, which then stops (one is
// enough).
func (s *Server) fail(err error) {
	s.mu.Lock()
	errc := s.errc
	s.mu.Unlock()
	select {
	case errc <- err:
	default:
	}
}

// drainListener stops a listener: no new connections, requests in flight
// finish until ctx ends, then what is left is closed.
func (s *Server) drainListener(ctx context.Context, l *listener) {
	if l.fwd != nil {
		l.fwd.draining.Store(true)
	}
	var wg sync.WaitGroup
	if l.relay != nil {
		wg.Go(func() {
			if l.relay.Shutdown(ctx) != nil {
				s.log.Warn("HTTP/2 streams still in flight at the drain bound; closing them", "listener", l.name)
			}
		})
	}
	if err := l.srv.Shutdown(ctx); err != nil {
		s.log.Warn("requests still in flight at the drain bound; closing them", "listener", l.name)
		_ = l.srv.Close()
	}
	if l.fwd != nil {
		l.fwd.drain(ctx)
	}
	wg.Wait()
}

// startRunner runs an injector's background work until the server stops
// or a reload retires the injector.
func (s *Server) startRunner(r injectors.Runner) {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.running == nil {
		s.running = map[injectors.Runner]context.CancelFunc{}
	}
	if _, ok := s.running[r]; ok || s.bgCtx == nil {
		return
	}
	ctx, cancel := context.WithCancel(s.bgCtx)
	s.running[r] = cancel
	s.bg.Go(func() {
		if err := r.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Error("background work ended", "err", err)
		}
	})
}

// stopRunner ends an injector's background work.
func (s *Server) stopRunner(r injectors.Runner) {
	s.bgMu.Lock()
	cancel := s.running[r]
	delete(s.running, r)
	s.bgMu.Unlock()
	if cancel != nil {
		cancel()
	}
}

func (s *Server) startWarm(w warmer) {
	s.bgMu.Lock()
	ctx := s.bgCtx
	s.bgMu.Unlock()
	if ctx == nil {
		return
	}
	s.bg.Go(func() {
		if w.w.Warm(ctx) == nil {
			s.log.Info("injector warm: its credentials are held", "injector", w.name)
		}
	})
}

// warmer is an injector that readiness waits for.
type warmer struct {
	name string
	w    injectors.Warmer
}

// notWarm names the first warm injector that does not hold its
// credentials ("" when all do).
func (s *Server) notWarm() string {
	s.rmu.RLock()
	defer s.rmu.RUnlock()
	for _, w := range s.warm {
		if !w.w.Warmed() {
			return w.name
		}
	}
	return ""
}

func (s *Server) closeListeners() {
	for _, l := range s.listeners {
		if l.ln != nil {
			_ = l.ln.Close()
		}
	}
	if s.adminLn != nil {
		_ = s.adminLn.Close()
	}
}

// maxHeaderBytes is the one limit on a request's header block, on every
// listener and protocol: HTTP/1.1 (net/http) and HTTP/2 (the frame relay).
// A block over it is refused (431, RST_STREAM or a closed connection) and
// never held in memory whole.
const maxHeaderBytes = 1 << 20

// stdLogger is net/http's error log for a listener, in slog at debug.
func stdLogger(l *slog.Logger) *log.Logger { return log.New(slogWriter{l}, "", 0) }

// slogWriter adapts net/http's error log (TLS handshake errors, panics in
// handlers) to slog.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.log.Debug(string(trimNewline(p)), "component", "http")
	return len(p), nil
}

func trimNewline(p []byte) []byte {
	for len(p) > 0 && (p[len(p)-1] == '\n' || p[len(p)-1] == '\r') {
		p = p[:len(p)-1]
	}
	return p
}

// setOwn records the addresses no tunnel or forwarded request may reach,
// whatever tunnel_allow says: every listener's and the admin listener's.
func (s *Server) setOwn(ls []*listener) {
	bound := make([]net.Addr, 0, len(ls)+1)
	for _, l := range ls {
		bound = append(bound, l.ln.Addr())
	}
	if s.adminLn != nil {
		bound = append(bound, s.adminLn.Addr())
	}
	s.own.set(bound)
}

// CANotAfter is when the interception CA expires (ok false: no CA).
func (s *Server) CANotAfter() (time.Time, bool) {
	if s.authority == nil {
		return time.Time{}, false
	}
	return s.authority.NotAfter(), true
}

// CAExpiryWarning is how long before its expiry the interception CA is
// warned about, at start and by check.
const CAExpiryWarning = 30 * 24 * time.Hour

// CAExpiresSoon says when the CA expires and what to do.
func CAExpiresSoon(notAfter time.Time) string {
	return fmt.Sprintf("ca.cert_file: the interception CA expires on %s (in %d days); then every intercepted client will refuse the proxy: make a new CA and have the clients trust it before then",
		notAfter.UTC().Format(time.DateOnly), int(math.Round(time.Until(notAfter).Hours()/24)))
}

// CAError names the CA file at fault by its YAML key and file name.
func CAError(c *config.CA, err error) error {
	var fe *ca.FileError
	if errors.As(err, &fe) {
		name := c.CertFile
		if fe.File == "key_file" {
			name = c.KeyFile
		}
		var pe *fs.PathError
		if errors.As(fe.Err, &pe) {
			return config.Errorf("ca."+fe.File, "cannot %s %s: %v", pe.Op, name, pe.Err)
		}
		return config.Errorf("ca."+fe.File, "%s: %v", name, fe.Err)
	}
	return config.Errorf("ca", "%s", strings.TrimPrefix(err.Error(), "ca: "))
}
