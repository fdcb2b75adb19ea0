package injectors

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/ca"
)

// A key file given the wrong PEM says what it holds and what it should,
// and never quotes the key's ASN.1 (which x509's errors do).
func TestSigningKeyErrorsSayWhatIsWrong(t *testing.T) {
	cert, _, err := ca.NewCAPEM("x", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(k)
	broken := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der}) // an EC key labelled RSA
	for name, c := range map[string]struct {
		pem  []byte
		want string
	}{
		"a certificate":        {cert, "holds CERTIFICATE, not a private key"},
		"a mislabelled key":    {broken, "its RSA PRIVATE KEY block does not parse as a key of that type"},
		"no PEM":               {[]byte("hello"), "no PEM block found"},
		"a certificate, a key": {append(append([]byte{}, cert...), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})...), ""},
	} {
		_, err := parseSigningKey(c.pem)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want %q", name, err, c.want)
		case err != nil && (strings.Contains(err.Error(), "asn1") || strings.Contains(err.Error(), "tag")):
			t.Errorf("%s: the error quotes ASN.1: %v", name, err)
		}
	}
}
