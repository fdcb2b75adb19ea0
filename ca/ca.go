// Package ca is authproxy's local certificate authority: it creates and
// loads the CA that clients trust, and mints the leaf certificates the
// forward proxy presents on intercepted connections.
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"
)

// CA is a loaded certificate authority. It is safe for concurrent use.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer

	validity time.Duration
	now      func() time.Time
	leaves   *lru.Cache[string, *tls.Certificate]
	minting  singleflight.Group
}

// Create generates a new ECDSA P-256 CA valid for ten years and writes it
// to certFile (mode 0644) and keyFile (mode 0600), creating missing
// directories (mode 0755: the certificate is for clients to read; the key
// file's own mode keeps it private). It refuses to overwrite existing
// files unless force is set.
func Create(certFile, keyFile, commonName string, force bool) error {
	if !force {
		for _, f := range []string{certFile, keyFile} {
			if _, err := os.Stat(f); err == nil {
				return fmt.Errorf("ca: %s already exists (use -force to replace it)", f)
			}
		}
	}
	certPEM, keyPEM, err := NewCAPEM(commonName, time.Now(), 10*365*24*time.Hour)
	if err != nil {
		return err
	}
	for _, f := range []string{keyFile, certFile} {
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			return fmt.Errorf("ca: %w", err)
		}
	}
	if err := writeFile(keyFile, keyPEM, 0o600); err != nil {
		return err
	}
	return writeFile(certFile, certPEM, 0o644)
}

