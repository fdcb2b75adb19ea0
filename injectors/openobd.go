package injectors

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/grpcframe"
	"github.com/authproxy/authproxy/openobd/pb"
	"github.com/authproxy/authproxy/tokencache"
	"github.com/authproxy/authproxy/transport"
)

// OpenOBDConfig is the `kind: openobd` block. One injector serves every
// openOBD call: the session controller's (controller token) and the
// sessions' (the latest session token, kept fresh over the session token
// stream the proxy holds open itself).
type OpenOBDConfig struct {
	Kind string `yaml:"kind"`
	// Endpoint is the session controller, host:port (grpc.openobd.com:443).
	Endpoint     string              `yaml:"endpoint"`
	ClientID     config.SecretSource `yaml:"client_id"`
	ClientSecret config.SecretSource `yaml:"client_secret"`
	ClusterID    string              `yaml:"cluster_id"` // 001 Europe, 002 USA
	// ControllerTokenLifetime: openOBD sends no expiry (default 5400 s).
	ControllerTokenLifetime config.Duration `yaml:"controller_token_lifetime"`
	// RewriteSessionEndpoint, on sidecar listeners, replaces grpc_endpoint
	// in SessionInfo responses by the sidecar's own address.
	RewriteSessionEndpoint bool `yaml:"rewrite_session_endpoint"`
	// MaxSessions bounds the sessions tracked (default 256); an evicted
	// session's token stream is closed.
	MaxSessions int `yaml:"max_sessions"`
}

const (
	obdController   = "/openOBD.v1.sessionController/"
	obdSessionSvc   = "/openOBD.v1.session/"
	obdSessionIDHdr = "X-Openobd-Session-Id"
)

// OpenOBD is the openOBD injector. It is safe for concurrent use.
type OpenOBD struct {
	events   Events
	name     string
	cache    *tokencache.Cache
	tr       *transport.Set
	endpoint string
	id       config.Secret
	secret   config.Secret
	cluster  string
	ctlLife  time.Duration
	rewrite  bool
	ctlKey   string
	secrets  scrubber // the client secret, in each encoding
	log      *slog.Logger
	unknown  sync.Map // session states not known to the proxy, logged once each

	sessions *lru.Cache[string, *obdSession]
	shared   SharedState // the fleet's store, or nil

	mu    sync.Mutex
	conns map[string]*obdConn // session endpoint -> shared connection

	base context.Context // parent of token streams; ends with Run
	stop context.CancelFunc
	wg   sync.WaitGroup
}

type obdConn struct {
	cc   *grpc.ClientConn
	refs int
}

// obdSession is what the proxy knows of one session.
type obdSession struct {
	id       string
	endpoint string // grpc_endpoint, host:port

	mu         sync.Mutex
	clientAddr string // the address clients were told (rewritten), if any
	state      string
	authToken  string // unspent one-time authentication token
	token      string // latest session token
	seen       map[string]bool
	streaming  bool
	remote     bool   // learned from the fleet's store, not from this proxy's traffic
	listed     bool   // this proxy has seen it listed under its endpoint in the store
	ended      string // why it ended; "" while live
	cancel     context.CancelFunc
	authing    chan struct{} // closed when a proxy-side authenticate finishes

	// For the status page.
	learnedAt    time.Time
	streamUp     bool      // the token stream is open
	reconnects   int       // token stream reconnections
	rotations    int       // tokens received over the stream
	lastRotation time.Time // when the latest arrived
}

var (
	_ Injector        = (*OpenOBD)(nil)
	_ MessageObserver = (*OpenOBD)(nil)
	_ Runner          = (*OpenOBD)(nil)
)

