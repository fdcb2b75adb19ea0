package sim

import (
	"context"
	"crypto/tls"
	"io"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// GRPCEcho implements grpc.testing.TestService for proxy tests: unary,
// server-streaming and bidirectional calls that echo their payloads. Every
// call must carry `authorization: <Authorization>` or it fails with
// UNAUTHENTICATED, so a call that reaches it without the injected
// credential is visible. As the gRPC interop server does, it sends the
// value of x-grpc-test-echo-initial back as initial metadata and that of
// x-grpc-test-echo-trailing-bin as trailing metadata. It is safe for
// concurrent use.
type GRPCEcho struct {
	testpb.UnimplementedTestServiceServer

	// Authorization is the required authorization metadata ("" = none).
	Authorization string
	// Authorize, when set, decides instead whether a call's authorization
	// metadata value is good (an OAuth2 token still valid, say).
	Authorize func(authorization string) bool
	// AuthorizeMD, when set, decides from the whole metadata (a credential
	// in another header, such as ODIL's session).
	AuthorizeMD func(md metadata.MD) bool
	// OnCall, when set, sees the context of every test-service call that
	// passed the check (its metadata and deadline).
	OnCall func(ctx context.Context)
	// StreamGate, when set, is called after each message of a
	// server-streaming call but the last; the call waits for it, so a test
	// can prove a message arrived before the next one was sent.
	StreamGate func(ctx context.Context, i int) error

	calls atomic.Int64
}

// Calls reports how many calls passed the credential check.
func (e *GRPCEcho) Calls() int64 { return e.calls.Load() }

// NewServer returns a grpc-go server (TLS when tlsCfg is set) serving e.
func (e *GRPCEcho) NewServer(tlsCfg *tls.Config) *grpc.Server {
	opts := []grpc.ServerOption{
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := e.check(ctx, info.FullMethod); err != nil {
				return nil, err
			}
			hdr, trl := echoMetadata(ctx)
			if err := grpc.SetHeader(ctx, hdr); err != nil {
				return nil, err
			}
			_ = grpc.SetTrailer(ctx, trl)
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := e.check(ss.Context(), info.FullMethod); err != nil {
				return err
			}
			hdr, trl := echoMetadata(ss.Context())
			if err := ss.SendHeader(hdr); err != nil { // at once: a client may wait for it before sending
				return err
			}
			ss.SetTrailer(trl)
			return h(srv, ss)
		}),
	}
	if tlsCfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsCfg)))
	}
	s := grpc.NewServer(opts...)
	testpb.RegisterTestServiceServer(s, e)
	reflection.Register(s) // as grpcurl and load tools expect
	return s
}

// check applies to the test service only (server reflection, which load
// tools call first, needs no credential).
func (e *GRPCEcho) check(ctx context.Context, method string) error {
	if !strings.HasPrefix(method, "/grpc.testing.TestService/") {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	got := md.Get("authorization")
	switch {
	case e.AuthorizeMD != nil:
		if !e.AuthorizeMD(md) {
			return status.Error(codes.Unauthenticated, "sim: missing or wrong credential")
		}
	case e.Authorize != nil:
		if len(got) != 1 || !e.Authorize(got[0]) {
			return status.Error(codes.Unauthenticated, "sim: missing or wrong authorization")
		}
	case e.Authorization != "":
		if len(got) != 1 || got[0] != e.Authorization {
			return status.Error(codes.Unauthenticated, "sim: missing or wrong authorization")
		}
	}
	e.calls.Add(1)
	if e.OnCall != nil {
		e.OnCall(ctx)
	}
	return nil
}

// echoMetadata is the metadata the interop server echoes.
func echoMetadata(ctx context.Context) (header, trailer metadata.MD) {
	md, _ := metadata.FromIncomingContext(ctx)
	header, trailer = metadata.MD{}, metadata.MD{}
	if v := md.Get("x-grpc-test-echo-initial"); len(v) > 0 {
		header.Set("x-grpc-test-echo-initial", v...)
	}
	if v := md.Get("x-grpc-test-echo-trailing-bin"); len(v) > 0 {
		trailer.Set("x-grpc-test-echo-trailing-bin", v...)
	}
	return header, trailer
}

func echoStatus(s *testpb.EchoStatus) error {
	if s == nil || s.Code == 0 {
		return nil
	}
	return status.Error(codes.Code(s.Code), s.Message)
}

func authorization(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("authorization"); len(v) > 0 {
		return v[0]
	}
	return ""
}

// UnaryCall echoes the payload; with fill_username it returns the
// authorization it received in username; response_status makes it fail.
func (e *GRPCEcho) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if err := echoStatus(req.GetResponseStatus()); err != nil {
		return nil, err
	}
	resp := &testpb.SimpleResponse{Payload: req.GetPayload()}
	if req.GetFillUsername() {
		resp.Username = authorization(ctx)
	}
	return resp, nil
}

// StreamingOutputCall sends one message per response parameter, each with a
// body of the requested size whose first byte is the message's index.
func (e *GRPCEcho) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream testpb.TestService_StreamingOutputCallServer) error {
	params := req.GetResponseParameters()
	for i, p := range params {
		body := make([]byte, max(p.GetSize(), 1))
		body[0] = byte(i)
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: body}}); err != nil {
			return err
		}
		if e.StreamGate != nil && i < len(params)-1 {
			if err := e.StreamGate(stream.Context(), i); err != nil {
				return err
			}
		}
	}
	return echoStatus(req.GetResponseStatus())
}

// FullDuplexCall answers each request with its payload echoed, until the
// client closes its side; a request's response_status ends the call.
func (e *GRPCEcho) FullDuplexCall(stream testpb.TestService_FullDuplexCallServer) error {
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := echoStatus(req.GetResponseStatus()); err != nil {
			return err
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}
