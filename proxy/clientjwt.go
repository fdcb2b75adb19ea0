package proxy

import (
	"crypto/sha256"
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
	keys     func(kid string) []jose.JSONWebKey // the RSA and EC public keys with this kid
	source   *jwksSource                        // jwks_url's (nil: jwks_file)
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

func newJWTClient(name string, c *config.JWTClient, sources *jwksSources) (jwtClient, error) {
	path := config.Join("clients", name, "jwt")
	jc := jwtClient{name: name, issuer: c.Issuer, audience: c.Audience, subject: strings.TrimSuffix(c.Subject, "*"), prefix: strings.HasSuffix(c.Subject, "*")}
	if c.JWKSURL != "" {
		src, err := sources.source(c, path)
		if err != nil {
			return jwtClient{}, err
		}
		jc.source, jc.keys = src, src.lookup
		return jc, nil
	}
	data, err := os.ReadFile(c.JWKSFile)
	if err != nil {
		return jwtClient{}, config.Errorf(config.Join(path, "jwks_file"), "%v", err)
	}
	keys, err := parseJWKS(data)
	if err != nil {
		return jwtClient{}, config.Errorf(config.Join(path, "jwks_file"), "%s: %v", c.JWKSFile, err)
	}
	set := jose.JSONWebKeySet{Keys: keys}
	jc.keys = set.Key
	return jc, nil
}

// sources are the jwks_url sources the clients use.
func (j *jwts) sources() map[*jwksSource]bool {
	out := map[*jwksSource]bool{}
	for _, jc := range j.clients {
		if jc.source != nil {
			out[jc.source] = true
		}
	}
	return out
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
		for _, k := range jc.keys(kid) {
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