// NewOpenOBD validates cfg and reads its secrets. No network I/O.
func NewOpenOBD(name string, cfg OpenOBDConfig, env Env) (*OpenOBD, error) {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, config.Errorf(path, format, args...)) }
	o := &OpenOBD{name: name, cache: env.Cache, tr: env.Transport, endpoint: cfg.Endpoint, cluster: cfg.ClusterID,
		ctlLife: cfg.ControllerTokenLifetime.D(5400 * time.Second), rewrite: cfg.RewriteSessionEndpoint, conns: map[string]*obdConn{}}
	if _, port, err := net.SplitHostPort(cfg.Endpoint); err != nil || port == "" || config.HasUserInfo(cfg.Endpoint) {
		add("endpoint", "required as host:port (grpc.openobd.com:443), with no user info")
	}
	var err error
	if o.id, err = env.secret(cfg.ClientID); err != nil {
		add("client_id", "%v", err)
	}
	if o.secret, err = env.secret(cfg.ClientSecret); err != nil {
		add("client_secret", "%v", err)
	}
	if cfg.ClusterID == "" {
		add("cluster_id", "required (001 Europe, 002 USA)")
	}
	size := cfg.MaxSessions
	if size < 0 {
		add("max_sessions", "must not be negative")
	}
	if size <= 0 {
		size = 256
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if o.cache == nil || o.tr == nil {
		return nil, errors.New("openobd: built without a token cache or transport")
	}
	o.sessions, _ = lru.NewWithEvict(size, func(_ string, s *obdSession) { s.end("evicted from the session table") })
	o.base, o.stop = context.WithCancel(context.Background())
	o.ctlKey = name + "\x00controller"
	o.cache.Identify(name, "openobd", o.endpoint, o.id.Reveal(), digest(o.secret.Reveal()), o.cluster)
	o.secrets.add(o.secret.Reveal())
	o.log = env.Log
	o.shared = env.Shared
	o.events = eventsOf(env)
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// Headers implements Injector: the session-id header is read (before it is
// stripped) to choose a session, never forwarded.
func (o *OpenOBD) Headers() []string { return []string{"Authorization", obdSessionIDHdr} }

// Run implements Runner: the token cache's refresh and the session token
// streams, all stopped when ctx ends.
func (o *OpenOBD) Run(ctx context.Context) error {
	done := make(chan struct{})
	go func() { _ = o.cache.Run(ctx); close(done) }()
	<-ctx.Done()
	o.stop()
	o.wg.Wait()
	<-done
	o.mu.Lock()
	for ep, c := range o.conns {
		c.cc.Close()
		delete(o.conns, ep)
	}
	o.mu.Unlock()
	return ctx.Err()
}

// Inject implements Injector.
func (o *OpenOBD) Inject(req *Request) error {
	_, err := o.inject(req, true)
	return err
}

// CanWarm implements Warmer: the controller token is known at start
// (sessions come from the application's calls).
func (o *OpenOBD) CanWarm() string { return "" }

// Warm implements Warmer: it fetches the controller token.
func (o *OpenOBD) Warm(ctx context.Context) error {
	return o.cache.Warm(ctx, o.ctlKey, o.fetchController)
}

// Warmed implements Warmer.
func (o *OpenOBD) Warmed() bool { return o.cache.Has(o.ctlKey) }

// TryInject implements Prompt: the controller token if the cache holds a
// valid one, a session's token if the proxy has it.
func (o *OpenOBD) TryInject(req *Request) (bool, error) { return o.inject(req, false) }

// inject adds the credential, waiting for one (wait) or reporting false
// when it would have to.
func (o *OpenOBD) inject(req *Request, wait bool) (bool, error) {
	path := req.URL.Path
	switch {
	case path == obdController+"getSessionControllerToken":
		return true, nil // the application's own credentials call: nothing to add
	case strings.HasPrefix(path, obdController):
		tok, ok := o.cache.Peek(o.ctlKey)
		if !ok && !wait {
			return false, nil
		}
		if !ok {
			var err error
			if tok, err = o.cache.Get(req.Context(), o.ctlKey, o.fetchController); err != nil {
				return true, tokenErr(req, err)
			}
		}
		req.Header["Authorization"] = []string{"Bearer " + tok.Value.Reveal()}
		return true, nil
	}
	s, err := o.pick(req)
	if err != nil {
		return true, err
	}
	var bearer string
	if path == obdSessionSvc+"authenticate" {
		s.mu.Lock()
		bearer = s.authToken
		s.mu.Unlock()
		if bearer == "" {
			return true, fmt.Errorf("%w: openOBD session %s has already spent its authentication token; the proxy holds its session token", ErrFailedPrecondition, s.id)
		}
	} else {
		if o.sharing() {
			// The fleet's latest token is in the store: another proxy
			// may hold the token stream.
			if !wait {
				return false, nil
			}
			o.refresh(req.Context(), s)
		}
		s.mu.Lock()
		bearer = s.token
		if s.ended != "" {
			bearer = ""
		}
		s.mu.Unlock()
		if bearer == "" && !wait {
			return false, nil
		}
		if bearer == "" {
			if bearer, err = o.ensureToken(req.Context(), s); err != nil {
				return true, err
			}
		}
	}
	req.Header["Authorization"] = []string{"Bearer " + bearer}
	if req.Sidecar { // the application cannot reach grpc_endpoint itself
		req.URL.Scheme, req.URL.Host, req.Host = "https", s.endpoint, s.endpoint
	}
	return true, nil
}

// Sessions implements Reporter: the openOBD sessions the proxy knows, with
// their token streams; never a token.
func (o *OpenOBD) Sessions() []SessionReport {
	var out []SessionReport
	for _, id := range o.sessions.Keys() {
		s, ok := o.sessions.Peek(id)
		if !ok {
			continue
		}
		s.mu.Lock()
		r := SessionReport{ID: s.id, State: s.state, Endpoint: s.endpoint, Since: s.learnedAt, Ended: s.ended,
			Rotations: s.rotations, LastRotation: s.lastRotation, Reconnects: s.reconnects}
		switch {
		case s.ended != "":
			r.Stream = "closed"
		case s.streamUp:
			r.Stream = "open"
		case s.streaming:
			r.Stream = "connecting"
		default:
			r.Stream = "not started (no session token yet)"
		}
		s.mu.Unlock()
		out = append(out, r)
	}
	return out
}

// ObserveResponse implements ResponseObserver: it drops a controller
// token the controller refused, and reads the messages of a body it is
// given through TapMessages.
func (o *OpenOBD) ObserveResponse(req *Request, resp *http.Response) bool {
	path := req.URL.Path
	if strings.HasPrefix(path, obdController) && path != obdController+"getSessionControllerToken" &&
		resp.Header.Get("Grpc-Status") == "16" {
		return o.cache.Invalidate(o.ctlKey, strings.TrimPrefix(req.Header.Get("Authorization"), "Bearer "))
	}
	if resp.Body == nil || resp.Body == http.NoBody {
		return false
	}
	if tap := o.TapMessages(req, resp.StatusCode, resp.Header); tap != nil {
		if tap.Message != nil {
			resp.Body = grpcframe.NewReader(resp.Body, 0, tap.Message)
		}
		if tap.End != nil {
			resp.Body = transport.OnEOF(resp.Body, func() { tap.End(resp.Trailer) })
		}
	}
	return false
}

// Observes implements SelectiveObserver: the session controller's calls,
// and the session service's authenticate and finish. Nothing else's
// response tells the proxy anything, so the other session calls (the bulk
// of the traffic) are neither kept for a retry nor shown to the observer.
func (o *OpenOBD) Observes(req *Request) bool {
	path := req.URL.Path
	return strings.HasPrefix(path, obdController) || path == obdSessionSvc+"authenticate" || path == obdSessionSvc+"finish"
}

// TapMessages implements MessageObserver. It learns sessions from the
// session controller's answers (rewriting grpc_endpoint when configured),
// records the token session/authenticate returns, and notices a finished
// session.
func (o *OpenOBD) TapMessages(req *Request, _ int, _ http.Header) *MessageTap {
	path := req.URL.Path
	switch {
	case strings.HasPrefix(path, obdController):
		switch strings.TrimPrefix(path, obdController) {
		case "startSessionOnTicket", "startSessionOnConnector", "getSession", "interruptSession":
			return &MessageTap{Message: func(compressed bool, msg []byte) []byte {
				return o.watch(req, compressed, msg, false)
			}}
		case "getSessionList":
			return &MessageTap{Message: func(compressed bool, msg []byte) []byte {
				return o.watch(req, compressed, msg, true)
			}}
		}
	case path == obdSessionSvc+"authenticate":
		auth := strings.TrimPrefix(req.Header.Get("Authorization"), "Bearer ")
		return &MessageTap{Message: func(compressed bool, msg []byte) []byte {
			var tok pb.SessionToken
			if !compressed && proto.Unmarshal(msg, &tok) == nil && tok.Value != "" {
				if s := o.byToken(auth); s != nil {
					o.setToken(s, tok.Value)
				}
			}
			return msg
		}}
	case path == obdSessionSvc+"finish":
		sent := strings.TrimPrefix(req.Header.Get("Authorization"), "Bearer ")
		return &MessageTap{End: func(trailer http.Header) {
			if trailer.Get("Grpc-Status") == "0" {
				if s := o.byToken(sent); s != nil {
					s.end("finished")
					o.publish(s)
				}
			}
		}}
	}
	return nil
}

// watch learns from one SessionInfo (or SessionInfoList) message and
// returns it, rewritten when configured.
func (o *OpenOBD) watch(req *Request, compressed bool, msg []byte, list bool) []byte {
	if compressed {
		return msg // grpc-encoding other than identity: passed on unread
	}
	rewrite := o.rewrite && req.Sidecar && req.ListenerAddr != ""
	if list {
		var l pb.SessionInfoList
		if proto.Unmarshal(msg, &l) != nil {
			return msg
		}
		for _, info := range l.Sessions {
			o.learn(info, rewrite, req.ListenerAddr)
		}
		if rewrite {
			if out, err := proto.Marshal(&l); err == nil {
				return out
			}
		}
		return msg
	}
	var info pb.SessionInfo
	if proto.Unmarshal(msg, &info) != nil || info.Id == "" {
		return msg
	}
	o.learn(&info, rewrite, req.ListenerAddr)
	if rewrite {
		if out, err := proto.Marshal(&info); err == nil {
			return out
		}
	}
	return msg
}

// learn records a session (creating it if new), and rewrites the message's
// endpoint to addr when asked.
func (o *OpenOBD) learn(info *pb.SessionInfo, rewrite bool, addr string) {
	s, ok := o.sessions.Get(info.Id)
	if !ok {
		s = &obdSession{id: info.Id, endpoint: normalizeHostPort(info.GrpcEndpoint), seen: map[string]bool{}, learnedAt: time.Now()}
		if prev, found, _ := o.sessions.PeekOrAdd(info.Id, s); found {
			s = prev
		}
	}
	s.mu.Lock()
	s.state = info.State
	if info.AuthenticationToken != "" && !s.seen[info.AuthenticationToken] {
		s.authToken = info.AuthenticationToken
		s.seen[info.AuthenticationToken] = true
	}
	if rewrite {
		s.clientAddr = normalizeHostPort(addr)
	}
	s.mu.Unlock()
	// The protos do not list the states. Those the controller is known to
	// send end a session or keep it; any other is taken as live, and said
	// once, so a new state cannot end sessions that still work.
	switch info.State {
	case "available", "active", "":
	case "interrupted", "finished":
		s.end("state " + info.State)
	default:
		if _, seen := o.unknown.LoadOrStore(info.State, true); !seen {
			o.log.Warn("openOBD session state not known to the proxy; the session is taken as live",
				"injector", o.name, "state", info.State)
		}
	}
	o.publish(s)
	if rewrite {
		info.GrpcEndpoint = addr
	}
}

// pick finds the session a call belongs to: by destination host when
// exactly one live session uses it; else by the x-openobd-session-id
// header; else by a token the proxy has seen for a session. Never a guess.
func (o *OpenOBD) pick(req *Request) (*obdSession, error) {
	host := normalizeHostPort(req.ClientHost)
	var live, ended []*obdSession
	for _, id := range o.sessions.Keys() {
		s, ok := o.sessions.Peek(id)
		if !ok {
			continue
		}
		s.mu.Lock()
		match := s.endpoint == host || s.clientAddr != "" && s.clientAddr == host
		done := s.ended != ""
		s.mu.Unlock()
		switch {
		case match && !done:
			live = append(live, s)
		case match:
			ended = append(ended, s)
		}
	}
	if len(live) == 1 {
		return live[0], nil
	}
	if id := req.Stripped.Get(obdSessionIDHdr); id != "" {
		s, ok := o.sessions.Get(id)
		if !ok {
			s = o.adopt(req.Context(), id) // started through another proxy of the fleet
		}
		if s == nil {
			return nil, fmt.Errorf("%w: x-openobd-session-id names session %q, which the proxy has not seen started or listed", ErrFailedPrecondition, id)
		}
		return s, s.liveErr()
	}
	if len(live) == 0 {
		if s := o.adoptByEndpoint(req.Context(), host); s != nil {
			return s, s.liveErr()
		}
	}
	if tok := strings.TrimPrefix(req.Stripped.Get("Authorization"), "Bearer "); tok != "" {
		if s := o.byToken(tok); s != nil {
			return s, s.liveErr()
		}
	}
	switch {
	case len(live) == 0 && len(ended) == 1:
		return nil, ended[0].liveErr()
	case len(live) == 0 && len(ended) > 1:
		return nil, fmt.Errorf("%w: the %d openOBD sessions that used %s have all ended; start a new session", ErrFailedPrecondition, len(ended), host)
	}
	return nil, fmt.Errorf("%w: cannot tell which openOBD session this call belongs to (%d live sessions use %s): "+
		"send it to the session's grpc_endpoint, or set the x-openobd-session-id header", ErrFailedPrecondition, len(live), host)
}

func (s *obdSession) liveErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended != "" {
		return fmt.Errorf("%w: openOBD session %s has ended (%s)", ErrFailedPrecondition, s.id, s.ended)
	}
	return nil
}

