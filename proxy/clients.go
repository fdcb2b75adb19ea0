package proxy

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"

	"github.com/authproxy/authproxy/config"
)

// Caller identities (config clients) and who may use a route's credential
// (routes[].clients). A caller is recognised by a Proxy-Authorization:
// Basic username and password (compared in constant time, and kept only
// as a hash) or a JWT (clientjwt.go), else by the client certificate of a
// TLS listener (listentls.go), else by its connection's source address
// (the longest prefix that holds it). A forward listener takes the identity of a
// CONNECT's Proxy-Authorization for every request of its tunnel, and is
// looked at again, against the rules in force, at each request: a reload
// that removes a client cuts its tunnels off at their next request.

var (
	// ErrProxyAuth: the route names its clients and the caller is none of
	// them for want of an identity, or gave credentials that match none.
	ErrProxyAuth = errors.New("the route's credential is for named clients: identify with Proxy-Authorization")
	// ErrClientNotAllowed: a known caller the route does not name.
	ErrClientNotAllowed = errors.New("this client may not use the route's credential")
	// ErrTooManyAttempts: the caller's source gave wrong proxy credentials
	// too often; it is refused until its budget refills.
	ErrTooManyAttempts = errors.New("too many failed proxy authentications from this address")
)

// Failed proxy authentications are throttled per source address: a burst
// of attemptBurst, then one per attemptEvery. Past that, every request from
// the address that needs an identity is refused with 429, right
// credentials included (else a guess's 429 or 200 would still tell).
const (
	attemptBurst = 10
	attemptEvery = 6 * time.Second
	// attemptSources bounds the addresses remembered (least recently
	// failed forgotten first).
	attemptSources = 4096
)

// attempts are the failed-authentication budgets by source address; they
// outlive reloads.
type attempts struct {
	lim     *lru.Cache[netip.Addr, *rate.Limiter]
	log     *slog.Logger
	sampled *sampledLog
}

func newAttempts(log *slog.Logger) *attempts {
	c, _ := lru.New[netip.Addr, *rate.Limiter](attemptSources)
	return &attempts{lim: c, log: log, sampled: newSampledLog()}
}

func sourceAddr(remote string) netip.Addr {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, _ := netip.ParseAddr(host)
	return a.Unmap()
}

// throttled reports whether remote has spent its budget.
func (a *attempts) throttled(remote string) bool {
	l, ok := a.lim.Get(sourceAddr(remote))
	return ok && l.Tokens() < 1
}

// failed spends one of remote's budget, and logs the attempt (sampled)
// with the username it claimed, never its password.
func (a *attempts) failed(remote, claimed, route string) {
	a.sampled.log(a.log, slog.LevelWarn, "proxy authentication failed: the credentials match no client",
		"client", remote, "claimed", claimed, "route", route)
	src := sourceAddr(remote)
	l, ok := a.lim.Get(src)
	if !ok {
		l = rate.NewLimiter(rate.Every(attemptEvery), attemptBurst)
		a.lim.Add(src, l)
	}
	l.Allow()
}

// clientRules are the configured clients, as the proxy checks them.
type clientRules struct {
	basic   map[string]basicClient // by username
	jwt     *jwts
	tls     map[string]string // client names by certificate identity (certNames)
	sources []sourceClient    // longest prefix first
}

// tlsClient is the client a certificate with these identities names ("":
// none).
func (cr *clientRules) tlsClient(names []string) string {
	for _, n := range names {
		if name, ok := cr.tls[n]; ok {
			return name
		}
	}
	return ""
}

type basicClient struct {
	name string
	hash [32]byte // SHA-256 of the password
}

type sourceClient struct {
	name   string
	prefix netip.Prefix
}

// newClientRules reads the clients' passwords and JWKS files and builds
// their jwks_url sources (none with skipSecrets, where every password is
// taken as wrong and no JWT verifies).
func newClientRules(cfg *config.Config, skipSecrets bool, sources *jwksSources) (*clientRules, error) {
	verified, _ := lru.New[[32]byte, verifiedJWT](jwtCacheSize)
	cr := &clientRules{basic: map[string]basicClient{}, jwt: &jwts{verified: verified}, tls: map[string]string{}}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(cfg.Clients)) {
		cl := cfg.Clients[name]
		switch {
		case cl.TLS != nil:
			if cl.TLS.URISAN != "" {
				cr.tls["uri:"+cl.TLS.URISAN] = name
			} else {
				cr.tls["dns:"+cl.TLS.DNSSAN] = name
			}
		case cl.JWT != nil && skipSecrets: // no key: no token verifies
			cr.jwt.clients = append(cr.jwt.clients, jwtClient{name: name, keys: func(string) []jose.JSONWebKey { return nil }})
		case cl.JWT != nil:
			jc, err := newJWTClient(name, cl.JWT, sources)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			cr.jwt.clients = append(cr.jwt.clients, jc)
		case cl.Basic != nil:
			var hash [32]byte
			if !skipSecrets {
				pw, err := cl.Basic.Password.Resolve(os.LookupEnv)
				if err != nil {
					errs = append(errs, config.Errorf(config.Join("clients", name, "basic", "password"), "%v", err))
					continue
				}
				hash = sha256.Sum256([]byte(pw.Reveal()))
			}
			cr.basic[cl.Basic.Username] = basicClient{name: name, hash: hash}
		default:
			for _, src := range cl.Sources {
				p, err := config.ParseSource(src)
				if err != nil { // validated by config
					return nil, err
				}
				cr.sources = append(cr.sources, sourceClient{name: name, prefix: p})
			}
		}
	}
	slices.SortStableFunc(cr.sources, func(a, b sourceClient) int { return b.prefix.Bits() - a.prefix.Bits() })
	return cr, errors.Join(errs...)
}

