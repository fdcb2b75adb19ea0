// Package sim holds simulated upstreams for tests, the demo and the
// benchmarks: servers that speak the real wire protocols on loopback and
// check the credentials the proxy is meant to add.
package sim

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/authproxy/authproxy/ca"
)

// PKI is a throwaway certificate authority for simulated upstreams.
type PKI struct {
	CA     *ca.CA
	CAPEM  []byte
	CAFile string // CAPEM written to a file, for upstream.ca_file
	Pool   *x509.CertPool
}

// NewPKI creates a CA and writes its certificate into dir.
func NewPKI(dir string) (*PKI, error) {
	certPEM, keyPEM, err := ca.NewCAPEM("authproxy sim CA", time.Now(), 24*time.Hour)
	if err != nil {
		return nil, err
	}
	authority, err := ca.Parse(certPEM, keyPEM, ca.Options{})
	if err != nil {
		return nil, err
	}
	file := filepath.Join(dir, "sim-ca.pem")
	if err := os.WriteFile(file, certPEM, 0o644); err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	return &PKI{CA: authority, CAPEM: certPEM, CAFile: file, Pool: pool}, nil
}

// ServerTLS returns a server config with a certificate for names,
// offering HTTP/2 and HTTP/1.1.
func (p *PKI) ServerTLS(names ...string) (*tls.Config, error) {
	cert, err := p.CA.Issue(names...)
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"h2", "http/1.1"}}, nil
}

// ClientCert issues a client certificate from tmpl (ca.IssueClient) and
// writes it and its key (mode 0600) into dir as NAME.crt and NAME.key.
func (p *PKI) ClientCert(dir, name string, tmpl x509.Certificate) (certFile, keyFile string, err error) {
	certPEM, keyPEM, err := p.CA.IssueClient(tmpl)
	if err != nil {
		return "", "", fmt.Errorf("sim: %w", err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		return "", "", err
	}
	return certFile, keyFile, os.WriteFile(keyFile, keyPEM, 0o600)
}

// ServerCertFiles issues a server certificate for names and writes it
// (with the CA after it) and its key (mode 0600) into dir as NAME.crt and
// NAME.key.
func (p *PKI) ServerCertFiles(dir, name string, names ...string) (certFile, keyFile string, err error) {
	cert, err := p.CA.Issue(names...)
	if err != nil {
		return "", "", fmt.Errorf("sim: %w", err)
	}
	var certPEM []byte
	for _, der := range cert.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		return "", "", err
	}
	return certFile, keyFile, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
}
