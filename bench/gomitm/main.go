// Command gomitm is the benchmark harness's reference for TLS interception
// with Go's standard library alone: the textbook intercepting proxy. It
// answers a CONNECT to a loopback address with 200, does the TLS handshake
// as the target with a leaf its own CA signs, and serves the connection
// with net/http's server (HTTP/1.1, or HTTP/2 for a client that offers h2)
// and httputil.ReverseProxy over http.Transport's keep-alive pool of
// HTTP/1.1 connections (a Transport with a TLS config of its own does not
// attempt HTTP/2), setting Authorization on every request. It has no
// routes, limits, stripping, metrics or logs: what it costs per request is
// what net/http and crypto/tls cost on the machine, so its rows show how
// far a proxy built on them can go. Its CA and leaves come from
// authproxy's package ca (set-up only: a leaf is minted once per host).
//
//	gomitm -listen 127.0.0.1:18193 -ca-out /tmp/gomitm-ca.pem -upstream-ca /tmp/upstream-ca.pem
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"time"

	"github.com/authproxy/authproxy/ca"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18193", "ADDR: the forward proxy's address")
	caOut := flag.String("ca-out", "", "FILE: where to write the PEM of the CA that signs the interception leaves (required)")
	upstreamCA := flag.String("upstream-ca", "", "FILE: PEM of the CA the upstreams' certificates chain to (required)")
	authorization := flag.String("authorization", "Bearer bench-token", "the Authorization set on every request")
	flag.Parse()
	log.SetFlags(0)
	if *caOut == "" || *upstreamCA == "" {
		log.Fatal("gomitm: -ca-out and -upstream-ca are required")
	}
	pemBytes, err := os.ReadFile(*upstreamCA)
	if err != nil {
		log.Fatalf("gomitm: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemBytes) {
		log.Fatalf("gomitm: no certificate in %s", *upstreamCA)
	}
	certPEM, keyPEM, err := ca.NewCAPEM("gomitm bench CA", time.Now(), 24*time.Hour)
	if err != nil {
		log.Fatalf("gomitm: %v", err)
	}
	m, err := ca.Parse(certPEM, keyPEM, ca.Options{})
	if err != nil {
		log.Fatalf("gomitm: %v", err)
	}
	if err := os.WriteFile(*caOut, certPEM, 0o644); err != nil {
		log.Fatalf("gomitm: %v", err)
	}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: roots},
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
	}
	p := &proxy{mint: m, conns: make(chan net.Conn)}
	p.rp = &httputil.ReverseProxy{
		Transport: tr,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "https"
			pr.Out.URL.Host = pr.In.Host
			pr.Out.Header.Set("Authorization", *authorization)
		},
	}
	// Intercepted connections are served by one http.Server through a
	// listener they are handed to.
	go func() {
		srv := &http.Server{Handler: p.rp, ReadHeaderTimeout: 10 * time.Second}
		log.Fatal(srv.Serve(chanListener(p.conns)))
	}()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("gomitm: %v", err)
	}
	log.Fatal(http.Serve(ln, p))
}

type proxy struct {
	mint  *ca.CA
	rp    *httputil.ReverseProxy
	conns chan net.Conn
}

// ServeHTTP answers CONNECT to loopback targets and refuses the rest.
func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host, _, err := net.SplitHostPort(r.Host)
	if ip := net.ParseIP(host); r.Method != http.MethodConnect || err != nil || ip == nil || !ip.IsLoopback() {
		http.Error(w, "only CONNECT to a loopback address", http.StatusForbidden)
		return
	}
	c, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	if _, err := c.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		c.Close()
		return
	}
	cert, err := p.mint.Leaf(host)
	if err != nil {
		c.Close()
		return
	}
	tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"h2", "http/1.1"}})
	if err := tc.Handshake(); err != nil {
		c.Close()
		return
	}
	p.conns <- tc
}

// chanListener accepts the connections sent on it.
type chanListener chan net.Conn

func (l chanListener) Accept() (net.Conn, error) { return <-l, nil }
func (l chanListener) Close() error              { return nil }
func (l chanListener) Addr() net.Addr            { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