// caller is who sent a request, as far as the proxy can tell.
type caller struct {
	name    string // the client's name; "" when none
	bad     bool   // it gave Proxy-Authorization that matches no client
	claimed string // the username it gave (for the log: never the password)
}

// identify recognises the caller of a request whose Proxy-Authorization is
// auth and whose connection comes from remote, with a client certificate
// that gives names (certNames; none on plain TCP). The first rule the
// request satisfies decides: Proxy-Authorization (basic, then jwt), then
// the certificate, then the source address.
func (cr *clientRules) identify(auth, remote string, names []string) caller {
	if auth != "" {
		scheme, cred, _ := strings.Cut(auth, " ")
		if strings.EqualFold(scheme, "Bearer") {
			if name, ok := cr.jwt.verify(strings.TrimSpace(cred), time.Now()); ok {
				return caller{name: name}
			}
			return caller{bad: true, claimed: "(a JWT)"}
		}
		if !strings.EqualFold(scheme, "Basic") {
			return caller{bad: true}
		}
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
		if err != nil {
			return caller{bad: true}
		}
		user, pass, ok := strings.Cut(string(raw), ":")
		if !ok {
			return caller{bad: true}
		}
		c := caller{claimed: user}
		bc, known := cr.basic[user]
		if !known && looksLikeJWT(pass) { // a JWT as the password, for tools that take only user info
			if name, ok := cr.jwt.verify(pass, time.Now()); ok {
				return caller{name: name}
			}
		}
		hash := sha256.Sum256([]byte(pass))
		// Compared even for an unknown user, so that the time taken says
		// nothing of which usernames exist.
		if subtle.ConstantTimeCompare(hash[:], bc.hash[:]) != 1 || !known || bc.hash == ([32]byte{}) {
			c.bad = true
			return c
		}
		c.name = bc.name
		return c
	}
	if name := cr.tlsClient(names); name != "" {
		return caller{name: name}
	}
	if len(cr.sources) > 0 {
		if a := sourceAddr(remote); a.IsValid() {
			for _, s := range cr.sources {
				if s.prefix.Contains(a) {
					return caller{name: s.name}
				}
			}
		}
	}
	return caller{}
}

// label is c as the metrics and the access log name it: a client's name,
// "anyone" (no identity) or "unknown" (credentials that match no client).
func (c caller) label() string {
	switch {
	case c.name != "":
		return c.name
	case c.bad:
		return "unknown"
	}
	return "anyone"
}

// check identifies the caller of a request that matched rt (nil: none),
// and says whether it may use rt's credential. With no client configured
// it does nothing: every caller is anyone.
func (cr *clientRules) check(rt *routeRT, auth, remote string, names []string, att *attempts) (label string, err error) {
	if len(cr.basic) == 0 && len(cr.sources) == 0 && len(cr.jwt.clients) == 0 && len(cr.tls) == 0 {
		return "", authorize(rt, caller{}) // "": not looked at (the metrics say anyone)
	}
	if rt != nil && rt.clients != nil && att.throttled(remote) {
		return "unknown", &routeError{route: rt.name, err: ErrTooManyAttempts}
	}
	c := cr.identify(auth, remote, names)
	err = authorize(rt, c)
	if c.bad && err != nil {
		att.failed(remote, c.claimed, rt.name)
	}
	return c.label(), err
}

// authorize says whether c may use rt's credential: nil, or ErrProxyAuth
// (no identity, or a wrong one) or ErrClientNotAllowed (a known caller
// rt does not name).
func authorize(rt *routeRT, c caller) error {
	if rt == nil || rt.clients == nil {
		return nil
	}
	switch {
	case c.bad:
		return &routeError{route: rt.name, err: ErrProxyAuth}
	case c.name != "" && rt.clients[c.name], rt.clients["anyone"]:
		return nil
	case c.name == "":
		return &routeError{route: rt.name, err: ErrProxyAuth}
	}
	return &routeError{route: rt.name, err: fmt.Errorf("%w (client %q)", ErrClientNotAllowed, c.name)}
}
