package proxy_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/metrics"
	"github.com/authproxy/authproxy/openobd/pb"
	"github.com/authproxy/authproxy/sim"
	"github.com/authproxy/authproxy/tokencache"
)

// obdWorld is the openOBD simulator on a controller endpoint and two
// session endpoints, behind a sidecar and a forward proxy.
type obdWorld struct {
	e        *env
	sim      *sim.OpenOBD
	ctlPort  string
	sessions map[string]string // endpoint name -> host:port
	servers  map[string]*grpc.Server
	p        *running
	clientCA *sim.PKI // when set, every endpoint requires a client certificate of this CA
}

func newOBDWorld(t *testing.T, rewrite bool, endpoints int, extra ...string) *obdWorld {
	return newOBDWorldWith(t, nil, rewrite, endpoints, extra...)
}

// newOBDWorldWith is newOBDWorld whose endpoints require a client
// certificate of clientCA (nil: none); the injector and the route then
// present one it issued.
func newOBDWorldWith(t *testing.T, clientCA *sim.PKI, rewrite bool, endpoints int, extra ...string) *obdWorld {
	e := newEnv(t)
	w := &obdWorld{e: e, sessions: map[string]string{}, servers: map[string]*grpc.Server{}, clientCA: clientCA,
		sim: &sim.OpenOBD{ClientID: "garage-app", ClientSecret: secretToken, ClusterID: "001",
			RotateEvery: 100 * time.Millisecond, Grace: 150 * time.Millisecond}}
	routeExtra := ""
	if clientCA != nil {
		cert, key, err := clientCA.ClientCert(e.dir, "obd-client", x509.Certificate{Subject: pkix.Name{CommonName: "garage-gateway"}})
		if err != nil {
			t.Fatal(err)
		}
		tc := fmt.Sprintf("tls_client: {cert_file: %q, key_file: %q}", cert, key)
		extra = append(extra, "    "+tc)
		routeExtra = ", " + tc
	}
	ctl := w.serve(t, "grpc", "")
	_, w.ctlPort, _ = net.SplitHostPort(ctl)
	for i := 1; i <= endpoints; i++ {
		name := fmt.Sprintf("s%d", i)
		addr := w.serve(t, name, "")
		_, p, _ := net.SplitHostPort(addr)
		w.sessions[name] = name + ".openobd.test:" + p
		w.sim.Endpoints = append(w.sim.Endpoints, w.sessions[name])
	}
	e.metrics = metrics.New("test")
	e.injEnv = injectors.Env{Cache: tokencache.New(tokencache.Options{MinBackoff: 10 * time.Millisecond, Observer: e.metrics}), Events: e.metrics}
	w.p = e.start(fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners:
  - {name: obd, kind: sidecar, address: 127.0.0.1:0, host: grpc.openobd.test, upstream: "https://grpc.openobd.test:%[1]s"}
  - {name: fwd, kind: forward, address: 127.0.0.1:0}
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
upstream:
  ca_file: "{{UPSTREAM_CA}}"
  resolve: {grpc.openobd.test: 127.0.0.1, s1.openobd.test: 127.0.0.1, s2.openobd.test: 127.0.0.1}
injectors:
  obd:
    kind: openobd
    endpoint: "grpc.openobd.test:%[1]s"
    client_id: {value: garage-app}
    client_secret: {value: %[2]q}
    cluster_id: "001"
    rewrite_session_endpoint: %[3]v
%[4]s
routes:
  - {name: openobd, match: {host: "*.openobd.test", path: /*}, injector: obd%[5]s}
`, w.ctlPort, secretToken, rewrite, strings.Join(extra, "\n"), routeExtra), nil, nil)
	return w
}

// serve starts (or restarts, on addr) a TLS gRPC server for the simulator.
func (w *obdWorld) serve(t *testing.T, name, addr string) string {
	tlsCfg, err := w.e.pki.ServerTLS("grpc.openobd.test", "s1.openobd.test", "s2.openobd.test")
	if err != nil {
		t.Fatal(err)
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if w.clientCA != nil {
		tlsCfg.ClientAuth, tlsCfg.ClientCAs = tls.RequireAndVerifyClientCert, w.clientCA.Pool
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
	w.sim.Register(srv)
	go srv.Serve(ln)
	w.servers[name] = srv
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

func dialPlain(t *testing.T, addr string) *grpc.ClientConn {
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// pingPong runs an ISO-TP stream for d, a message every 20 ms, checking
// each echo; it returns how many round trips it made.
func pingPong(t *testing.T, ctx context.Context, c pb.CanClient, d time.Duration) int {
	t.Helper()
	end := time.Now().Add(d)
	return pingPongUntil(t, ctx, c, func() bool { return !time.Now().Before(end) })
}

// pingPongUntil echoes ISO-TP messages on one stream, at least once and
// until done says so (at most 20 s), and returns the round trips made.
func pingPongUntil(t *testing.T, ctx context.Context, c pb.CanClient, done func() bool) int {
	t.Helper()
	s, err := c.OpenIsotpStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for limit := time.Now().Add(20 * time.Second); n == 0 || !done(); n++ {
		if time.Now().After(limit) {
			t.Fatalf("after %d round trips in 20 s, still not done", n)
		}
		msg := fmt.Sprintf("22 F1 90 #%d", n)
		if err := s.Send(&pb.IsotpMessage{Payload: msg}); err != nil {
			t.Fatalf("send %d: %v", n, err)
		}
		got, err := s.Recv()
		if err != nil || got.Payload != msg {
			t.Fatalf("echo %d: %v %v", n, got, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.CloseSend()
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestOpenOBDSidecarRewriteNeverAuthenticatedByTheApp(t *testing.T) {
	w := newOBDWorld(t, true, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	app := dialPlain(t, w.p.addr("obd")) // no credentials, ever
	ctl := pb.NewSessionControllerClient(app)
	lifecycle := func(ticket string) {
		info, err := ctl.StartSessionOnTicket(ctx, &pb.TicketId{Value: ticket})
		if err != nil {
			t.Fatal(err)
		}
		if info.GrpcEndpoint != w.p.addr("obd") {
			t.Fatalf("grpc_endpoint %q, want it rewritten to the sidecar %s", info.GrpcEndpoint, w.p.addr("obd"))
		}
		// An unmodified client dials grpc_endpoint: it lands on the sidecar.
		session, err := grpc.NewClient(info.GrpcEndpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer session.Close()
		// One stream outlives 3 token rotations (the loop fails on the first
		// echo that does not come back).
		before := w.sim.Rotations()
		n := pingPongUntil(t, ctx, pb.NewCanClient(session), func() bool { return w.sim.Rotations()-before >= 3 })
		t.Logf("%s: %d ISO-TP round trips across %d token rotations", ticket, n, w.sim.Rotations()-before)
		// A stream opened after several rotations uses the latest token.
		pingPong(t, ctx, pb.NewCanClient(session), 50*time.Millisecond)

		list, err := ctl.GetSessionList(ctx, &pb.EmptyMessage{})
		found := false
		for _, s := range list.GetSessions() {
			found = found || s.Id == info.Id && s.GrpcEndpoint == w.p.addr("obd")
		}
		if err != nil || !found {
			t.Errorf("list: %v %v", list, err)
		}
		live, err := pb.NewCanClient(session).OpenIsotpStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		live.Send(&pb.IsotpMessage{Payload: "x"})
		live.Recv()
		if _, err := ctl.InterruptSession(ctx, &pb.SessionId{Value: info.Id}); err != nil {
			t.Fatal(err)
		}
		if _, err := live.Recv(); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("the open stream after interrupt: %v", err)
		}
		waitFor(t, "the proxy to close its token stream", func() bool { return w.sim.OpenTokenStreams() == 0 })
		s, err := pb.NewCanClient(session).OpenIsotpStream(ctx)
		if err == nil {
			_, err = s.Recv()
		}
		if st := status.Convert(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "ended") {
			t.Errorf("a call on the interrupted session: %v", err)
		}
	}
	lifecycle("warm-up") // pools the proxy's upstream connections
	waitGoroutines(t, runtime.NumGoroutine(), 0)
	baseline := runtime.NumGoroutine()
	lifecycle("ticket-2")
	if w.sim.Authentications() != 2 || w.sim.ControllerTokensIssued() != 1 {
		t.Errorf("authentications %d, controller tokens %d; want 2 and 1", w.sim.Authentications(), w.sim.ControllerTokensIssued())
	}
	waitGoroutines(t, baseline, 2)
}

// Every openOBD endpoint requires a client certificate: the injector
// presents its tls_client to the session controller (its own token
// requests and session token streams), the route its own to the calls it
// carries; a session runs end to end through the sidecar.
func TestOpenOBDWithClientCertificates(t *testing.T) {
	clientCA, err := sim.NewPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w := newOBDWorldWith(t, clientCA, true, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	app := dialPlain(t, w.p.addr("obd"))
	info, err := pb.NewSessionControllerClient(app).StartSessionOnTicket(ctx, &pb.TicketId{Value: "mtls"})
	if err != nil {
		t.Fatal(err)
	}
	session, err := grpc.NewClient(info.GrpcEndpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	before := w.sim.Rotations()
	pingPongUntil(t, ctx, pb.NewCanClient(session), func() bool { return w.sim.Rotations()-before >= 1 })
	if w.sim.Authentications() == 0 || w.sim.ControllerTokensIssued() == 0 {
		t.Errorf("authentications %d, controller tokens %d", w.sim.Authentications(), w.sim.ControllerTokensIssued())
	}
}

func TestOpenOBDForwardTwoSessionsOnTwoEndpoints(t *testing.T) {
	w := newOBDWorld(t, false, 2)
	useEnvProxy(t, w.p.addr("fwd"))
	creds := credentials.NewTLS(&tls.Config{RootCAs: w.e.proxyCA}) // only the proxy's CA: everything is intercepted
	dial := func(target string) *grpc.ClientConn {
		c, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctl := pb.NewSessionControllerClient(dial("grpc.openobd.test:" + w.ctlPort))
	a, err := ctl.StartSessionOnTicket(ctx, &pb.TicketId{Value: "A"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := ctl.StartSessionOnConnector(ctx, &pb.ConnectorId{Value: "B"})
	if err != nil {
		t.Fatal(err)
	}
	if a.GrpcEndpoint == b.GrpcEndpoint || a.GrpcEndpoint != w.sessions["s1"] {
		t.Fatalf("endpoints %s and %s", a.GrpcEndpoint, b.GrpcEndpoint)
	}
	// Session A: the application calls authenticate itself, with no token;
	// the proxy adds the one-time token and keeps the session token.
	ca := dial(a.GrpcEndpoint)
	tok, err := pb.NewSessionClient(ca).Authenticate(ctx, &pb.EmptyMessage{})
	if err != nil || tok.Value == "" {
		t.Fatalf("authenticate through the proxy: %v", err)
	}
	cb := dial(b.GrpcEndpoint) // session B: never authenticated by the app
	done := make(chan int, 2)
	go func() { done <- pingPong(t, ctx, pb.NewCanClient(ca), 400*time.Millisecond) }()
	go func() { done <- pingPong(t, ctx, pb.NewCanClient(cb), 400*time.Millisecond) }()
	na, nb := <-done, <-done
	if na == 0 || nb == 0 || w.sim.Authentications() != 2 {
		t.Errorf("round trips %d and %d, authentications %d (want 2)", na, nb, w.sim.Authentications())
	}
	for _, id := range []string{a.Id, b.Id} {
		if _, err := ctl.InterruptSession(ctx, &pb.SessionId{Value: id}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "both token streams to close", func() bool { return w.sim.OpenTokenStreams() == 0 })
}

func TestOpenOBDSameEndpointNeedsTheSessionHeader(t *testing.T) {
	w := newOBDWorld(t, false, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	app := dialPlain(t, w.p.addr("obd"))
	ctl := pb.NewSessionControllerClient(app)
	a, _ := ctl.StartSessionOnTicket(ctx, &pb.TicketId{Value: "A"})
	b, err := ctl.StartSessionOnTicket(ctx, &pb.TicketId{Value: "B"})
	if err != nil || a.GrpcEndpoint != b.GrpcEndpoint {
		t.Fatalf("two sessions on one endpoint: %v %v", b, err)
	}
	// Sent to the sidecar with the endpoint as :authority, but two live
	// sessions use it: the proxy refuses to guess.
	sess := func() *grpc.ClientConn {
		c, err := grpc.NewClient(w.p.addr("obd"), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority(a.GrpcEndpoint))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}()
	s, err := pb.NewCanClient(sess).OpenIsotpStream(ctx)
	if err == nil {
		_, err = s.Recv()
	}
	if st := status.Convert(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "x-openobd-session-id") {
		t.Fatalf("ambiguous call: %v", err)
	}
	for _, id := range []string{a.Id, b.Id} {
		hctx := metadata.AppendToOutgoingContext(ctx, "x-openobd-session-id", id)
		if n := pingPong(t, hctx, pb.NewCanClient(sess), 150*time.Millisecond); n == 0 {
			t.Errorf("session %s: no round trips", id)
		}
	}
	if w.sim.Authentications() != 2 {
		t.Errorf("%d authentications, want one per session", w.sim.Authentications())
	}
}

func TestOpenOBDControllerTokenExpiryAndEndpointRestart(t *testing.T) {
	w := newOBDWorld(t, true, 1)
	w.sim.ControllerTokenLifetime = 300 * time.Millisecond // the proxy assumes 5400 s
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	app := dialPlain(t, w.p.addr("obd"))
	ctl := pb.NewSessionControllerClient(app)
	info, err := ctl.StartSessionOnTicket(ctx, &pb.TicketId{Value: "T"})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond) // the controller now refuses the cached token
	if _, err := ctl.GetSession(ctx, &pb.SessionId{Value: info.Id}); err != nil {
		t.Fatalf("after the controller token expired: %v (want a transparent refetch)", err)
	}
	if n := w.sim.ControllerTokensIssued(); n != 2 {
		t.Errorf("%d controller tokens, want 2", n)
	}
	session := dialPlain(t, info.GrpcEndpoint)
	pingPong(t, ctx, pb.NewCanClient(session), 100*time.Millisecond)

	// The session endpoint restarts (same state): the proxy's token stream
	// reconnects and rotations reach it again.
	addr := strings.Replace(w.sessions["s1"], "s1.openobd.test", "127.0.0.1", 1)
	w.servers["s1"].Stop()
	var restarted atomic.Bool
	go func() { time.Sleep(200 * time.Millisecond); w.serve(t, "s1", addr); restarted.Store(true) }()
	waitFor(t, "the restart", restarted.Load)
	waitFor(t, "the proxy's token stream to reconnect", func() bool { return w.sim.OpenTokenStreams() == 1 })
	before := w.sim.Rotations()
	waitFor(t, "two rotations after the restart", func() bool { return w.sim.Rotations() >= before+2 })
	if n := pingPong(t, ctx, pb.NewCanClient(session), 100*time.Millisecond); n == 0 {
		t.Error("no round trips after the restart")
	}
}

func TestOpenOBDFinishTokenRuleAndEviction(t *testing.T) {
	w := newOBDWorld(t, false, 1, "    max_sessions: 1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	app := dialPlain(t, w.p.addr("obd"))
	ctl := pb.NewSessionControllerClient(app)
	a, err := ctl.StartSessionOnTicket(ctx, &pb.TicketId{Value: "A"})
	if err != nil {
		t.Fatal(err)
	}
	// Sent to the sidecar without the endpoint as :authority or the header,
	// the call is matched by the token the application holds: the one-time
	// authentication token the proxy saw in SessionInfo.
	bearer := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	sess := pb.NewSessionClient(app)
	st, err := sess.Authenticate(bearer(a.AuthenticationToken), &pb.EmptyMessage{})
	if err != nil || st.Value == "" {
		t.Fatalf("authenticate by token: %v", err)
	}
	if n := pingPong(t, bearer(st.Value), pb.NewCanClient(app), 50*time.Millisecond); n == 0 {
		t.Error("no round trips with the session token as the key")
	}
	// finish ends the session: the proxy closes its token stream.
	if _, err := sess.Finish(bearer(st.Value), &pb.ServiceResult{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the token stream to close after finish", func() bool { return w.sim.OpenTokenStreams() == 0 })
	s, err := pb.NewCanClient(app).OpenIsotpStream(bearer(st.Value))
	if err == nil {
		_, err = s.Recv()
	}
	if st := status.Convert(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "has ended (") {
		t.Errorf("after finish: %v", err)
	}
	// With max_sessions 1, starting and using a second session evicts the
	// first from the table, closing its token stream.
	b, _ := ctl.StartSessionOnTicket(ctx, &pb.TicketId{Value: "B"})
	hb := metadata.AppendToOutgoingContext(ctx, "x-openobd-session-id", b.Id)
	pingPong(t, hb, pb.NewCanClient(app), 30*time.Millisecond)
	waitFor(t, "B's token stream", func() bool { return w.sim.OpenTokenStreams() == 1 })
	c, _ := ctl.StartSessionOnTicket(ctx, &pb.TicketId{Value: "C"})
	waitFor(t, "B's token stream to close on eviction", func() bool { return w.sim.OpenTokenStreams() == 0 })
	hc := metadata.AppendToOutgoingContext(ctx, "x-openobd-session-id", c.Id)
	if n := pingPong(t, hc, pb.NewCanClient(app), 30*time.Millisecond); n == 0 {
		t.Error("the newest session does not work")
	}
}
