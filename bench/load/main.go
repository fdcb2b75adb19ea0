// Command load is the benchmark harness's own load generator, for the loads
// wrk, h2load and ghz cannot drive: HTTPS through a forward proxy with
// CONNECT (many requests over a few tunnels), and gRPC unary calls through
// HTTPS_PROXY. It runs for -duration, then prints one JSON line:
//
//	{"requests":…,"errors":…,"rps":…,"p50_ms":…,"p99_ms":…,"first_error":"…"}
//
// Every answer is checked (HTTP 200, or gRPC OK with the echoed payload).
//
//	load -mode https -url https://127.0.0.1:18443/ -proxy http://127.0.0.1:18120 -ca a.pem,b.pem -conns 8
//	HTTPS_PROXY=http://127.0.0.1:18120 load -mode grpc -target upstream.bench.test:18444 -ca up.pem,proxy.pem
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	insecureCreds "google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/authproxy/authproxy/openobd/pb"
)

type report struct {
	Requests   int     `json:"requests"`
	Errors     int     `json:"errors"`
	RPS        float64 `json:"rps"`
	P50        float64 `json:"p50_ms"`
	P99        float64 `json:"p99_ms"`
	FirstError string  `json:"first_error,omitempty"`
}

func main() {
	mode := flag.String("mode", "https", "https (net/http, optionally through -proxy), grpc (unary calls), grpc-bidi (round trips on one long-lived bidi stream per worker) or openobd (unary session calls in one openOBD session); grpc-go takes its proxy from HTTPS_PROXY")
	target := flag.String("url", "", "https: the URL to GET")
	grpcTarget := flag.String("target", "", "grpc: host:port of grpc.testing.TestService")
	proxy := flag.String("proxy", "", "https: forward proxy URL (CONNECT); empty = direct")
	cas := flag.String("ca", "", "comma-separated PEM files to trust")
	conns := flag.Int("conns", 8, "connections (https: one request at a time on each; grpc: client connections)")
	concurrency := flag.Int("c", 0, "requests in flight (default: -conns)")
	h2 := flag.Bool("h2", false, "https: HTTP/2 (streams share the -conns connections)")
	auth := flag.String("authorization", "", "Authorization to send (direct runs)")
	insecure := flag.Bool("insecure", false, "grpc: cleartext HTTP/2 (h2c), as to a sidecar")
	duration := flag.Duration("duration", 5*time.Second, "length of the load")
	obdSecret := flag.String("obd-secret", "", "openobd: the client secret (client bench, cluster 001), for a direct run that gets its own controller and session tokens; without it the proxy adds them")
	flag.Parse()
	if *concurrency == 0 {
		*concurrency = *conns
	}
	roots := x509.NewCertPool()
	for _, f := range strings.Split(*cas, ",") {
		if f == "" {
			continue
		}
		pem, err := os.ReadFile(f)
		if err != nil {
			log.Fatal(err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			log.Fatalf("%s: no PEM certificate", f)
		}
	}
	tlsCfg := &tls.Config{RootCAs: roots}

	var call func(ctx context.Context) error
	switch *mode {
	case "https":
		call = httpsCaller(*target, *proxy, *auth, tlsCfg, *conns, *h2)
	case "openobd":
		creds := credentials.NewTLS(tlsCfg)
		if *insecure {
			creds = insecureCreds.NewCredentials()
		}
		call = openobdCaller(*grpcTarget, creds, *conns, *obdSecret)
	case "grpc", "grpc-bidi":
		creds := credentials.NewTLS(tlsCfg)
		if *insecure {
			creds = insecureCreds.NewCredentials()
		}
		if *mode == "grpc" {
			call = grpcCaller(*grpcTarget, *auth, creds, *conns)
		} else {
			call = bidiCaller(*grpcTarget, *auth, creds, *concurrency)
		}
	default:
		log.Fatalf("unknown -mode %q", *mode)
	}
	if err := call(context.Background()); err != nil { // warm-up: connections, tokens
		log.Fatalf("first request: %v", err)
	}

	// Workers start no call after the deadline; calls in flight then finish
	// and count, so no call is cut off (a cut-off call would look like an
	// error, and a deadline sent upstream would end calls early).
	deadline := time.Now().Add(*duration)
	var (
		mu    sync.Mutex
		lat   []time.Duration
		rep   report
		wg    sync.WaitGroup
		start = time.Now()
	)
	for i := 0; i < *concurrency; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			errs, first := 0, ""
			for time.Now().Before(deadline) {
				t := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := call(ctx)
				cancel()
				if err != nil {
					if errs++; first == "" {
						first = err.Error()
					}
					continue
				}
				mine = append(mine, time.Since(t))
			}
			mu.Lock()
			lat = append(lat, mine...)
			rep.Errors += errs
			if rep.FirstError == "" {
				rep.FirstError = first
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lat)
	rep.Requests = len(lat)
	rep.RPS = float64(len(lat)) / elapsed.Seconds()
	if len(lat) > 0 {
		ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
		rep.P50, rep.P99 = ms(lat[len(lat)/2]), ms(lat[len(lat)*99/100])
	}
	_ = json.NewEncoder(os.Stdout).Encode(rep)
}

func httpsCaller(target, proxy, auth string, tlsCfg *tls.Config, conns int, h2 bool) func(context.Context) error {
	tr := &http.Transport{
		TLSClientConfig:     tlsCfg,
		MaxConnsPerHost:     conns,
		MaxIdleConnsPerHost: conns,
		DisableCompression:  true,
		Protocols:           new(http.Protocols),
	}
	if proxy != "" {
		u, err := url.Parse(proxy)
		if err != nil {
			log.Fatal(err)
		}
		tr.Proxy = http.ProxyURL(u)
	}
	if h2 {
		tr.Protocols.SetHTTP2(true)
	} else {
		tr.Protocols.SetHTTP1(true)
	}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			return err
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return err
	}
}