func (o *OpenOBD) byToken(tok string) *obdSession {
	if tok == "" {
		return nil
	}
	for _, id := range o.sessions.Keys() {
		if s, ok := o.sessions.Peek(id); ok {
			s.mu.Lock()
			seen := s.seen[tok]
			s.mu.Unlock()
			if seen {
				return s
			}
		}
	}
	return nil
}

// setToken records a session token (from authenticate or the stream) and
// makes sure the token stream runs.
func (o *OpenOBD) setToken(s *obdSession, tok string) {
	s.mu.Lock()
	s.token = tok
	s.seen[tok] = true
	s.authToken = "" // spent
	o.startStreamLocked(s)
	s.mu.Unlock()
	o.publish(s)
}

// startStreamLocked (s.mu held) starts the session's token stream, once.
func (o *OpenOBD) startStreamLocked(s *obdSession) {
	if s.streaming || s.ended != "" {
		return
	}
	s.streaming = true
	var ctx context.Context
	ctx, s.cancel = context.WithCancel(o.base)
	o.wg.Add(1)
	go o.stream(ctx, s)
}

// ensureToken returns the session's latest token, authenticating the
// session first (once, for all callers) if the application never did.
func (o *OpenOBD) ensureToken(ctx context.Context, s *obdSession) (string, error) {
	for {
		s.mu.Lock()
		tok, auth, ended, wait := s.token, s.authToken, s.ended, s.authing
		if tok != "" || ended != "" {
			s.mu.Unlock()
			if ended != "" {
				return "", s.liveErr()
			}
			return tok, nil
		}
		if auth == "" {
			s.mu.Unlock()
			return "", fmt.Errorf("%w: openOBD session %s has no session token and its authentication token is spent", ErrFailedPrecondition, s.id)
		}
		if wait == nil {
			done := make(chan struct{})
			s.authing = done
			s.mu.Unlock()
			err := o.authenticate(s, auth)
			s.mu.Lock()
			s.authing = nil
			s.mu.Unlock()
			close(done)
			if err != nil {
				return "", err
			}
			continue
		}
		s.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

func (o *OpenOBD) authenticate(s *obdSession, auth string) error {
	ctx, cancel := context.WithTimeout(o.base, 15*time.Second)
	defer cancel()
	cc, release, err := o.conn(s.endpoint)
	if err != nil {
		return fmt.Errorf("%w: injector %q: session %s: %v", ErrCredentialUnavailable, o.name, s.id, err)
	}
	defer release()
	tok, err := pb.NewSessionClient(cc).Authenticate(withBearer(ctx, auth), &pb.EmptyMessage{})
	if err != nil {
		kind := ErrCredentialUnavailable
		if c := status.Code(err); c == codes.Unauthenticated || c == codes.FailedPrecondition || c == codes.PermissionDenied {
			kind = ErrCredentialRejected
		}
		return fmt.Errorf("%w: injector %q: authenticating session %s at %s: %s", kind, o.name, s.id, s.endpoint,
			o.secrets.excerpt([]byte(status.Convert(err).Message()), auth))
	}
	o.setToken(s, tok.Value)
	return nil
}

// stream keeps the session's token stream open for the session's life:
// every token received becomes the one injected; transient failures
// reconnect with backoff; a terminal status ends the session.
func (o *OpenOBD) stream(ctx context.Context, s *obdSession) {
	defer o.wg.Done()
	cc, release, err := o.conn(s.endpoint)
	if err != nil {
		s.end("cannot connect to " + s.endpoint + ": " + err.Error())
		return
	}
	defer release()
	backoff := 100 * time.Millisecond
	for {
		// In a fleet one proxy holds the stream; the others follow the
		// store, ready to take over when the holder's lease runs out.
		sctx, lost := o.lead(ctx, s)
		if sctx == nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(obdLease / 3):
			}
			o.refresh(ctx, s)
			if s.liveErr() != nil {
				return
			}
			continue
		}
		s.mu.Lock()
		tok := s.token
		s.mu.Unlock()
		st, err := pb.NewSessionClient(cc).OpenSessionTokenStream(withBearer(sctx, tok), &pb.EmptyMessage{})
		for err == nil {
			var m *pb.SessionToken
			if m, err = st.Recv(); err == nil && m.Value != "" {
				s.mu.Lock()
				s.token = m.Value
				s.seen[m.Value] = true
				s.streamUp = true
				s.rotations++
				s.lastRotation = time.Now()
				s.mu.Unlock()
				o.publish(s)
				o.events.Event(o.name, "rotation")
				backoff = 100 * time.Millisecond
			}
		}
		lost()
		s.mu.Lock()
		s.streamUp = false
		s.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		if sctx.Err() != nil {
			continue // the lease was lost: follow
		}
		s.mu.Lock()
		s.reconnects++
		s.mu.Unlock()
		o.events.Event(o.name, "reconnect")
		if code := status.Code(err); code != codes.Unavailable && code != codes.Internal && code != codes.Unknown {
			s.end(fmt.Sprintf("token stream: %s: %s", code, o.secrets.excerpt([]byte(status.Convert(err).Message()), tok)))
			o.publish(s)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (s *obdSession) end(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended != "" {
		return
	}
	s.ended = reason
	if s.cancel != nil {
		s.cancel()
	}
}

// conn returns a shared connection to a session endpoint and its release.
func (o *OpenOBD) conn(endpoint string) (*grpc.ClientConn, func(), error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := o.conns[endpoint]
	if c == nil {
		cc, err := o.dial(endpoint)
		if err != nil {
			return nil, nil, err
		}
		c = &obdConn{cc: cc}
		o.conns[endpoint] = c
	}
	c.refs++
	var once sync.Once
	return c.cc, func() {
		once.Do(func() {
			o.mu.Lock()
			defer o.mu.Unlock()
			if c.refs--; c.refs == 0 && o.conns[endpoint] == c {
				delete(o.conns, endpoint)
				c.cc.Close()
			}
		})
	}, nil
}

// dial connects like the proxy's upstream transport: the configured
// roots and resolve pins, never an environment proxy.
func (o *OpenOBD) dial(endpoint string) (*grpc.ClientConn, error) {
	var roots = o.tr.TLS.TLSClientConfig.RootCAs
	return grpc.NewClient("passthrough:///"+endpoint,
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return o.tr.Dial(ctx, "tcp", addr) }),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12,
			GetClientCertificate: o.tr.TLS.TLSClientConfig.GetClientCertificate})), // tls_client, if set
		grpc.WithNoProxy())
}

