package proxy

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"os"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/authproxy/authproxy/config"
)

// JWT clients: a caller recognised by a JWT that someone else issues (a
// Kubernetes projected service-account token), checked with go-jose:
// RS256 or ES256 only (so "none" and HMAC, a public key used as an HMAC
// secret among them, never parse), a key of the client's JWKS by the
// token's kid, exp required, exp/nbf/iat with jwtLeeway, iss, aud and sub.
// A verified token is remembered, by its SHA-256, until its expiry.

const (
	jwtLeeway    = 30 * time.Second
	jwtCacheSize = 4096
)

type jwtClient struct {
	name     string
	keys     jose.JSONWebKeySet // public RSA and EC keys only
	issuer   string
	audience string
	subject  string // exact, or a prefix when prefix is set
	prefix   bool
}

type verifiedJWT struct {
	name string
	exp  time.Time
}

// jwts are the JWT clients and their verified tokens.
type jwts struct {
	clients  []jwtClient // by name
	verified *lru.Cache[[32]byte, verifiedJWT]
}

func newJWTClient(name string, c *config.JWTClient) (jwtClient, error) {
	data, err := os.ReadFile(c.JWKSFile)
	if err != nil {
		return jwtClient{}, config.Errorf(config.Join("clients", name, "jwt", "jwks_file"), "%v", err)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(data, &set); err != nil {
		return jwtClient{}, config.Errorf(config.Join("clients", name, "jwt", "jwks_file"), "%s is not a JWKS (a JSON object with a keys array)", c.JWKSFile)
	}
	jc := jwtClient{name: name, issuer: c.Issuer, audience: c.Audience, subject: strings.TrimSuffix(c.Subject, "*"), prefix: strings.HasSuffix(c.Subject, "*")}
	for _, k := range set.Keys {
		switch k.Key.(type) {
		case *rsa.PublicKey, *ecdsa.PublicKey:
			jc.keys.Keys = append(jc.keys.Keys, k)
		}
	}
	if len(jc.keys.Keys) == 0 {
		return jwtClient{}, config.Errorf(config.Join("clients", name, "jwt", "jwks_file"), "%s holds no RSA or EC public key", c.JWKSFile)
	}
	return jc, nil
}

func (jc jwtClient) subjectOK(sub string) bool {
	if jc.prefix {
		return strings.HasPrefix(sub, jc.subject)
	}
	return sub == jc.subject
}

// verify returns the client a JWT identifies ("" and false: none).
func (j *jwts) verify(raw string, now time.Time) (string, bool) {
	if j == nil || len(j.clients) == 0 {
		return "", false
	}
	sum := sha256Sum(raw)
	if v, ok := j.verified.Get(sum); ok && now.Before(v.exp.Add(jwtLeeway)) {
		return v.name, true
	}
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS256, jose.ES256})
	if err != nil || len(tok.Headers) != 1 {
		return "", false
	}
	kid := tok.Headers[0].KeyID
	for _, jc := range j.clients {
		for _, k := range jc.keys.Key(kid) {
			var c jwt.Claims
			if tok.Claims(k.Key, &c) != nil || c.Expiry == nil {
				continue
			}
			if c.ValidateWithLeeway(jwt.Expected{Issuer: jc.issuer, AnyAudience: jwt.Audience{jc.audience}, Time: now}, jwtLeeway) != nil || !jc.subjectOK(c.Subject) {
				continue
			}
			j.verified.Add(sum, verifiedJWT{name: jc.name, exp: c.Expiry.Time()})
			return jc.name, true
		}
	}
	return "", false
}

func looksLikeJWT(s string) bool { return strings.Count(s, ".") == 2 && len(s) > 16 }

func sha256Sum(s string) [32]byte { return sha256.Sum256([]byte(s)) }
