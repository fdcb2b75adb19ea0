package transport

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/authproxy/authproxy/config"
)

// A client certificate the proxy presents to upstreams and issuers
// (tls_client: {cert_file, key_file}). The files are read at start, and
// again when their size or modification time changes (looked at once a
// second at most, when a connection is about to be used): cert-manager
// and SPIRE renew them in place. A renewed certificate gets a new Set,
// with pools of its own, so that every new request goes over a
// connection that presents it; the connections of the old one finish
// what they carry and are closed once idle (retired, not cut).

// retireAfter are the times after a renewal at which the old Set's idle
// connections are closed (those busy at the renewal finish first).
var retireAfter = []time.Duration{0, 5 * time.Second, 30 * time.Second, 2 * time.Minute}

// ClientCert is a client certificate and key read from files.
type ClientCert struct {
	conf config.TLSClientCert
	path string // its YAML path, for errors
	log  *slog.Logger
	now  func() time.Time

	mu     sync.Mutex
	cert   *tls.Certificate
	thumb  string // Thumbprint
	stamps *FileStamps
	gen    uint64
}

// LoadClientCert reads a client certificate. path is its YAML path
// (routes[0].tls_client), for errors.
func LoadClientCert(conf config.TLSClientCert, path string, log *slog.Logger) (*ClientCert, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &ClientCert{conf: conf, path: path, log: log, now: time.Now}
	cert, err := c.load()
	if err != nil {
		return nil, err
	}
	c.cert, c.stamps = cert, NewFileStamps(c.now(), conf.CertFile, conf.KeyFile)
	c.thumb = thumbprint(cert)
	return c, nil
}

func (c *ClientCert) load() (*tls.Certificate, error) {
	return LoadKeyPair(c.conf.CertFile, c.conf.KeyFile, c.path)
}

// Get returns the certificate as its files hold it now (a tls.Config's
// GetClientCertificate).
func (c *ClientCert) Get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	c.refresh()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cert, nil
}

// Thumbprint is the base64url SHA-256 of the certificate's DER (RFC
// 8705's x5t#S256), as its files hold it now.
func (c *ClientCert) Thumbprint() string {
	c.refresh()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.thumb
}

func thumbprint(cert *tls.Certificate) string {
	sum := sha256.Sum256(cert.Certificate[0])
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// refresh reads the files again if they changed (at most once per
// FileCheckEvery), and returns the certificate's generation: it grows with
// each renewal. Files that fail to load (being written) keep the last
// good certificate, with a warning.
func (c *ClientCert) refresh() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	keep, changed := c.stamps.Changed(c.now())
	if !changed {
		return c.gen
	}
	cert, err := c.load()
	if err != nil {
		c.log.Warn("client certificate: cannot load its changed files; presenting the previous one", "err", err)
		return c.gen
	}
	keep()
	c.cert, c.thumb = cert, thumbprint(cert)
	c.gen++
	c.log.Info("client certificate renewed: new connections present it, the old ones are retired once idle",
		"subject", cert.Leaf.Subject.String(), "not_after", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	return c.gen
}

// ClientSet is a Set whose TLS connections present a ClientCert, renewed
// as the certificate is.
type ClientSet struct {
	base *Set
	cert *ClientCert
	mu   sync.Mutex
	cur  atomic.Pointer[clientGen]
}

type clientGen struct {
	set *Set
	gen uint64
}

// WithClientCert returns a ClientSet of u's settings presenting cert.
func (u *Set) WithClientCert(cert *ClientCert) *ClientSet {
	cs := &ClientSet{base: u, cert: cert}
	cs.cur.Store(&clientGen{set: u.WithClientCertificate(cert.Get), gen: cert.refresh()})
	return cs
}

// CertFile is the file the certificate is read from.
func (c *ClientCert) CertFile() string { return c.conf.CertFile }

// Cert is the certificate it presents.
func (cs *ClientSet) Cert() *ClientCert { return cs.cert }

// Current returns the Set of the certificate as it is now, and its
// generation (which changes when the certificate is renewed).
func (cs *ClientSet) Current() (*Set, uint64) {
	gen := cs.cert.refresh()
	cur := cs.cur.Load()
	if cur.gen == gen {
		return cur.set, gen
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cur = cs.cur.Load(); cur.gen >= gen {
		return cur.set, cur.gen
	}
	next := &clientGen{set: cs.base.WithClientCertificate(cs.cert.Get), gen: gen}
	cs.cur.Store(next)
	old := cur.set
	for _, d := range retireAfter {
		time.AfterFunc(d, old.Close)
	}
	return next.set, gen
}

// RoundTrip sends r over the current Set's TLS transport (HTTP/2 by ALPN,
// else HTTP/1.1): the issuers' client.
func (cs *ClientSet) RoundTrip(r *http.Request) (*http.Response, error) {
	set, _ := cs.Current()
	return set.TLS.RoundTrip(r)
}

// String names the certificate for messages.
func (cs *ClientSet) String() string {
	return fmt.Sprintf("client certificate %s", cs.cert.conf.CertFile)
}