// fetchController gets a session controller token.
func (o *OpenOBD) fetchController(ctx context.Context) (tokencache.Token, error) {
	cc, err := o.dial(o.endpoint)
	if err != nil {
		return tokencache.Token{}, fmt.Errorf("%w: injector %q: %v", ErrCredentialUnavailable, o.name, err)
	}
	defer cc.Close()
	tok, err := pb.NewSessionControllerClient(cc).GetSessionControllerToken(ctx, &pb.Authenticate{
		ClientId: o.id.Reveal(), ClientSecret: o.secret.Reveal(), ClusterId: o.cluster})
	if err != nil {
		kind := ErrCredentialUnavailable
		if c := status.Code(err); c == codes.Unauthenticated || c == codes.PermissionDenied || c == codes.InvalidArgument {
			kind = ErrCredentialRejected
		}
		msg := o.secrets.excerpt([]byte(status.Convert(err).Message()))
		return tokencache.Token{}, fmt.Errorf("%w: injector %q: getSessionControllerToken at %s: %s: %s", kind, o.name, o.endpoint, status.Code(err), msg)
	}
	return tokencache.Token{Value: config.NewSecret(tok.Value), Expiry: time.Now().Add(o.ctlLife)}, nil
}

func withBearer(ctx context.Context, tok string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
}

