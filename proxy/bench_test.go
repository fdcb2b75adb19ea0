package proxy_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net/http"
	"runtime"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/sim"
	"github.com/authproxy/authproxy/tokencache"
)

// BenchmarkOAuth2RefreshAhead sends requests through the sidecar while
// tokens that live 2 s are replaced, each token request taking 150 ms. If
// any request waited for a token, max-ms would reach 150.
//
//	go test -run XXX -bench OAuth2RefreshAhead -benchtime 10s ./proxy/
func BenchmarkOAuth2RefreshAhead(b *testing.B) {
	e := newEnv(b)
	ts := &sim.TokenServer{ClientID: "c", ClientSecret: secretToken, ExpiresIn: 2}
	ts.SetDelay(150 * time.Millisecond)
	auth := e.httpsUpstream(ts)
	api := e.httpsUpstream(ts.RequireToken(&sim.Echo{}))
	e.injEnv = injectors.Env{Cache: tokencache.New(tokencache.Options{RefreshFraction: 0.5, MinMargin: 200 * time.Millisecond})}
	p := e.start(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.authproxy.test:%s"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1, auth.authproxy.test: 127.0.0.1}}
injectors:
  tok:
    kind: oauth2
    token_url: "https://auth.authproxy.test:%s/token"
    client_id: {value: c}
    client_secret: {value: %q}
routes:
  - {name: api, match: {path: /*}, injector: tok}
`, port(b, api.URL), port(b, auth.URL), secretToken), nil, nil)
	c := h1Client()
	url := "http://" + p.addr("app") + "/x"
	get := func() time.Duration {
		start := time.Now()
		if err := getOK(c, url); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	get() // the first, cold fetch is not the steady state
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		lat = append(lat, get())
	}
	b.StopTimer()
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
	b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
	b.ReportMetric(float64(ts.Calls()-1), "token-refreshes")
}

// BenchmarkSidecarStaticH1 sends keep-alive HTTP/1.1 requests through a
// sidecar with a static bearer to a TLS upstream (HTTP/1.1 upstream, by
// upstream_protocol: auto), in parallel: the hot path, for profiling
// (-cpuprofile, -memprofile). After the load it closes the client's
// connections and reports how many goroutines are left over the count
// before the load once the upstream connections have idled out; it fails
// if they do not return to it.
func BenchmarkSidecarStaticH1(b *testing.B) {
	e := newEnv(b)
	up := e.httpsUpstream(&sim.Echo{RequireHeader: "Authorization", RequireValue: "Bearer " + secretToken})
	p := e.start(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://127.0.0.1:%s"}
upstream: {ca_file: "{{UPSTREAM_CA}}", idle_conn_timeout: 500ms}
injectors:
  tok: {kind: static, headers: {Authorization: {value: %q, prefix: "Bearer "}}}
routes:
  - {name: api, match: {path: /*}, injector: tok}
`, port(b, up.URL), secretToken), nil, nil)
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64}
	c := &http.Client{Transport: tr}
	url := "http://" + p.addr("app") + "/x?size=64"
	// The baseline: the proxy serving, one request done, and its upstream
	// connection idled out (the listener's goroutines start as Run runs, not
	// all before Ready).
	if err := getOK(c, url); err != nil {
		b.Fatal(err)
	}
	tr.CloseIdleConnections()
	baseline := settledGoroutines()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := getOK(c, url); err != nil {
				b.Error(err) // not Fatal: this is not the benchmark's goroutine
				return
			}
		}
	})
	b.StopTimer()
	if b.Failed() {
		return
	}
	during := runtime.NumGoroutine()
	tr.CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	left := runtime.NumGoroutine() - baseline
	if left > 0 {
		buf := make([]byte, 1<<20)
		b.Fatalf("%d goroutines over the %d before the load remain 5 s after it:\n%s", left, baseline, buf[:runtime.Stack(buf, true)])
	}
	b.ReportMetric(float64(during-baseline), "goroutines-at-end-of-load")
	b.ReportMetric(float64(max(left, 0)), "goroutines-left")
}

// settledGoroutines returns the goroutine count once it has not changed for
// a second (at most 10 s).
func settledGoroutines() int {
	n, since, deadline := runtime.NumGoroutine(), time.Now(), time.Now().Add(10*time.Second)
	for time.Since(since) < time.Second && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		if m := runtime.NumGoroutine(); m != n {
			n, since = m, time.Now()
		}
	}
	return n
}

// BenchmarkOAuth2ManyScopes spreads requests over 1,000 mounts (one OAuth2
// scope each) with a token cache of 256 keys, and reports the cache's hit
// rate and token requests per proxied request.
//
//	go test -run '^$' -bench OAuth2ManyScopes -benchtime 20000x ./proxy/
func BenchmarkOAuth2ManyScopes(b *testing.B) {
	for _, dist := range []string{"uniform", "zipf"} {
		b.Run(dist, func(b *testing.B) {
			e := newEnv(b)
			ts := &sim.TokenServer{ClientID: "c", ClientSecret: secretToken}
			auth := e.httpsUpstream(ts)
			api := e.httpsUpstream(ts.RequireToken(&sim.Echo{}))
			e.injEnv = injectors.Env{Cache: tokencache.New(tokencache.Options{Size: 256})}
			p := e.start(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.authproxy.test:%s"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1, auth.authproxy.test: 127.0.0.1}}
injectors:
  tok:
    kind: oauth2
    token_url: "https://auth.authproxy.test:%s/token"
    client_id: {value: c}
    client_secret: {value: %q}
    scopes: ["mount:{mount}"]
routes:
  - {name: mounts, match: {path: "/mounts/{mount}/*"}, injector: tok}
`, port(b, api.URL), port(b, auth.URL), secretToken), nil, nil)
			c := h1Client()
			rng := rand.New(rand.NewPCG(1, 2))
			zipf := rand.NewZipf(rng, 1.1, 1, 999)
			pick := func() uint64 {
				if dist == "zipf" {
					return zipf.Uint64()
				}
				return rng.Uint64N(1000)
			}
			base := "http://" + p.addr("app") + "/mounts/"
			b.ResetTimer()
			for b.Loop() {
				if err := getOK(c, fmt.Sprintf("%sm%03d/state", base, pick())); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			calls := float64(ts.Calls())
			b.ReportMetric(calls/float64(b.N), "token-requests/op")
			b.ReportMetric(100*(1-calls/float64(b.N)), "hit-%")
			b.ReportMetric(float64(len(ts.Scopes())), "distinct-scopes")
		})
	}
}

// BenchmarkGRPCBidiRoundTrip measures per-message round trips on one
// long-lived bidirectional stream: direct to the TLS upstream, through the
// sidecar (h2c in, TLS out), and through the forward proxy (HTTPS_PROXY,
// intercepted); it reports p50 and p99 in µs.
//
//	go test -run '^$' -bench GRPCBidiRoundTrip -benchtime 20000x ./proxy/
func BenchmarkGRPCBidiRoundTrip(b *testing.B) {
	clients := grpcBenchClients(b)
	for _, mode := range grpcBenchModes {
		b.Run(mode, func(b *testing.B) {
			conn, ctx := clients(b, mode)
			stream, err := testpb.NewTestServiceClient(conn).FullDuplexCall(ctx)
			if err != nil {
				b.Fatal(err)
			}
			msg := &testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: make([]byte, 64)}}
			for i := 0; i < 100; i++ { // warm up
				stream.Send(msg)
				stream.Recv()
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for b.Loop() {
				start := time.Now()
				if err := stream.Send(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := stream.Recv(); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			stream.CloseSend()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// BenchmarkGRPCUnary makes unary calls from 32 goroutines over one client
// connection: time and allocations per call, for the client, the proxy and
// the upstream together.
func BenchmarkGRPCUnary(b *testing.B) {
	clients := grpcBenchClients(b)
	for _, mode := range grpcBenchModes {
		b.Run(mode, func(b *testing.B) {
			conn, ctx := clients(b, mode)
			client := testpb.NewTestServiceClient(conn)
			req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 64)}}
			if _, err := client.UnaryCall(ctx, req); err != nil { // connect
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetParallelism(16) // 32 goroutines on 2 cores
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := client.UnaryCall(ctx, req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// grpcBenchModes are the ways the gRPC benchmarks reach the upstream.
var grpcBenchModes = []string{"direct", "sidecar", "forward"}

// grpcBenchClients starts the upstream and a proxy with a sidecar
// listener and a forward listener, and returns what opens a client
// connection in a mode (closed at the end of the benchmark), with the
// context its calls use.
func grpcBenchClients(b *testing.B) func(b *testing.B, mode string) (*grpc.ClientConn, context.Context) {
	e := newEnv(b)
	_, grpcPort := e.grpcUpstream()
	p := e.start(grpcConfig(grpcPort), nil, nil)
	return func(b *testing.B, mode string) (*grpc.ClientConn, context.Context) {
		var conn *grpc.ClientConn
		var err error
		ctx := context.Background()
		switch mode {
		case "direct":
			conn, err = grpc.NewClient("127.0.0.1:"+grpcPort, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: e.pki.Pool})))
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+secretToken)
		case "sidecar":
			conn, err = grpc.NewClient(p.addr("grpc"), grpc.WithTransportCredentials(insecure.NewCredentials()))
		case "forward": // HTTPS_PROXY and interception, only the proxy's CA trusted
			useEnvProxy(b, p.addr("fwd"))
			conn, err = grpc.NewClient("grpc.authproxy.test:"+grpcPort, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: e.proxyCA})))
		}
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		return conn, ctx
	}
}
