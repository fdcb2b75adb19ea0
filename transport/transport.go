// Package transport builds the proxy's connections to upstream servers and
// token endpoints: system roots plus an optional bundle, pinned addresses,
// HTTP/2 by ALPN, and never a proxy from the environment.
package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"time"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/internal/netwait"
)

// Set holds the transports to upstream servers. None ever reads
// HTTP_PROXY/HTTPS_PROXY (Proxy is nil): the proxy must not loop through
// itself or leak credentials to another proxy. A Set is safe for
// concurrent use.
type Set struct {
	// TLS carries https (HTTP/2 by ALPN, else HTTP/1.1) and plain HTTP/1.1.
	TLS *http.Transport
	// H1 carries https and plain HTTP over HTTP/1.1 only: a keep-alive pool
	// of up to max_idle_conns_per_host connections per upstream, one request
	// per connection at a time.
	H1 interface {
		http.RoundTripper
		CloseIdleConnections()
	}
	// H2C carries cleartext HTTP/2 with prior knowledge.
	H2C *http.Transport
	// Dial dials with the configured timeout and resolve pins.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	resolve map[string]string // upstream.resolve
	// build makes a Set of the same settings whose TLS connections present
	// the certificate get returns (nil: none).
	build func(get func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) *Set
}

// WithClientCertificate returns a Set of u's settings, with pools of its
// own, whose TLS connections present the certificate get returns when a
// server asks for one.
func (u *Set) WithClientCertificate(get func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) *Set {
	return u.build(get)
}

type dialPinKey struct{}

type dialPin struct{ hostport, addr string }

// WithDialAddr returns a context under which a new connection to hostport
// (host:port as a request names it) dials addr instead: an address the
// caller resolved and checked, so that the one checked is the one dialled
// (no second lookup that DNS could answer differently).
func WithDialAddr(ctx context.Context, hostport, addr string) context.Context {
	return context.WithValue(ctx, dialPinKey{}, dialPin{hostport, addr})
}

// Lookup resolves host as a dial would: an upstream.resolve pin, else DNS.
func (u *Set) Lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	if to, ok := u.resolve[host]; ok {
		host = trimBrackets(to)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip}, nil
	}
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// New builds a Set from the upstream config. It reads ca_file.
func New(cfg config.Upstream) (*Set, error) {
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, config.Errorf("upstream.ca_file", "%v", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, config.Errorf("upstream.ca_file", "%s holds no PEM certificate", cfg.CAFile)
		}
	}
	return build(cfg, roots, nil), nil
}

// build makes the Set of cfg, verifying servers against roots, presenting
// the client certificate getCert returns (nil: none).
func build(cfg config.Upstream, roots *x509.CertPool, getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) *Set {
	dialer := &net.Dialer{Timeout: cfg.DialTimeout.D(10 * time.Second), KeepAlive: 30 * time.Second}
	resolve := cfg.Resolve
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if pin, ok := ctx.Value(dialPinKey{}).(dialPin); ok && pin.hostport == addr {
			return dialer.DialContext(ctx, network, pin.addr)
		}
		if host, port, err := net.SplitHostPort(addr); err == nil {
			if to, ok := resolve[host]; ok {
				addr = net.JoinHostPort(trimBrackets(to), port)
			}
		}
		return dialer.DialContext(ctx, network, addr)
	}
	perHost := cfg.MaxIdleConnsPerHost
	if perHost == 0 {
		perHost = 256
	}
	base := func() *http.Transport {
		return &http.Transport{
			Proxy:                  nil,
			DialContext:            dial,
			TLSClientConfig:        &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, GetClientCertificate: getCert},
			TLSHandshakeTimeout:    cfg.TLSHandshakeTimeout.D(10 * time.Second),
			ResponseHeaderTimeout:  time.Duration(cfg.ResponseHeaderTimeout),
			IdleConnTimeout:        cfg.IdleConnTimeout.D(90 * time.Second),
			MaxIdleConnsPerHost:    perHost,
			MaxResponseHeaderBytes: MaxResponseHeaderBytes,
			// Bodies pass through as they are: no Accept-Encoding is added
			// and nothing is decompressed.
			DisableCompression: true,
			Protocols:          new(http.Protocols),
		}
	}
	h1 := base()
	h1.Protocols.SetHTTP1(true)
	// The HTTP/1.1 pool's connections read and write their descriptor
	// directly (netwait), as the relay's do.
	h1.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return netwait.Wrap(c, nil), nil
	}
	u := &Set{TLS: base(), H1: &h1Fast{fallback: h1}, H2C: base(), Dial: dial, resolve: resolve}
	u.TLS.Protocols.SetHTTP1(true)
	u.TLS.Protocols.SetHTTP2(true)
	u.H2C.Protocols.SetUnencryptedHTTP2(true)
	u.build = func(get func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) *Set {
		return build(cfg, roots, get)
	}
	return u
}

// ErrNoHTTP2 is DialH2's error for an upstream that did not negotiate h2.
var ErrNoHTTP2 = errors.New("the upstream did not negotiate HTTP/2")

// DialH2 opens a connection for HTTP/2 to addr (host:port): for https a
// TLS connection that negotiated h2 by ALPN (http/1.1 is offered too, so
// that a server without h2 says so rather than failing the handshake),
// verified against the roots; for http a plain one (h2c with prior
// knowledge).
func (u *Set) DialH2(ctx context.Context, scheme, addr string) (net.Conn, error) {
	raw, err := u.Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	// The relay reads it: netwait lets it flush a batch of frames when
	// the socket is empty rather than after each TLS record.
	nc := netwait.Wrap(raw, nil)
	if scheme == "http" {
		return nc, nil
	}
	host, _, _ := net.SplitHostPort(addr)
	tc, err := clientTLS(ctx, nc, u.TLS, host, "h2", "http/1.1")
	if err != nil {
		return nil, err
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		_ = tc.Close()
		return nil, fmt.Errorf("%w: %s (ALPN %q)", ErrNoHTTP2, addr, p)
	}
	return tc, nil
}

// clientTLS makes conn a TLS client of serverName with t's TLS settings
// (roots, minimum version) and handshake timeout, offering protos by ALPN.
// conn is closed if the handshake fails.
func clientTLS(ctx context.Context, conn net.Conn, t *http.Transport, serverName string, protos ...string) (*tls.Conn, error) {
	cfg := t.TLSClientConfig.Clone()
	cfg.ServerName, cfg.NextProtos = serverName, protos
	tc := tls.Client(conn, cfg)
	hctx, cancel := context.WithTimeout(ctx, t.TLSHandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return tc, nil
}

func trimBrackets(s string) string {
	if len(s) > 1 && s[0] == '[' && s[len(s)-1] == ']' {
		return s[1 : len(s)-1]
	}
	return s
}

// Client returns an HTTP client over the TLS transport (for token
// endpoints), with the given overall timeout.
func (u *Set) Client(timeout time.Duration) *http.Client {
	return &http.Client{Transport: u.TLS, Timeout: timeout}
}

// Close is for shutdown, once no request is in flight: it closes the idle
// connections of every HTTP transport.
func (u *Set) Close() {
	u.TLS.CloseIdleConnections()
	u.H1.CloseIdleConnections()
	u.H2C.CloseIdleConnections()
}
