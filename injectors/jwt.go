package injectors

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// signingKey is a private key that signs compact JWS (RS256, ES256, ES384).
type signingKey struct {
	signer crypto.Signer
	alg    string
}

// parseSigningKey reads a PEM private key: PKCS#8, PKCS#1 (RSA) or SEC 1 (EC).
func parseSigningKey(pemData []byte) (signingKey, error) {
	var block *pem.Block
	var seen []string
	for rest := pemData; ; {
		b, r := pem.Decode(rest)
		if b == nil {
			break
		}
		if strings.HasSuffix(b.Type, "PRIVATE KEY") {
			block = b
			break
		}
		seen, rest = append(seen, b.Type), r
	}
	switch {
	case block == nil && len(seen) > 0:
		return signingKey{}, fmt.Errorf("holds %s, not a private key: give the PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)", strings.Join(seen, ", "))
	case block == nil:
		return signingKey{}, errors.New("no PEM block found")
	}
	var key any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil { // x509's error would quote the key's ASN.1 structure
		return signingKey{}, fmt.Errorf("its %s block does not parse as a key of that type", block.Type)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 2048 {
			return signingKey{}, fmt.Errorf("an RSA key of %d bits is too short (2048 at least)", k.N.BitLen())
		}
		return signingKey{signer: k, alg: "RS256"}, nil
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256():
			return signingKey{signer: k, alg: "ES256"}, nil
		case elliptic.P384():
			return signingKey{signer: k, alg: "ES384"}, nil
		}
		return signingKey{}, errors.New("an EC key must be on P-256 or P-384")
	}
	return signingKey{}, fmt.Errorf("unsupported key type %T (use RSA or EC)", key)
}

// sign returns the compact JWS of claims with the given extra header fields.
func (k signingKey) sign(header map[string]any, claims any) (string, error) {
	h := map[string]any{"alg": k.alg, "typ": "JWT"}
	for name, v := range header {
		h[name] = v
	}
	hb, err := json.Marshal(h)
	if err != nil {
		return "", err
	}
	cb, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	input := enc.EncodeToString(hb) + "." + enc.EncodeToString(cb)
	var sig []byte
	switch k.alg {
	case "RS256":
		d := sha256.Sum256([]byte(input))
		sig, err = rsa.SignPKCS1v15(rand.Reader, k.signer.(*rsa.PrivateKey), crypto.SHA256, d[:])
	case "ES256":
		d := sha256.Sum256([]byte(input))
		sig, err = ecdsaRaw(k.signer.(*ecdsa.PrivateKey), d[:], 32)
	case "ES384":
		d := sha512.Sum384([]byte(input))
		sig, err = ecdsaRaw(k.signer.(*ecdsa.PrivateKey), d[:], 48)
	}
	if err != nil {
		return "", err
	}
	return input + "." + enc.EncodeToString(sig), nil
}

// ecdsaRaw signs and encodes r‖s, each left-padded to size bytes (JWS).
func ecdsaRaw(k *ecdsa.PrivateKey, digest []byte, size int) ([]byte, error) {
	r, s, err := ecdsa.Sign(rand.Reader, k, digest)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 2*size)
	r.FillBytes(out[:size])
	s.FillBytes(out[size:])
	return out, nil
}
