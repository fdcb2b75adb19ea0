package sim

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/authproxy/authproxy/openobd/pb"
)

// TestOpenOBDSimulatorDirectly drives the simulator with grpc-go, no proxy:
// it must behave as the protocol says before the proxy is tested on it.
func TestOpenOBDSimulatorDirectly(t *testing.T) {
	pki, err := NewPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, _ := pki.ServerTLS("127.0.0.1")
	o := &OpenOBD{ClientID: "id", ClientSecret: "secret", ClusterID: "001",
		ControllerTokenLifetime: 500 * time.Millisecond, RotateEvery: 100 * time.Millisecond, Grace: 150 * time.Millisecond}
	serve := func() string {
		srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
		o.Register(srv)
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		go srv.Serve(ln)
		t.Cleanup(srv.Stop)
		return ln.Addr().String()
	}
	controller := serve()
	o.Endpoints = []string{serve()}
	dial := func(addr string) *grpc.ClientConn {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pki.Pool})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	withBearer := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
	}
	ctl := pb.NewSessionControllerClient(dial(controller))
	if _, err := ctl.GetSessionControllerToken(context.Background(), &pb.Authenticate{ClientId: "id", ClientSecret: "wrong", ClusterId: "001"}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("wrong secret: %v", err)
	}
	ct, err := ctl.GetSessionControllerToken(context.Background(), &pb.Authenticate{ClientId: "id", ClientSecret: "secret", ClusterId: "001"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.StartSessionOnTicket(context.Background(), &pb.TicketId{Value: "t1"}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("without a controller token: %v", err)
	}
	info, err := ctl.StartSessionOnTicket(withBearer(ct.Value), &pb.TicketId{Value: "t1"})
	if err != nil || info.GrpcEndpoint != o.Endpoints[0] || info.AuthenticationToken == "" {
		t.Fatalf("start: %v %v", info, err)
	}
	sessConn := dial(info.GrpcEndpoint)
	sess := pb.NewSessionClient(sessConn)
	st, err := sess.Authenticate(withBearer(info.AuthenticationToken), &pb.EmptyMessage{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Authenticate(withBearer(info.AuthenticationToken), &pb.EmptyMessage{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("a second authenticate: %v", err)
	}
	ts, err := sess.OpenSessionTokenStream(withBearer(st.Value), &pb.EmptyMessage{})
	if err != nil {
		t.Fatal(err)
	}
	iso, err := pb.NewCanClient(sessConn).OpenIsotpStream(withBearer(st.Value))
	if err != nil {
		t.Fatal(err)
	}
	latest := st.Value
	for i := 0; i < 3; i++ {
		next, err := ts.Recv()
		if err != nil || next.Value == latest {
			t.Fatalf("rotation %d: %v", i, err)
		}
		latest = next.Value
		msg := fmt.Sprintf("0x22 F1 90 #%d", i)
		if err := iso.Send(&pb.IsotpMessage{Payload: msg}); err != nil {
			t.Fatal(err)
		}
		if got, err := iso.Recv(); err != nil || got.Payload != msg {
			t.Fatalf("echo %d across rotations: %v %v", i, got, err)
		}
	}
	// The first token is superseded, past its grace: a new call with it fails.
	if s, err := pb.NewCanClient(sessConn).OpenIsotpStream(withBearer(st.Value)); err == nil {
		if _, err := s.Recv(); status.Code(err) != codes.Unauthenticated {
			t.Errorf("a superseded token: %v", err)
		}
	}
	list, err := ctl.GetSessionList(withBearer(ct.Value), &pb.EmptyMessage{})
	if err != nil || len(list.Sessions) != 1 || list.Sessions[0].State != "active" || list.Sessions[0].AuthenticationToken != "" {
		t.Errorf("list: %v %v", list, err)
	}
	if _, err := ctl.InterruptSession(withBearer(ct.Value), &pb.SessionId{Value: info.Id}); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := ts.Recv(); err != nil {
			if status.Code(err) != codes.FailedPrecondition {
				t.Errorf("token stream after interrupt: %v", err)
			}
			break
		}
	}
	if _, err := iso.Recv(); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("ISO-TP stream after interrupt: %v", err)
	}
	time.Sleep(600 * time.Millisecond) // past the controller token's lifetime
	if _, err := ctl.GetSessionList(withBearer(ct.Value), &pb.EmptyMessage{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("an expired controller token: %v", err)
	}
}
