package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/authproxy/authproxy/config"
)

// upstream holds the transports to upstream servers. Neither ever reads
// HTTP_PROXY/HTTPS_PROXY (Proxy is nil): the proxy must not loop through
// itself or leak credentials to another proxy.
type upstream struct {
	tls  *http.Transport // https (HTTP/2 by ALPN, else HTTP/1.1) and plain http/1.1
	h2c  *http.Transport // cleartext HTTP/2 with prior knowledge
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

func newUpstream(cfg config.Upstream) (*upstream, error) {
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
	dialer := &net.Dialer{Timeout: cfg.DialTimeout.D(10 * time.Second), KeepAlive: 30 * time.Second}
	resolve := cfg.Resolve
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
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
			Proxy:                 nil,
			DialContext:           dial,
			TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout:   cfg.TLSHandshakeTimeout.D(10 * time.Second),
			ResponseHeaderTimeout: time.Duration(cfg.ResponseHeaderTimeout),
			IdleConnTimeout:       cfg.IdleConnTimeout.D(90 * time.Second),
			MaxIdleConnsPerHost:   perHost,
			// Bodies pass through as they are: no Accept-Encoding is added
			// and nothing is decompressed.
			DisableCompression: true,
			Protocols:          new(http.Protocols),
		}
	}
	u := &upstream{tls: base(), h2c: base(), dial: dial}
	u.tls.Protocols.SetHTTP1(true)
	u.tls.Protocols.SetHTTP2(true)
	u.h2c.Protocols.SetUnencryptedHTTP2(true)
	return u, nil
}

func trimBrackets(s string) string {
	if len(s) > 1 && s[0] == '[' && s[len(s)-1] == ']' {
		return s[1 : len(s)-1]
	}
	return s
}

func (u *upstream) close() {
	u.tls.CloseIdleConnections()
	u.h2c.CloseIdleConnections()
}
