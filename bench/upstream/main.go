// Command upstream is the benchmark harness's upstream: a small fixed
// response over plain HTTP/1.1 (-plain), over TLS with HTTP/2 and HTTP/1.1
// (-tls), an OAuth2 token endpoint at /token on the TLS port, and a TLS
// gRPC echo service with reflection (-grpc), the ODIL simulator (-odil,
// with a session for direct clients written to -odil-session) and the
// openOBD simulator (-openobd: controller and session endpoint on one port,
// session tokens rotated every second). It writes its CA certificate to -ca
// so proxies can trust it. It requires the credential the proxies add (401
// otherwise), so a contender that forgets to add it cannot look fast.
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/authproxy/authproxy/sim"
)

func main() {
	plain := flag.String("plain", "127.0.0.1:18080", "plain HTTP/1.1 address")
	tlsAddr := flag.String("tls", "127.0.0.1:18443", "TLS (h2, http/1.1) address")
	caOut := flag.String("ca", "upstream-ca.pem", "where to write the CA certificate")
	want := flag.String("want", "Bearer bench-token", "the Authorization value required")
	grpcAddr := flag.String("grpc", "127.0.0.1:18444", "TLS gRPC address (grpc.testing.TestService, with reflection)")
	odilAddr := flag.String("odil", "", "TLS address of the ODIL simulator (key odil-key, API code TR:SB:bench, user bench)")
	odilSession := flag.String("odil-session", "", "where to write an ODIL session for direct clients")
	obdAddr := flag.String("openobd", "", "TLS gRPC address of the openOBD simulator (client bench, cluster 001; its endpoint is upstream.bench.test:PORT)")
	flag.Parse()

	dir, err := os.MkdirTemp("", "bench-upstream")
	if err != nil {
		log.Fatal(err)
	}
	pki, err := sim.NewPKI(dir)
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*caOut, pki.CAPEM, 0o644); err != nil {
		log.Fatal(err)
	}
	tlsCfg, err := pki.ServerTLS("upstream.bench.test", "127.0.0.1", "localhost")
	if err != nil {
		log.Fatal(err)
	}
	body := []byte("ok: 64 bytes of response body for the benchmark upstream......\n")
	token := &sim.TokenServer{ClientID: "bench", ClientSecret: "bench-secret", ExpiresIn: 3600}
	mux := http.NewServeMux()
	mux.Handle("/token", token)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		tok, isBearer := cutBearer(auth)
		if auth != *want && !(isBearer && token.Valid(tok)) {
			http.Error(w, "missing credential", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})
	p := &http.Server{Addr: *plain, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	s := &http.Server{Addr: *tlsAddr, Handler: mux, TLSConfig: tlsCfg, ReadHeaderTimeout: 10 * time.Second}
	go func() { log.Fatal(p.ListenAndServe()) }()
	gs := (&sim.GRPCEcho{Authorization: *want}).NewServer(tlsCfg)
	gl, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		log.Fatal(err)
	}
	go func() { log.Fatal(gs.Serve(gl)) }()
	if *odilAddr != "" {
		odil := &sim.ODIL{KeyName: "odil-key", Key: "bench-odil-key", APICode: "TR:SB:bench", Username: "bench", Password: "bench-password"}
		if *odilSession != "" {
			if err := os.WriteFile(*odilSession, []byte(odil.NewSession()), 0o600); err != nil {
				log.Fatal(err)
			}
		}
		osrv := &http.Server{Addr: *odilAddr, Handler: odil, TLSConfig: tlsCfg, ReadHeaderTimeout: 10 * time.Second}
		go func() { log.Fatal(osrv.ListenAndServeTLS("", "")) }()
	}
	if *obdAddr != "" {
		_, port, _ := net.SplitHostPort(*obdAddr)
		obd := &sim.OpenOBD{ClientID: "bench", ClientSecret: "bench-secret", ClusterID: "001",
			RotateEvery: time.Second, Grace: time.Hour, Endpoints: []string{"upstream.bench.test:" + port}}
		obs := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
		obd.Register(obs)
		ol, err := net.Listen("tcp", *obdAddr)
		if err != nil {
			log.Fatal(err)
		}
		go func() { log.Fatal(obs.Serve(ol)) }()
	}
	log.Printf("upstream: plain %s, tls %s", *plain, *tlsAddr)
	log.Fatal(s.ListenAndServeTLS("", ""))
}

func cutBearer(s string) (string, bool) {
	const p = "Bearer "
	if len(s) > len(p) && s[:len(p)] == p {
		return s[len(p):], true
	}
	return "", false
}
