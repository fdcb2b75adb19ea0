package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// resettingUpstream is an HTTP/2 upstream over TLS (ALPN h2) that answers
// no stream: it resets each with the code its x-reset-code header names,
// as a grpc-go server ends an expired call.
func resettingUpstream(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"h2"}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { serveResets(c) })
		}
	})
	return ln.Addr().String()
}

func serveResets(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(br, preface); err != nil || string(preface) != http2.ClientPreface {
		return
	}
	bw := bufio.NewWriter(c)
	fr := http2.NewFramer(bw, br)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.WriteSettings()
	bw.Flush()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			code, _ := strconv.Atoi(headerValue(f, "x-reset-code"))
			fr.WriteRSTStream(f.StreamID, http2.ErrCode(code))
		}
		bw.Flush()
	}
}

func headerValue(f *http2.MetaHeadersFrame, name string) string {
	for _, hf := range f.RegularFields() {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

// resetCodes are the RST_STREAM codes of RFC 9113 §7 an upstream may send.
var resetCodes = []http2.ErrCode{
	http2.ErrCodeNo, http2.ErrCodeProtocol, http2.ErrCodeInternal, http2.ErrCodeFlowControl,
	http2.ErrCodeStreamClosed, http2.ErrCodeFrameSize, http2.ErrCodeRefusedStream, http2.ErrCodeCancel,
	http2.ErrCodeCompression, http2.ErrCodeConnect, http2.ErrCodeEnhanceYourCalm,
	http2.ErrCodeInadequateSecurity, http2.ErrCodeHTTP11Required,
}

// An upstream's RST_STREAM before any answer reaches an HTTP/2 client as
// an RST_STREAM with the same code, on a sidecar (h2c) and through the
// forward listener (intercepted h2): to a raw HTTP/2 client, and to grpc-go,
// which then sees the status it sees without the proxy (CANCELLED,
// INTERNAL, RESOURCE_EXHAUSTED…, not the proxy's UNAVAILABLE). The proxy
// logs no upstream failure for it.
func TestUpstreamResetsPassThroughWithTheirCodes(t *testing.T) {
	e := newEnv(t)
	tlsCfg, err := e.pki.ServerTLS(upstreamNames...)
	if err != nil {
		t.Fatal(err)
	}
	up := resettingUpstream(t, tlsCfg)
	grpcPort := port(t, up)
	p := e.start(grpcConfig(grpcPort), nil, nil)
	target := "grpc.authproxy.test:" + grpcPort

	for _, mode := range []string{"sidecar", "forward"} {
		for _, code := range resetCodes {
			var c *rawH2
			head := request("POST", "http", "grpc.authproxy.test", "/grpc.testing.TestService/UnaryCall", "content-type", "application/grpc", "te", "trailers", "x-reset-code", strconv.Itoa(int(code)))
			if mode == "sidecar" {
				c = dialH2C(t, p.addr("grpc"))
			} else {
				c = dialInterceptedH2(t, p.addr("fwd"), target, e.proxyCA)
				head = request("POST", "https", target, "/grpc.testing.TestService/UnaryCall", "content-type", "application/grpc", "te", "trailers", "x-reset-code", strconv.Itoa(int(code)))
			}
			c.headers(1, head, true, false)
			if a := c.read(1); !a.reset || a.code != code {
				t.Errorf("%s, upstream reset %v: the client got %+v, want RST_STREAM %v", mode, code, a, code)
			}
		}
	}

	// grpc-go, direct and through each listener kind. REFUSED_STREAM is
	// left out: grpc-go retries it by itself.
	roots := x509.NewCertPool()
	pem, _ := os.ReadFile(e.pki.CAFile)
	roots.AppendCertsFromPEM(pem)
	direct, err := grpc.NewClient(up, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "grpc.authproxy.test"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { direct.Close() })
	clients := map[string]testpb.TestServiceClient{
		"sidecar": grpcClient(t, p.addr("grpc")),
		"forward": testpb.NewTestServiceClient(e.forwardGRPC(t, p, grpcPort)),
	}
	call := func(c testpb.TestServiceClient, code http2.ErrCode) *status.Status {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, "x-reset-code", strconv.Itoa(int(code)))
		_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
		return status.Convert(err)
	}
	for _, code := range resetCodes {
		if code == http2.ErrCodeRefusedStream {
			continue
		}
		want := call(testpb.NewTestServiceClient(direct), code)
		for mode, c := range clients {
			if got := call(c, code); got.Code() != want.Code() || strings.Contains(got.Message(), "authproxy") {
				t.Errorf("%s, upstream reset %v: grpc-go got %v %q; direct it gets %v %q", mode, code, got.Code(), got.Message(), want.Code(), want.Message())
			}
		}
	}
	if logs := p.logs.String(); strings.Contains(logs, "upstream unavailable") || strings.Contains(logs, "level=WARN") {
		t.Errorf("an upstream's reset was logged as the proxy's failure:\n%.3000s", logs)
	}

	// An HTTP/1.1 client, whose request goes to the HTTP/2 upstream through
	// Go's client, gets the gateway's 502.
	for _, code := range []http2.ErrCode{http2.ErrCodeCancel, http2.ErrCodeInternal} {
		req, _ := http.NewRequest("POST", "http://"+p.addr("grpc")+"/grpc.testing.TestService/UnaryCall", strings.NewReader(""))
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("X-Reset-Code", strconv.Itoa(int(code)))
		resp, err := h1Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("HTTP/1.1, upstream reset %v: %d, want 502", code, resp.StatusCode)
		}
	}
}
