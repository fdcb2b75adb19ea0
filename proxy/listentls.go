package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/internal/netwait"
	"github.com/authproxy/authproxy/transport"
)

// Listeners with tls: the proxy speaks TLS to its clients (an HTTPS proxy,
// or a TLS sidecar). With client_ca_file every client must present a
// certificate that chains to it and names a tls client (by a URI or DNS
// SAN): the handshake refuses any other, before a byte of a request is
// read. Which client a certificate names is looked up again at each
// request, against the rules in force (a reload that removes the client
// cuts the connection's requests off). The files are read again when
// their size or modification time changes, at the next handshake: a
// certificate that cert-manager or SPIRE renews is served without a
// restart, and connections made before keep theirs.

// listenerTLS is a TLS listener's certificate and client CA.
type listenerTLS struct {
	conf    config.ListenerTLS
	path    string              // listeners[i].tls, for errors
	alpn    []string            // what the listener's engines speak
	clients func() *clientRules // the rules in force
	log     *slog.Logger        // handshake failures, sampled
	sampled *sampledLog
	failed  func()           // counts a failed handshake (nil: none)
	now     func() time.Time // time.Now (tests)
	mu      sync.Mutex       // guards what follows
	cfg     *tls.Config      // built from the files as stamped
	stamps  *transport.FileStamps
}

func newListenerTLS(conf config.ListenerTLS, path string, alpn []string, clients func() *clientRules, log *slog.Logger) (*listenerTLS, error) {
	t := &listenerTLS{conf: conf, path: path, alpn: alpn, clients: clients, log: log, sampled: newSampledLog(), now: time.Now}
	cfg, err := t.load()
	if err != nil {
		return nil, err
	}
	t.cfg, t.stamps = cfg, transport.NewFileStamps(t.now(), conf.CertFile, conf.KeyFile, conf.ClientCAFile)
	return t, nil
}

// load reads the files into a server config.
func (t *listenerTLS) load() (*tls.Config, error) {
	cert, err := transport.LoadKeyPair(t.conf.CertFile, t.conf.KeyFile, t.path)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{*cert},
		NextProtos:   t.alpn,
		MinVersion:   tls.VersionTLS12,
	}
	if t.conf.ClientCAFile != "" {
		pem, err := os.ReadFile(t.conf.ClientCAFile)
		if err != nil {
			return nil, config.Errorf(config.Join(t.path, "client_ca_file"), "%v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, config.Errorf(config.Join(t.path, "client_ca_file"), "%s holds no PEM certificate", t.conf.ClientCAFile)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
		cfg.VerifyConnection = t.verifyClient
	}
	return cfg, nil
}

// verifyClient refuses a verified certificate that names no tls client.
func (t *listenerTLS) verifyClient(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("no client certificate")
	}
	names := certNames(cs.PeerCertificates[0])
	if t.clients().tlsClient(names) == "" {
		return fmt.Errorf("the client certificate (SANs %v) names no client of the proxy", names)
	}
	return nil
}

// config is the server config for the next handshake: the files' again
// if they changed (a file being rewritten, which fails to load, keeps the
// last good config and logs why).
func (t *listenerTLS) config(*tls.ClientHelloInfo) (*tls.Config, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if keep, changed := t.stamps.Changed(t.now()); changed {
		cfg, err := t.load()
		if err != nil {
			t.log.Warn("TLS listener: cannot load its changed files; serving the previous certificate", "err", err)
			return t.cfg, nil
		}
		keep()
		t.cfg = cfg
		t.log.Info("TLS listener: certificate files reloaded")
	}
	return t.cfg, nil
}

// certNames are the identities a client certificate gives: "uri:" and
// "dns:" followed by each SAN.
func certNames(c *x509.Certificate) []string {
	var out []string
	for _, u := range c.URIs {
		out = append(out, "uri:"+u.String())
	}
	for _, d := range c.DNSNames {
		out = append(out, "dns:"+d)
	}
	return out
}

// tlsListener hands out the TLS side of each accepted connection; the
// handshake runs at the connection's first read, under the deadline its
// server set for the request's first bytes.
type tlsListener struct {
	net.Listener
	t *listenerTLS
}

func (l *tlsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &peerConn{Conn: tls.Server(c, &tls.Config{GetConfigForClient: l.t.config}), t: l.t}, nil
}

// peerConn is a client's TLS connection, with the identities of its
// certificate once the handshake is done.
type peerConn struct {
	*tls.Conn
	t     *listenerTLS
	once  sync.Once
	err   error
	names []string // certNames of the client's certificate
}

func (c *peerConn) handshake() error {
	c.once.Do(func() {
		if c.err = c.Conn.Handshake(); c.err != nil {
			c.t.sampled.log(c.t.log, slog.LevelWarn, "TLS listener: a client's handshake failed",
				"client", c.RemoteAddr().String(), "err", c.err)
			if c.t.failed != nil {
				c.t.failed()
			}
			return
		}
		if cs := c.ConnectionState(); len(cs.PeerCertificates) > 0 {
			c.names = certNames(cs.PeerCertificates[0])
		}
	})
	return c.err
}

func (c *peerConn) Read(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *peerConn) Write(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// peerKey is the context key of a request's *peerConn.
type peerKey struct{}

// peerOf finds the client's TLS connection under c (nil: plain TCP).
func peerOf(c net.Conn) *peerConn {
	if wc, ok := c.(*netwait.Conn); ok {
		c = wc.Conn
	}
	pc, _ := c.(*peerConn)
	return pc
}

// withPeer is an http.Server's ConnContext: it keeps the connection's
// TLS side for the requests' caller checks.
func withPeer(ctx context.Context, c net.Conn) context.Context {
	if pc := peerOf(c); pc != nil {
		return context.WithValue(ctx, peerKey{}, pc)
	}
	return ctx
}

// peerNames are the certificate identities of the connection a request
// came on (none on plain TCP or without a certificate).
func peerNames(ctx context.Context) []string {
	if pc, ok := ctx.Value(peerKey{}).(*peerConn); ok && pc.handshake() == nil {
		return pc.names
	}
	return nil
}
