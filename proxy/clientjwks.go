package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/transport"
)

// A JWT client's jwks_url: the keys are fetched over TLS verified against
// the system roots and upstream.ca_file (or jwks_ca_file alone), with a
// bearer token from jwks_token_file if set, never following a redirect,
// at most jwksMaxBytes. They are fetched when the proxy starts, again
// every jwks_refresh in the background (a request never waits for that),
// and at once for a token whose kid no key has, at most once per
// jwksDemandEvery (the request waits for that one fetch). A fetch that
// fails keeps the last keys until jwks_keep after the last good fetch;
// past that no token of the client verifies until a fetch succeeds.

const (
	jwksDefaultRefresh = 5 * time.Minute
	jwksDefaultKeep    = 24 * time.Hour
	jwksDemandEvery    = time.Minute
	jwksFetchTimeout   = 10 * time.Second
	jwksMaxBytes       = 1 << 20
)

// jwksSource is one jwks_url's keys. Sources outlive reloads (jwksSources),
// so a reload fetches nothing that did not change.
type jwksSource struct {
	url, tokenFile string
	refresh, keep  time.Duration
	client         *http.Client
	log            *slog.Logger
	now            func() time.Time

	fetching   sync.Mutex  // one fetch at a time
	refreshing atomic.Bool // a background refresh is under way
	mu         sync.Mutex  // guards what follows
	keys       []jose.JSONWebKey
	fetched    time.Time // the last good fetch
	demanded   time.Time // the last fetch for an unknown kid
	tried      time.Time // the last fetch started
}

// jwksSources are the sources by their configuration.
type jwksSources struct {
	mu   sync.Mutex
	by   map[config.JWTClient]*jwksSource
	up   *transport.Set
	log  *slog.Logger
	warm bool // Run has started: new sources fetch at once
}

func newJWKSSources(up *transport.Set, log *slog.Logger) *jwksSources {
	return &jwksSources{by: map[config.JWTClient]*jwksSource{}, up: up, log: log}
}

// source returns the source of c (a JWT client with jwks_url), building it
// if new. path is c's YAML path, for errors.
func (ss *jwksSources) source(c *config.JWTClient, path string) (*jwksSource, error) {
	key := config.JWTClient{JWKSURL: c.JWKSURL, JWKSCAFile: c.JWKSCAFile, JWKSTokenFile: c.JWKSTokenFile, JWKSRefresh: c.JWKSRefresh, JWKSKeep: c.JWKSKeep}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if s, ok := ss.by[key]; ok {
		return s, nil
	}
	tr := ss.up.TLS.Clone()
	if c.JWKSCAFile != "" {
		pem, err := os.ReadFile(c.JWKSCAFile)
		if err != nil {
			return nil, config.Errorf(config.Join(path, "jwks_ca_file"), "%v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, config.Errorf(config.Join(path, "jwks_ca_file"), "%s holds no PEM certificate", c.JWKSCAFile)
		}
		cfg := tr.TLSClientConfig.Clone()
		if cfg == nil {
			cfg = &tls.Config{}
		}
		cfg.RootCAs = pool
		tr.TLSClientConfig = cfg
	}
	s := &jwksSource{
		url: c.JWKSURL, tokenFile: c.JWKSTokenFile,
		refresh: c.JWKSRefresh.D(jwksDefaultRefresh), keep: c.JWKSKeep.D(jwksDefaultKeep),
		client: &http.Client{Transport: tr, Timeout: jwksFetchTimeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		log: ss.log.With("jwks_url", config.RedactURL(c.JWKSURL)), now: time.Now,
	}
	ss.by[key] = s
	if ss.warm {
		go s.fetch(time.Time{})
	}
	return s, nil
}

// start fetches every source that has no keys yet, in the background, and
// has the sources built from now on do the same.
func (ss *jwksSources) start() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.warm = true
	for _, s := range ss.by {
		if s.lastGood().IsZero() {
			go s.fetch(time.Time{})
		}
	}
}

// keep drops the sources that no client of the rules in force uses.
func (ss *jwksSources) keepOnly(used map[*jwksSource]bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for k, s := range ss.by {
		if !used[s] {
			delete(ss.by, k)
		}
	}
}

func (s *jwksSource) lastGood() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fetched
}