func grpcCaller(target, auth string, creds credentials.TransportCredentials, conns int) func(context.Context) error {
	clients := make([]testpb.TestServiceClient, conns)
	for i := range clients {
		// Each ClientConn has a connection of its own.
		cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
		if err != nil {
			log.Fatal(err)
		}
		clients[i] = testpb.NewTestServiceClient(cc)
	}
	payload := []byte("hello")
	pick := roundRobin(clients)
	return func(ctx context.Context) error {
		c := pick()
		if auth != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", auth)
		}
		resp, err := c.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: payload}})
		if err != nil {
			return err
		}
		if !bytes.Equal(resp.GetPayload().GetBody(), payload) {
			return fmt.Errorf("echoed payload %q, want %q", resp.GetPayload().GetBody(), payload)
		}
		return nil
	}
}

// bidiCaller opens one FullDuplexCall stream per worker; each call is one
// round trip on the worker's stream: a 64-byte message out, its echo back.
func bidiCaller(target, auth string, creds credentials.TransportCredentials, streams int) func(context.Context) error {
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if auth != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", auth)
	}
	free := make(chan testpb.TestService_FullDuplexCallClient, streams+1)
	for i := 0; i < streams+1; i++ { // +1: the warm-up call runs alone
		s, err := testpb.NewTestServiceClient(cc).FullDuplexCall(ctx)
		if err != nil {
			log.Fatal(err)
		}
		free <- s
	}
	msg := &testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: make([]byte, 64)}}
	return func(context.Context) error {
		s := <-free
		defer func() { free <- s }()
		if err := s.Send(msg); err != nil {
			return err
		}
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		if len(resp.GetPayload().GetBody()) != 64 {
			return fmt.Errorf("echo of %d bytes, want 64", len(resp.GetPayload().GetBody()))
		}
		return nil
	}
}

// openobdCaller starts one openOBD session at target and returns a caller
// of session/assertAuthenticationPossible in it. With secret (a direct
// run) it gets the controller token, starts the session and spends its
// authentication token itself, and sends the session token it got (the
// simulator keeps superseded tokens valid, so it need not follow the token
// stream); without, it sends no credential and names the session with
// x-openobd-session-id, and the proxy does the rest.
func openobdCaller(target string, creds credentials.TransportCredentials, conns int, secret string) func(context.Context) error {
	clients := make([]pb.SessionClient, conns)
	var first *grpc.ClientConn
	for i := range clients {
		cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
		if err != nil {
			log.Fatal(err)
		}
		if first == nil {
			first = cc
		}
		clients[i] = pb.NewSessionClient(cc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctl := pb.NewSessionControllerClient(first)
	ctlCtx := ctx
	if secret != "" {
		tok, err := ctl.GetSessionControllerToken(ctx, &pb.Authenticate{ClientId: "bench", ClientSecret: secret, ClusterId: "001"})
		if err != nil {
			log.Fatalf("controller token: %v", err)
		}
		ctlCtx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok.Value)
	}
	info, err := ctl.StartSessionOnTicket(ctlCtx, &pb.TicketId{Value: "bench"})
	if err != nil {
		log.Fatalf("starting a session: %v", err)
	}
	md := metadata.Pairs("x-openobd-session-id", info.Id)
	if secret != "" {
		auth := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+info.AuthenticationToken)
		tok, err := clients[0].Authenticate(auth, &pb.EmptyMessage{})
		if err != nil {
			log.Fatalf("authenticate: %v", err)
		}
		md = metadata.Pairs("authorization", "Bearer "+tok.Value)
	}
	pick := roundRobin(clients)
	return func(ctx context.Context) error {
		c := pick()
		_, err := c.AssertAuthenticationPossible(metadata.NewOutgoingContext(ctx, md), &pb.EmptyMessage{})
		return err
	}
}

// roundRobin hands out items in turn, safely from many goroutines.
func roundRobin[T any](items []T) func() T {
	var (
		mu   sync.Mutex
		next int
	)
	return func() T {
		mu.Lock()
		defer mu.Unlock()
		next++
		return items[(next-1)%len(items)]
	}
}
