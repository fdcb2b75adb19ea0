package ca

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestCreateWritesPrivateKeyAndRefusesToOverwrite(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := Create(cert, key, "test", false); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(key)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", st.Mode().Perm())
	}
	if err := Create(cert, key, "test", false); err == nil {
		t.Error("Create replaced an existing CA without force")
	}
	before, _ := os.ReadFile(cert)
	if err := Create(cert, key, "test", true); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(cert)
	if string(before) == string(after) {
		t.Error("force did not replace the CA")
	}
	c, err := Load(cert, key, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Certificate().IsCA || string(c.CertPEM()) != string(after) {
		t.Error("loaded CA differs from the file")
	}
}

func newTestCA(t *testing.T, opts Options) *CA {
	t.Helper()
	certPEM, keyPEM, err := NewCAPEM("test", time.Now(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(certPEM, keyPEM, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLeafVerifiesAndIsCachedWithinBound(t *testing.T) {
	now := time.Now()
	c := newTestCA(t, Options{LeafCacheSize: 2, LeafValidity: time.Hour, Now: func() time.Time { return now }})
	roots := x509.NewCertPool()
	roots.AddCert(c.Certificate())

	for _, host := range []string{"api.example.com", "127.0.0.1", "::1"} {
		leaf, err := c.Leaf(host)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, CurrentTime: now}); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	if n := c.CachedLeaves(); n != 2 {
		t.Errorf("cache holds %d leaves, want its bound 2", n)
	}
	a, _ := c.Leaf("::1")
	b, _ := c.Leaf("::1")
	if a != b {
		t.Error("a cached leaf was minted again")
	}
	now = now.Add(50 * time.Minute) // less than a quarter of its validity left
	d, _ := c.Leaf("::1")
	if d == a {
		t.Error("a leaf near expiry was served from the cache")
	}
}

func TestConcurrentLeafMintsOnce(t *testing.T) {
	c := newTestCA(t, Options{})
	var wg sync.WaitGroup
	got := make([]any, 32)
	for i := range got {
		wg.Go(func() {
			leaf, err := c.Leaf("burst.example.com")
			if err != nil {
				t.Error(err)
			}
			got[i] = leaf
		})
	}
	wg.Wait()
	for i := range got {
		if got[i] != got[0] {
			t.Fatal("concurrent requests for one host minted more than one certificate")
		}
	}
}

func TestParseRejectsMismatchedOrNonCA(t *testing.T) {
	certA, _, _ := NewCAPEM("a", time.Now(), time.Hour)
	_, keyB, _ := NewCAPEM("b", time.Now(), time.Hour)
	if _, err := Parse(certA, keyB, Options{}); err == nil {
		t.Error("a certificate with another CA's key was accepted")
	}
}

func TestLoadRefusesAKeyOthersCanRead(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := Create(cert, key, "test", false); err != nil {
		t.Fatal(err)
	}
	// Others may never have access, nor may the key's group write it.
	for _, mode := range []os.FileMode{0o604, 0o644, 0o660, 0o606, 0o601, 0o620} {
		if err := os.Chmod(key, mode); err != nil {
			t.Fatal(err)
		}
		_, err := Load(cert, key, Options{})
		if err == nil || !strings.Contains(err.Error(), "chmod 600 "+key) {
			t.Errorf("mode %04o: %v, want a refusal saying chmod 600", mode, err)
		}
	}
	// The key's group may read it when the group is the proxy's own (the
	// file was created in it), as Kubernetes' fsGroup mounts a Secret.
	for _, mode := range []os.FileMode{0o600, 0o400, 0o640, 0o440} {
		os.Chmod(key, mode)
		if _, err := Load(cert, key, Options{}); err != nil {
			t.Errorf("mode %04o: %v", mode, err)
		}
	}
	// A group the proxy is not in may not. Only root can give a file to
	// such a group; CI runs as root.
	if os.Geteuid() != 0 {
		t.Log("not root: a key in a group the proxy is not in is not tried")
		return
	}
	if err := os.Chown(key, 0, 54321); err != nil {
		t.Fatal(err)
	}
	os.Chmod(key, 0o440)
	if _, err := Load(cert, key, Options{}); err == nil || !strings.Contains(err.Error(), "group 54321, which is not the proxy's") {
		t.Errorf("mode 0440 in group 54321: %v, want a refusal naming the group", err)
	}
}

// ca init into directories that do not exist yet creates them, so that
// others can read the certificate (clients trust it) while the key stays
// the owner's alone.
func TestCreateMakesItsDirectories(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "ca")
	cert, key := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "private", "ca.key")
	if err := Create(cert, key, "test", false); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o755, cert: 0o644, key: 0o600} {
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm()&^0o022 != want&^0o022 || (path == key && st.Mode().Perm() != 0o600) {
			t.Errorf("%s: %v %v, want %v", path, st.Mode().Perm(), err, want)
		}
	}
	if _, err := Load(cert, key, Options{}); err != nil {
		t.Errorf("loading what was created: %v", err)
	}
}