// lookup returns the keys with this kid: from the keys in use, else
// (at most once per jwksDemandEvery) from a fetch made now.
func (s *jwksSource) lookup(kid string) []jose.JSONWebKey {
	now := s.now()
	if keys := s.current(kid, now); len(keys) > 0 {
		return keys
	}
	s.mu.Lock()
	if !s.demanded.IsZero() && now.Sub(s.demanded) < jwksDemandEvery {
		s.mu.Unlock()
		return nil
	}
	s.demanded = now
	s.mu.Unlock()
	s.fetch(now)
	return s.current(kid, s.now())
}

// current returns the keys in use with this kid, and starts a background
// refresh when they are due for one.
func (s *jwksSource) current(kid string, now time.Time) []jose.JSONWebKey {
	s.mu.Lock()
	fetched, tried, keys := s.fetched, s.tried, s.keys
	s.mu.Unlock()
	// Due: refresh since the last good fetch, and (while it fails) since
	// the last try.
	if now.Sub(fetched) >= s.refresh && now.Sub(tried) >= min(s.refresh, jwksDemandEvery) && s.refreshing.CompareAndSwap(false, true) {
		go func() {
			defer s.refreshing.Store(false)
			s.fetch(now)
		}()
	}
	if fetched.IsZero() || now.Sub(fetched) > s.keep {
		return nil
	}
	var out []jose.JSONWebKey
	for _, k := range keys {
		if k.KeyID == kid {
			out = append(out, k)
		}
	}
	return out
}

// fetch fetches the keys, unless a fetch that started after since already
// succeeded.
func (s *jwksSource) fetch(since time.Time) {
	s.fetching.Lock()
	defer s.fetching.Unlock()
	s.mu.Lock()
	if !since.IsZero() && s.fetched.After(since) {
		s.mu.Unlock()
		return
	}
	s.tried = s.now()
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), jwksFetchTimeout)
	defer cancel()
	keys, err := s.get(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		left := "no keys: tokens of its clients are refused until a fetch succeeds"
		if !s.fetched.IsZero() {
			if until := s.fetched.Add(s.keep); s.now().Before(until) {
				left = fmt.Sprintf("the keys fetched at %s stay in use until %s", s.fetched.UTC().Format(time.RFC3339), until.UTC().Format(time.RFC3339))
			} else {
				left = fmt.Sprintf("the keys fetched at %s are past jwks_keep: tokens of its clients are refused until a fetch succeeds", s.fetched.UTC().Format(time.RFC3339))
			}
		}
		s.log.Warn("cannot fetch a JWT client's JWKS; "+left, "err", err)
		return
	}
	if s.fetched.IsZero() {
		s.log.Info("JWKS fetched", "keys", len(keys))
	}
	s.keys, s.fetched = keys, s.now()
}

// get fetches and parses the JWKS.
func (s *jwksSource) get(ctx context.Context) ([]jose.JSONWebKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json, application/jwk-set+json")
	if s.tokenFile != "" {
		tok, err := os.ReadFile(s.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("jwks_token_file: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := s.client.Do(req) // its error names jwks_url, which holds no secret
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return nil, fmt.Errorf("it answered %s, redirecting to %q, which the proxy never follows: set jwks_url to where the keys are", resp.Status, config.RedactURL(resp.Header.Get("Location")))
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("it answered %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, jwksMaxBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > jwksMaxBytes {
		return nil, fmt.Errorf("its answer is over %d bytes", jwksMaxBytes)
	}
	return parseJWKS(body)
}

// parseJWKS returns the RSA and EC public keys of a JWKS.
func parseJWKS(data []byte) ([]jose.JSONWebKey, error) {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, errors.New("not a JWKS (a JSON object with a keys array)")
	}
	var keys []jose.JSONWebKey
	for _, k := range set.Keys {
		switch k.Key.(type) {
		case *rsa.PublicKey, *ecdsa.PublicKey:
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("it holds no RSA or EC public key")
	}
	return keys, nil
}
