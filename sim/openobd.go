package sim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/authproxy/authproxy/openobd/pb"
)

// OpenOBD simulates the openOBD services: a session controller that issues
// controller tokens (and rejects expired ones) and starts sessions on
// tickets, each with its own grpc_endpoint; a session service that accepts
// each session's one-time authentication token once, then rotates session
// tokens on openSessionTokenStream every RotateEvery, rejecting a
// superseded token Grace after its successor was issued; and an echoing
// can/openIsotpStream. Register it on every grpc.Server that stands for
// the controller or a session endpoint: they share its state. It is safe
// for concurrent use once configured.
type OpenOBD struct {
	ClientID, ClientSecret, ClusterID string
	// ControllerTokenLifetime is how long a controller token is accepted
	// (openOBD sends no expiry; default 5400 s).
	ControllerTokenLifetime time.Duration
	// RotateEvery is the session token stream's interval (default 2 min).
	RotateEvery time.Duration
	// Grace is how long a superseded session token is still accepted
	// (default 30 s).
	Grace time.Duration
	// Endpoints are the grpc_endpoint values handed to new sessions in
	// turn.
	Endpoints []string

	mu          sync.Mutex
	controllers map[string]time.Time // controller token -> expiry
	sessions    map[string]*obdSession
	next        int

	controllerTokens atomic.Int64
	authenticates    atomic.Int64
	tokenStreams     atomic.Int64 // open now
	rotations        atomic.Int64
}

type obdSession struct {
	info     *pb.SessionInfo
	authUsed bool
	current  string
	valid    map[string]time.Time // session token -> accepted until
	done     chan struct{}        // closed when the session ends
}

// ControllerTokensIssued, Authentications, OpenTokenStreams and Rotations
// report what the simulator has seen.
func (o *OpenOBD) ControllerTokensIssued() int64 { return o.controllerTokens.Load() }
func (o *OpenOBD) Authentications() int64        { return o.authenticates.Load() }
func (o *OpenOBD) OpenTokenStreams() int64       { return o.tokenStreams.Load() }
func (o *OpenOBD) Rotations() int64              { return o.rotations.Load() }

// Register adds the controller, session and can services to s.
func (o *OpenOBD) Register(s *grpc.Server) {
	pb.RegisterSessionControllerServer(s, obdController{o: o})
	pb.RegisterSessionServer(s, obdSessionService{o: o})
	pb.RegisterCanServer(s, obdCan{o: o})
}

// SessionState returns a session's state ("" if unknown).
func (o *OpenOBD) SessionState(id string) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if s, ok := o.sessions[id]; ok {
		return s.info.State
	}
	return ""
}

func randomToken(prefix string) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func bearer(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get("authorization")
	if len(v) != 1 {
		return ""
	}
	return strings.TrimPrefix(v[0], "Bearer ")
}

func (o *OpenOBD) init() {
	if o.controllers == nil {
		o.controllers, o.sessions = map[string]time.Time{}, map[string]*obdSession{}
	}
}

func (o *OpenOBD) checkController(ctx context.Context) error {
	tok := bearer(ctx)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.init()
	if exp, ok := o.controllers[tok]; !ok || !time.Now().Before(exp) {
		return status.Error(codes.Unauthenticated, "invalid or expired session controller token")
	}
	return nil
}

// sessionFor returns the live session whose current (or graced) token ctx
// carries. o.mu is held.
func (o *OpenOBD) sessionForLocked(ctx context.Context) (*obdSession, string, error) {
	tok := bearer(ctx)
	o.init()
	now := time.Now()
	for _, s := range o.sessions {
		if until, ok := s.valid[tok]; ok {
			if !now.Before(until) {
				return nil, "", status.Error(codes.Unauthenticated, "session token superseded")
			}
			if s.info.State != "active" {
				return nil, "", status.Errorf(codes.FailedPrecondition, "session is %s", s.info.State)
			}
			return s, tok, nil
		}
	}
	return nil, "", status.Error(codes.Unauthenticated, "unknown session token")
}

func (o *OpenOBD) endLocked(s *obdSession, state string) {
	if s.info.State == "active" || s.info.State == "available" {
		s.info.State = state
		close(s.done)
	}
}