// normalizeHostPort lower-cases a host:port and adds :443 when no port is
// given.
func normalizeHostPort(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "" {
		return ""
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		s = net.JoinHostPort(strings.Trim(s, "[]"), "443")
	}
	return s
}

// Sharing sessions with the fleet (token_cache.shared): each session's
// record — its endpoint, state, unspent authentication token, latest
// session token, and why it ended — is kept sealed in the store, so that
// any proxy can serve its calls; one proxy at a time holds its token
// stream, under a lease it renews, and publishes each rotation.
const (
	obdShareTTL = 24 * time.Hour
	obdLease    = 3 * time.Second
)

// obdRecord is what the fleet shares of a session.
type obdRecord struct {
	ID        string `json:"id"`
	Endpoint  string `json:"endpoint"`
	State     string `json:"state,omitempty"`
	AuthToken string `json:"auth,omitempty"`
	Token     string `json:"token,omitempty"`
	Ended     string `json:"ended,omitempty"`
}

func (o *OpenOBD) sharing() bool { return o.shared != nil && o.shared.Up() }

func (o *OpenOBD) sharedKey(kind, v string) string {
	return o.cache.StoreKey(o.name + "\x00openobd-" + kind + "\x00" + v)
}

// publish writes s's record to the store, and lists s under its endpoint.
func (o *OpenOBD) publish(s *obdSession) {
	if !o.sharing() {
		return
	}
	s.mu.Lock()
	rec := obdRecord{ID: s.id, Endpoint: s.endpoint, State: s.state, AuthToken: s.authToken, Token: s.token, Ended: s.ended}
	listed := s.listed
	s.mu.Unlock()
	b, _ := json.Marshal(rec)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if o.shared.Put(ctx, o.sharedKey("session", rec.ID), b, obdShareTTL) != nil || listed {
		return // the endpoint's list is read and written once per session, not per rotation
	}
	ids := o.endpointIDs(ctx, rec.Endpoint)
	if !slices.Contains(ids, rec.ID) {
		ids = append(ids, rec.ID)
		if len(ids) > 64 { // the most recent sessions of an endpoint
			ids = ids[len(ids)-64:]
		}
		b, _ := json.Marshal(ids)
		if o.shared.Put(ctx, o.sharedKey("endpoint", rec.Endpoint), b, obdShareTTL) != nil {
			return
		}
	}
	s.mu.Lock()
	s.listed = true
	s.mu.Unlock()
}

