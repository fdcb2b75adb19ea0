package transport

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"time"

	"github.com/authproxy/authproxy/ca"
	"github.com/authproxy/authproxy/config"
)

// FileCheckEvery bounds how often files that are read again when they
// change (certificates and keys that cert-manager or SPIRE renew in place)
// are looked at: once a second at most, when they are about to be used.
const FileCheckEvery = time.Second

// FileStamps tells when files change: by their size and modification
// time. It is not safe for concurrent use: its owner's lock guards it.
type FileStamps struct {
	files   []string
	stamps  []fileStamp
	checked time.Time
}

type fileStamp struct {
	size int64
	mod  time.Time
}

func stamp(path string) fileStamp {
	if path == "" {
		return fileStamp{}
	}
	st, err := os.Stat(path)
	if err != nil {
		return fileStamp{size: -1}
	}
	return fileStamp{size: st.Size(), mod: st.ModTime()}
}

func stampAll(files []string) []fileStamp {
	out := make([]fileStamp, len(files))
	for i, f := range files {
		out[i] = stamp(f)
	}
	return out
}

// NewFileStamps stamps files ("" for a file that is not configured) as
// they are at now.
func NewFileStamps(now time.Time, files ...string) *FileStamps {
	return &FileStamps{files: files, stamps: stampAll(files), checked: now}
}

// Changed reports, at most once per FileCheckEvery, whether a file
// changed since the stamps were last kept. keep records the files as they
// are now: call it once what changed has loaded, so that files caught
// half-written are looked at again.
func (f *FileStamps) Changed(now time.Time) (keep func(), changed bool) {
	if now.Sub(f.checked) < FileCheckEvery {
		return nil, false
	}
	f.checked = now
	st := stampAll(f.files)
	for i := range st {
		if st[i] != f.stamps[i] {
			return func() { f.stamps = st }, true
		}
	}
	return nil, false
}

// LoadKeyPair reads a certificate (PEM, its chain after it) and its key,
// which no other user may read (ca.ReadPrivateKey). Errors name path's
// cert_file and key_file.
func LoadKeyPair(certFile, keyFile, path string) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, config.Errorf(config.Join(path, "cert_file"), "%v", err)
	}
	keyPEM, err := ca.ReadPrivateKey(keyFile)
	if err != nil {
		return nil, config.Errorf(config.Join(path, "key_file"), "%v", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, config.Errorf(config.Join(path, "cert_file"), "%s and %s are not a certificate and its key: %v", certFile, keyFile, err)
	}
	if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
		return nil, config.Errorf(config.Join(path, "cert_file"), "%v", err)
	}
	return &cert, nil
}