type obdController struct {
	pb.UnimplementedSessionControllerServer
	o *OpenOBD
}

func (c obdController) GetSessionControllerToken(_ context.Context, a *pb.Authenticate) (*pb.SessionControllerToken, error) {
	o := c.o
	if a.GetClientId() != o.ClientID || a.GetClientSecret() != o.ClientSecret || a.GetClusterId() != o.ClusterID {
		return nil, status.Error(codes.Unauthenticated, "invalid client credentials")
	}
	life := o.ControllerTokenLifetime
	if life == 0 {
		life = 5400 * time.Second
	}
	tok := randomToken("ctl-")
	o.mu.Lock()
	o.init()
	o.controllers[tok] = time.Now().Add(life)
	o.mu.Unlock()
	o.controllerTokens.Add(1)
	return &pb.SessionControllerToken{Value: tok}, nil
}

func (c obdController) start(ctx context.Context) (*pb.SessionInfo, error) {
	o := c.o
	if err := o.checkController(ctx); err != nil {
		return nil, err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.Endpoints) == 0 {
		return nil, status.Error(codes.Internal, "sim: no session endpoints configured")
	}
	info := &pb.SessionInfo{
		Id: randomToken("session-"), State: "available", CreatedAt: time.Now().UTC().Format(time.RFC3339),
		GrpcEndpoint: o.Endpoints[o.next%len(o.Endpoints)], AuthenticationToken: randomToken("auth-"),
	}
	o.next++
	o.sessions[info.Id] = &obdSession{info: info, valid: map[string]time.Time{}, done: make(chan struct{})}
	return info, nil
}

func (c obdController) StartSessionOnTicket(ctx context.Context, t *pb.TicketId) (*pb.SessionInfo, error) {
	if t.GetValue() == "" {
		return nil, status.Error(codes.InvalidArgument, "ticket id required")
	}
	return c.start(ctx)
}

func (c obdController) StartSessionOnConnector(ctx context.Context, id *pb.ConnectorId) (*pb.SessionInfo, error) {
	if id.GetValue() == "" {
		return nil, status.Error(codes.InvalidArgument, "connector id required")
	}
	return c.start(ctx)
}

// publicInfo is what getSession/getSessionList show: the authentication
// token only while it is unspent.
func publicInfo(s *obdSession) *pb.SessionInfo {
	info := &pb.SessionInfo{Id: s.info.Id, State: s.info.State, CreatedAt: s.info.CreatedAt, GrpcEndpoint: s.info.GrpcEndpoint}
	if !s.authUsed {
		info.AuthenticationToken = s.info.AuthenticationToken
	}
	return info
}

func (c obdController) GetSession(ctx context.Context, id *pb.SessionId) (*pb.SessionInfo, error) {
	return c.withSession(ctx, id, func(*obdSession) {})
}

func (c obdController) InterruptSession(ctx context.Context, id *pb.SessionId) (*pb.SessionInfo, error) {
	return c.withSession(ctx, id, func(s *obdSession) { c.o.endLocked(s, "interrupted") })
}