func (o *OpenOBD) endpointIDs(ctx context.Context, endpoint string) []string {
	var ids []string
	if b, ok, err := o.shared.Get(ctx, o.sharedKey("endpoint", endpoint)); err == nil && ok {
		_ = json.Unmarshal(b, &ids)
	}
	return ids
}

func (o *OpenOBD) record(ctx context.Context, id string) (obdRecord, bool) {
	var rec obdRecord
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	b, ok, err := o.shared.Get(sctx, o.sharedKey("session", id))
	if err != nil || !ok || json.Unmarshal(b, &rec) != nil || rec.ID != id {
		return obdRecord{}, false
	}
	return rec, true
}

// refresh takes the fleet's view of s: its latest token, and its end.
func (o *OpenOBD) refresh(ctx context.Context, s *obdSession) {
	if !o.sharing() {
		return
	}
	rec, ok := o.record(ctx, s.id)
	if !ok {
		return
	}
	s.mu.Lock()
	if rec.Token != "" && rec.Token != s.token {
		s.token = rec.Token
		s.seen[rec.Token] = true
		s.authToken = ""
	}
	ended := rec.Ended
	s.mu.Unlock()
	if ended != "" {
		s.end(ended)
	}
}

// adopt takes a session another proxy of the fleet learned (nil: none).
func (o *OpenOBD) adopt(ctx context.Context, id string) *obdSession {
	if !o.sharing() {
		return nil
	}
	rec, ok := o.record(ctx, id)
	if !ok {
		return nil
	}
	s := &obdSession{id: rec.ID, endpoint: rec.Endpoint, state: rec.State, authToken: rec.AuthToken, token: rec.Token,
		ended: rec.Ended, remote: true, seen: map[string]bool{}, learnedAt: time.Now()}
	for _, t := range []string{rec.AuthToken, rec.Token} {
		if t != "" {
			s.seen[t] = true
		}
	}
	if prev, found, _ := o.sessions.PeekOrAdd(rec.ID, s); found {
		return prev
	}
	if s.token != "" {
		s.mu.Lock()
		o.startStreamLocked(s) // a follower, ready to take the stream over
		s.mu.Unlock()
	}
	return s
}