// CanCreate reports whether Create could write file: the nearest of its
// directories that exists must take a new file (tried with a temporary
// one, removed at once). Its error says which directory refused.
func CanCreate(file string) error {
	dir := filepath.Dir(file)
	for {
		st, err := os.Stat(dir)
		if err == nil {
			if !st.IsDir() {
				return fmt.Errorf("%s is not a directory", dir)
			}
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	f, err := os.CreateTemp(dir, ".authproxy-check-*")
	if err != nil {
		return fmt.Errorf("cannot create files in %s (%v)", dir, errors.Unwrap(err))
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// NewCAPEM generates a CA certificate and key, PEM-encoded.
func NewCAPEM(commonName string, now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: generate key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"authproxy"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: create certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

func writeFile(name string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	if err := f.Chmod(mode); err != nil { // O_CREATE's mode is subject to umask and ignored for existing files
		f.Close()
		return fmt.Errorf("ca: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("ca: write %s: %w", name, err)
	}
	return f.Close()
}

// Options tune leaf minting. Zero values take the defaults.
type Options struct {
	LeafCacheSize int           // default 1024
	LeafValidity  time.Duration // default 24h
	Now           func() time.Time
}

// FileError is a problem with one of the CA's two files: File is the
// config key that names it ("cert_file" or "key_file").
type FileError struct {
	File string
	Err  error
}

func (e *FileError) Error() string { return e.Err.Error() }
func (e *FileError) Unwrap() error { return e.Err }

func certErr(format string, a ...any) error {
	return &FileError{File: "cert_file", Err: fmt.Errorf(format, a...)}
}

func keyErr(format string, a ...any) error {
	return &FileError{File: "key_file", Err: fmt.Errorf(format, a...)}
}

// Load reads a CA certificate and key from PEM files. Its errors are
// *FileError, naming the file at fault.
func Load(certFile, keyFile string, opts Options) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, certErr("%w", err)
	}
	f, err := os.Open(keyFile)
	if err != nil {
		return nil, keyErr("%w", err)
	}
	defer f.Close()
	// The mode of the file read, not of a name that could be swapped.
	st, err := f.Stat()
	if err != nil {
		return nil, keyErr("%w", err)
	}
	if err := keyModeOK(st); err != nil {
		return nil, keyErr("%v: whoever reads it can intercept every client that trusts the CA; chmod 600 %s (on Kubernetes, mount its Secret with fsGroup set to the proxy's group and defaultMode 0440 or 0400)", err, keyFile)
	}
	keyPEM, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, keyErr("%w", err)
	}
	return Parse(certPEM, keyPEM, opts)
}

// pemBlock returns the first PEM block of data whose type is accepted, and
// the types of the blocks it passed over.
func pemBlock(data []byte, accept func(string) bool) (*pem.Block, []string) {
	var seen []string
	for {
		b, rest := pem.Decode(data)
		if b == nil {
			return nil, seen
		}
		if accept(b.Type) {
			return b, seen
		}
		seen = append(seen, b.Type)
		data = rest
	}
}

// Parse builds a CA from PEM data. It refuses a certificate outside its
// validity period: every leaf it signed would be refused by clients. Its
// errors are *FileError, naming the file at fault; none quotes the files'
// contents.
func Parse(certPEM, keyPEM []byte, opts Options) (*CA, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	first, seen := pemBlock(certPEM, func(t string) bool { return t == "CERTIFICATE" })
	if first == nil {
		if len(seen) > 0 {
			return nil, certErr("holds no PEM CERTIFICATE block (found %v: is it the key?)", seen)
		}
		return nil, certErr("holds no PEM CERTIFICATE block")
	}
	cert, err := x509.ParseCertificate(first.Bytes)
	if err != nil {
		return nil, certErr("its CERTIFICATE block does not parse as X.509")
	}
	if !cert.IsCA {
		return nil, certErr("the certificate is not a CA certificate (basic constraints CA:FALSE): give the CA's certificate, not a server's")
	}
	if now := opts.Now(); now.After(cert.NotAfter) {
		return nil, certErr("the CA certificate expired on %s (%d days ago), so every intercepted client would refuse the proxy; make a new CA (authproxy ca init, or remove both files when ca.generate is set) and have the clients trust it",
			cert.NotAfter.UTC().Format(time.DateOnly), int(now.Sub(cert.NotAfter).Hours()/24))
	} else if now.Before(cert.NotBefore) {
		return nil, certErr("the CA certificate is not valid before %s: check this machine's clock", cert.NotBefore.UTC().Format(time.RFC3339))
	}
	keyBlock, seen := pemBlock(keyPEM, func(t string) bool { return t == "PRIVATE KEY" || t == "EC PRIVATE KEY" || t == "RSA PRIVATE KEY" })
	if keyBlock == nil {
		if len(seen) > 0 {
			return nil, keyErr("holds no PEM private key block (found %v: are cert_file and key_file swapped?)", seen)
		}
		return nil, keyErr("holds no PEM private key block")
	}
	pair, err := tls.X509KeyPair(pem.EncodeToMemory(first), pem.EncodeToMemory(keyBlock))
	if err != nil {
		if _, perr := parseKey(keyBlock); perr != nil {
			return nil, keyErr("its %s block does not parse as a key", keyBlock.Type)
		}
		return nil, keyErr("the key does not belong to the certificate in cert_file")
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, keyErr("the key cannot sign")
	}
	if opts.LeafCacheSize <= 0 {
		opts.LeafCacheSize = 1024
	}
	if opts.LeafValidity <= 0 {
		opts.LeafValidity = 24 * time.Hour
	}
	leaves, err := lru.New[string, *tls.Certificate](opts.LeafCacheSize)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	return &CA{
		cert: cert, certPEM: pem.EncodeToMemory(first), key: signer,
		validity: opts.LeafValidity, now: opts.Now, leaves: leaves,
	}, nil
}

func parseKey(b *pem.Block) (any, error) {
	if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParseECPrivateKey(b.Bytes); err == nil {
		return k, nil
	}
	return x509.ParsePKCS1PrivateKey(b.Bytes)
}

// NotAfter is when the CA certificate expires.
func (c *CA) NotAfter() time.Time { return c.cert.NotAfter }

// CertPEM returns the CA certificate, PEM-encoded, for clients to trust.
func (c *CA) CertPEM() []byte { return c.certPEM }

// Certificate returns the parsed CA certificate.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// CachedLeaves reports how many leaf certificates are cached.
func (c *CA) CachedLeaves() int { return c.leaves.Len() }

// Leaf returns a certificate for host (a DNS name or an IP address), from
// the cache when it has more than a quarter of its validity left. Concurrent
// calls for one host mint once.
func (c *CA) Leaf(host string) (*tls.Certificate, error) {
	if cert, ok := c.leaves.Get(host); ok && c.fresh(cert) {
		return cert, nil
	}
	v, err, _ := c.minting.Do(host, func() (any, error) {
		if cert, ok := c.leaves.Get(host); ok && c.fresh(cert) {
			return cert, nil
		}
		cert, err := c.Issue(host)
		if err != nil {
			return nil, err
		}
		c.leaves.Add(host, cert)
		return cert, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*tls.Certificate), nil
}

func (c *CA) fresh(cert *tls.Certificate) bool {
	return c.now().Add(c.validity / 4).Before(cert.Leaf.NotAfter)
}

// Issue mints an uncached server certificate for one or more names (DNS
// names or IP addresses); the first is its common name.
func (c *CA) Issue(names ...string) (*tls.Certificate, error) {
	if len(names) == 0 {
		return nil, errors.New("ca: a certificate needs at least one name")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca: generate leaf key: %w", err)
	}
	now := c.now()
	notAfter := now.Add(c.validity)
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, name := range names {
		if ip := net.ParseIP(name); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, name)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		return nil, fmt.Errorf("ca: sign leaf for %s: %w", names[0], err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	return &tls.Certificate{
		Certificate: [][]byte{der, c.cert.Raw},
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}

// IssueClient mints a client certificate (ExtKeyUsageClientAuth) from
// tmpl, which gives its subject, SANs and validity (a zero NotBefore or
// NotAfter: an hour ago, and the CA's validity from now); its serial
// number, key and usages are set here. It returns the certificate and key
// as PEM.
func (c *CA) IssueClient(tmpl x509.Certificate) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: generate client key: %w", err)
	}
	now := c.now()
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = now.Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = now.Add(c.validity)
		if tmpl.NotAfter.After(c.cert.NotAfter) {
			tmpl.NotAfter = c.cert.NotAfter
		}
	}
	tmpl.SerialNumber = randomSerial()
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: sign client certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n
}

// ReadPrivateKey reads a private key file (PEM, at most 1 MiB) that no
// other user may read: the mode checked is the open file's. The error
// says how to fix the mode.
func ReadPrivateKey(keyFile string) ([]byte, error) {
	f, err := os.Open(keyFile)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := keyModeOK(st); err != nil {
		return nil, fmt.Errorf("%v: a private key must be the proxy's alone; chmod 600 %s (on Kubernetes, mount its Secret with fsGroup set to the proxy's group and defaultMode 0440 or 0400)", err, keyFile)
	}
	return io.ReadAll(io.LimitReader(f, 1<<20))
}