// withSession checks the controller token, runs fn on the session under the
// lock, and answers with the session's public info (NOT_FOUND if unknown).
func (c obdController) withSession(ctx context.Context, id *pb.SessionId, fn func(*obdSession)) (*pb.SessionInfo, error) {
	o := c.o
	if err := o.checkController(ctx); err != nil {
		return nil, err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	s, ok := o.sessions[id.GetValue()]
	if !ok {
		return nil, status.Error(codes.NotFound, "no such session")
	}
	fn(s)
	return publicInfo(s), nil
}

func (c obdController) GetSessionList(ctx context.Context, _ *pb.EmptyMessage) (*pb.SessionInfoList, error) {
	o := c.o
	if err := o.checkController(ctx); err != nil {
		return nil, err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	list := &pb.SessionInfoList{}
	for _, s := range o.sessions {
		list.Sessions = append(list.Sessions, publicInfo(s))
	}
	return list, nil
}

type obdSessionService struct {
	pb.UnimplementedSessionServer
	o *OpenOBD
}

func (s obdSessionService) Authenticate(ctx context.Context, _ *pb.EmptyMessage) (*pb.SessionToken, error) {
	o := s.o
	tok := bearer(ctx)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.init()
	for _, sess := range o.sessions {
		if sess.info.AuthenticationToken != tok || tok == "" {
			continue
		}
		if sess.authUsed {
			return nil, status.Error(codes.Unauthenticated, "authentication token already used")
		}
		if sess.info.State != "available" {
			return nil, status.Errorf(codes.FailedPrecondition, "session is %s", sess.info.State)
		}
		sess.authUsed = true
		sess.info.State = "active"
		sess.current = randomToken("st-")
		sess.valid[sess.current] = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
		o.authenticates.Add(1)
		return &pb.SessionToken{Value: sess.current}, nil
	}
	return nil, status.Error(codes.Unauthenticated, "unknown authentication token")
}

func (s obdSessionService) OpenSessionTokenStream(_ *pb.EmptyMessage, stream pb.Session_OpenSessionTokenStreamServer) error {
	o := s.o
	o.mu.Lock()
	sess, _, err := o.sessionForLocked(stream.Context())
	o.mu.Unlock()
	if err != nil {
		return err
	}
	o.tokenStreams.Add(1)
	defer o.tokenStreams.Add(-1)
	every, grace := o.RotateEvery, o.Grace
	if every == 0 {
		every = 2 * time.Minute
	}
	if grace == 0 {
		grace = 30 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-sess.done:
			return status.Error(codes.FailedPrecondition, "session ended")
		case <-t.C:
			o.mu.Lock()
			old := sess.current
			sess.current = randomToken("st-")
			sess.valid[old] = time.Now().Add(grace)
			sess.valid[sess.current] = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
			next := sess.current
			o.mu.Unlock()
			o.rotations.Add(1)
			if err := stream.Send(&pb.SessionToken{Value: next}); err != nil {
				return err
			}
		}
	}
}

func (s obdSessionService) AssertAuthenticationPossible(context.Context, *pb.EmptyMessage) (*pb.EmptyMessage, error) {
	return &pb.EmptyMessage{}, nil
}

func (s obdSessionService) Finish(ctx context.Context, _ *pb.ServiceResult) (*pb.EmptyMessage, error) {
	o := s.o
	o.mu.Lock()
	defer o.mu.Unlock()
	sess, _, err := o.sessionForLocked(ctx)
	if err != nil {
		return nil, err
	}
	o.endLocked(sess, "finished")
	return &pb.EmptyMessage{}, nil
}

type obdCan struct {
	pb.UnimplementedCanServer
	o *OpenOBD
}

// OpenIsotpStream echoes every message until the client closes its side or
// the session ends. The token is checked when the stream opens: a stream
// outlives token rotations.
func (c obdCan) OpenIsotpStream(stream pb.Can_OpenIsotpStreamServer) error {
	o := c.o
	o.mu.Lock()
	sess, _, err := o.sessionForLocked(stream.Context())
	o.mu.Unlock()
	if err != nil {
		return err
	}
	msgs := make(chan *pb.IsotpMessage)
	errc := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case msgs <- m:
			case <-stream.Context().Done():
				return
			}
		}
	}()
	for {
		select {
		case <-sess.done:
			return status.Error(codes.FailedPrecondition, "session ended")
		case err := <-errc:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case m := <-msgs:
			if err := stream.Send(m); err != nil {
				return err
			}
		}
	}
}

// ISOTPRoundTrip is a client's call of the simulator's echo: it opens
// can/openIsotpStream on c, sends msg and checks that the echo is msg.
func ISOTPRoundTrip(ctx context.Context, c pb.CanClient, msg string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.OpenIsotpStream(ctx)
	if err != nil {
		return err
	}
	if err := st.Send(&pb.IsotpMessage{Payload: msg}); err != nil {
		return err
	}
	got, err := st.Recv()
	if err != nil {
		return err
	}
	if got.Payload != msg {
		return fmt.Errorf("echo %q, want %q", got.Payload, msg)
	}
	return st.CloseSend()
}