// adoptByEndpoint takes the one live session of the fleet that uses
// endpoint (nil: none, or more than one).
func (o *OpenOBD) adoptByEndpoint(ctx context.Context, endpoint string) *obdSession {
	if !o.sharing() {
		return nil
	}
	var live []string
	for _, id := range o.endpointIDs(ctx, endpoint) {
		if rec, ok := o.record(ctx, id); ok && rec.Ended == "" && rec.Endpoint == endpoint {
			live = append(live, id)
		}
	}
	if len(live) != 1 {
		return nil
	}
	if s, ok := o.sessions.Get(live[0]); ok {
		return s
	}
	return o.adopt(ctx, live[0])
}

// lead takes (or keeps) the session's stream lease for this proxy and
// returns a context that ends when the lease is lost, with the function
// that stops renewing it; nil when another proxy holds it. Without a
// store, this proxy always leads.
func (o *OpenOBD) lead(ctx context.Context, s *obdSession) (context.Context, func()) {
	if !o.sharing() {
		return ctx, func() {}
	}
	key := o.sharedKey("stream", s.id)
	if held, err := o.shared.Lease(ctx, key, obdLease); err == nil && !held {
		return nil, nil
	}
	sctx, cancel := context.WithCancel(ctx)
	go func() {
		t := time.NewTicker(obdLease / 3)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
				if held, err := o.shared.Lease(sctx, key, obdLease); err == nil && !held {
					cancel() // another proxy took it
					return
				}
			}
		}
	}()
	return sctx, cancel
}
