// Package redisstore shares the token cache of several proxies through a
// Redis-protocol store (Redis ≥ 7 or Valkey): a tokencache.Store.
//
// What the store sees: keys that are keyed hashes (HMAC-SHA256) of the
// cache keys, so no injector name, scope, VIN or audience; values sealed
// with AES-256-GCM (the store key as additional data, so a value cannot be
// moved to another key); a keyed fingerprint of each token, so that a
// refused token can be dropped with compare-and-delete; and, after failed
// fetches, until when the fleet backs off. Both keys come from the
// configured encryption key by HKDF-SHA256; proxies with the same
// encryption key and key prefix share state.
//
// Per key, at most one proxy fetches at a time: it holds a lock (SET NX
// with a lease it renews while it fetches; a proxy that dies loses it
// when the lease runs out), and the others poll for its result. When the
// store cannot be reached, every proxy fetches for itself (degraded mode,
// logged once per change and reported by Up) until it answers again.
package redisstore

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/tokencache"
)

// MinKeyLength is the shortest encryption key accepted, in bytes.
const MinKeyLength = 32

// Options configure a Store.
type Options struct {
	Address string      // host:port
	TLS     *tls.Config // nil: plain TCP
	// Dial, when set, opens the TCP connection (the proxy's, with its
	// resolve pins); TLS is then added on top.
	Dial               func(ctx context.Context, network, addr string) (net.Conn, error)
	Username, Password string
	KeyPrefix          string // default "authproxy:"
	EncryptionKey      []byte // at least MinKeyLength bytes
	// FetchTimeout bounds a fetch (the cache's): the lock's lease is a
	// third of it, renewed while the holder fetches.
	FetchTimeout time.Duration
	// MinBackoff and MaxBackoff bound the fleet's wait after failed
	// fetches of a key, as the cache's do.
	MinBackoff, MaxBackoff time.Duration
	// OpTimeout bounds one store operation (default 500 ms): a store that
	// is slower counts as unreachable.
	OpTimeout time.Duration
	// PollInterval is how often a proxy waiting for another's fetch looks
	// for its result (default 20 ms).
	PollInterval time.Duration
	Log          *slog.Logger
	// OnState, when set, is told each change between shared (true) and
	// degraded (false).
	OnState func(up bool)
}

// Store is a tokencache.Store on Redis. It is safe for concurrent use.
type Store struct {
	opts   Options
	rdb    *redis.Client
	aead   cipher.AEAD
	macKey []byte
	owner  string // this process, in lock values

	up       atomic.Bool
	rejected atomic.Int64 // records and locks that failed authentication or their bounds
	probeMu  sync.Mutex
	probing  bool
	stopped  chan struct{}
	stop     sync.Once
}

var _ tokencache.RollingStore = (*Store)(nil)

// New connects lazily: it fails only on bad options. The store starts as
// shared; the first failure to reach it turns it degraded.
func New(opts Options) (*Store, error) {
	if len(opts.EncryptionKey) < MinKeyLength {
		return nil, fmt.Errorf("encryption_key: %d bytes, at least %d needed", len(opts.EncryptionKey), MinKeyLength)
	}
	if opts.Address == "" {
		return nil, errors.New("address: required")
	}
	if opts.KeyPrefix == "" {
		opts.KeyPrefix = "authproxy:"
	}
	// The cache's own defaults, and its backoff: the fleet waits as one
	// proxy would.
	cacheOpts := tokencache.Options{FetchTimeout: opts.FetchTimeout, MinBackoff: opts.MinBackoff, MaxBackoff: opts.MaxBackoff}.WithDefaults()
	opts.FetchTimeout, opts.MinBackoff, opts.MaxBackoff = cacheOpts.FetchTimeout, cacheOpts.MinBackoff, cacheOpts.MaxBackoff
	if opts.OpTimeout <= 0 {
		opts.OpTimeout = 500 * time.Millisecond
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 20 * time.Millisecond
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	encKey, err := hkdf.Key(sha256.New, opts.EncryptionKey, nil, "authproxy token store: seal", 32)
	if err != nil {
		return nil, err
	}
	macKey, err := hkdf.Key(sha256.New, opts.EncryptionKey, nil, "authproxy token store: keys", 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(encKey)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	var id [6]byte
	_, _ = rand.Read(id[:])
	s := &Store{opts: opts, aead: aead, macKey: macKey, stopped: make(chan struct{}),
		owner: strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(id[:])}
	ro := &redis.Options{
		Addr: opts.Address, Username: opts.Username, Password: opts.Password, TLSConfig: opts.TLS,
		DialTimeout: opts.OpTimeout, ReadTimeout: opts.OpTimeout, WriteTimeout: opts.OpTimeout,
		// One immediate retry on a fresh connection: a pooled connection
		// may have died with a store that has since come back.
		MaxRetries: 1, MinRetryBackoff: -1, MaxRetryBackoff: -1, PoolSize: 16, DisableIdentity: true,
	}
	if dial := opts.Dial; dial != nil {
		ro.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := dial(ctx, network, addr)
			if err != nil || opts.TLS == nil {
				return conn, err
			}
			tc := tls.Client(conn, opts.TLS)
			if err := tc.HandshakeContext(ctx); err != nil {
				conn.Close()
				return nil, err
			}
			return tc, nil
		}
	}
	s.rdb = redis.NewClient(ro)
	s.up.Store(true)
	return s, nil
}

// Close stops the store's probe and closes its connections.
func (s *Store) Close() error {
	s.stop.Do(func() { close(s.stopped) })
	return s.rdb.Close()
}

// Up reports whether tokens are shared (false: degraded, each proxy on its
// own until the store answers again).
func (s *Store) Up() bool { return s.up.Load() }

// Address is the store's host:port.
func (s *Store) Address() string { return s.opts.Address }

// Owner names this process in the locks it holds (its pid first).
func (s *Store) Owner() string { return s.owner }

// failed turns the store degraded after err, and starts probing for its
// return.
func (s *Store) failed(err error) {
	if s.up.CompareAndSwap(true, false) {
		s.opts.Log.Warn("shared token store unreachable: each proxy fetches its own tokens until it answers", "address", s.opts.Address, "err", err)
		if s.opts.OnState != nil {
			s.opts.OnState(false)
		}
	}
	s.probeMu.Lock()
	defer s.probeMu.Unlock()
	if s.probing {
		return
	}
	s.probing = true
	go s.probe()
}

// probe pings the store until it answers, then turns it shared again.
func (s *Store) probe() {
	defer func() {
		s.probeMu.Lock()
		s.probing = false
		s.probeMu.Unlock()
	}()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.stopped:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.opts.OpTimeout)
		err := s.rdb.Ping(ctx).Err()
		cancel()
		if err == nil {
			if s.up.CompareAndSwap(false, true) {
				s.opts.Log.Info("shared token store answers again: tokens are shared", "address", s.opts.Address)
				if s.opts.OnState != nil {
					s.opts.OnState(true)
				}
			}
			return
		}
	}
}

// names are the store keys of one cache key: its token record and its lock.
type names struct{ rec, lock string }

func (s *Store) names(key string) names {
	m := hmac.New(sha256.New, s.macKey)
	m.Write([]byte(key))
	h := hex.EncodeToString(m.Sum(nil)[:20])
	return names{rec: s.opts.KeyPrefix + "t:" + h, lock: s.opts.KeyPrefix + "l:" + h}
}

// fingerprint is a token value's keyed hash, kept in the clear beside the
// sealed record for compare-and-delete.
func (s *Store) fingerprint(value string) string {
	m := hmac.New(sha256.New, s.macKey)
	m.Write([]byte("value\x00" + value))
	return hex.EncodeToString(m.Sum(nil)[:16])
}

// sealed is what a record's d field holds, sealed.
type sealed struct {
	Value     string `json:"v"`
	Expiry    int64  `json:"x,omitempty"` // unix ms
	Idle      int64  `json:"i,omitempty"` // ms
	FetchedAt int64  `json:"f"`           // unix ms
}

func (s *Store) seal(rec string, plain []byte) string {
	nonce := make([]byte, s.aead.NonceSize())
	_, _ = rand.Read(nonce)
	return hex.EncodeToString(s.aead.Seal(nonce, nonce, plain, []byte(rec)))
}

func (s *Store) open(rec, text string) ([]byte, error) {
	b, err := hex.DecodeString(text)
	if err != nil || len(b) < s.aead.NonceSize() {
		return nil, errors.New("a sealed value that is not one")
	}
	n := s.aead.NonceSize()
	return s.aead.Open(nil, b[:n], b[n:], []byte(rec))
}

// failure is what a record's fe field holds, sealed: the fleet's back-off
// after failed fetches. Sealed, so that no one who can write to the store
// but lacks the encryption key can make the fleet back off.
type failure struct {
	Until    int64  `json:"u"` // unix ms
	Failures int    `json:"n"`
	Err      string `json:"e"`
}

// maxFailures bounds the failure count a record may carry.
const maxFailures = 64

// Why a record, lock or lease is rejected.
const (
	notSealed    = "this fleet did not write (another encryption key, damage, or a forgery)"
	beyondBounds = "holds more than this proxy's bounds allow (a forgery, or a proxy configured otherwise)"
)

// reject counts a record or lock that failed authentication or its bounds,
// and logs what it is and why (never its content).
func (s *Store) reject(what, why string) {
	s.rejected.Add(1)
	s.opts.Log.Warn("shared token store: ignored a " + what + " that " + why)
}

// Rejected is the number of records and locks ignored since the start:
// they failed authentication or held a value outside this proxy's bounds.
func (s *Store) Rejected() int64 { return s.rejected.Load() }

// record is a key's state in the store.
type record struct {
	has       bool
	tok       tokencache.Token
	fetchedAt time.Time
	failUntil time.Time // the fleet backs off until then
	failures  int
	lastErr   string
}

func (s *Store) load(ctx context.Context, n names) (record, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
	defer cancel()
	m, err := s.rdb.HGetAll(ctx, n.rec).Result()
	if err != nil {
		return record{}, err
	}
	var r record
	if d := m["d"]; d != "" {
		plain, err := s.open(n.rec, d)
		var v sealed
		if err == nil {
			err = json.Unmarshal(plain, &v)
		}
		if err == nil && !hmac.Equal([]byte(m["fp"]), []byte(s.fingerprint(v.Value))) {
			// A fingerprint that is not the value's would keep a stale
			// token from being dropped.
			err = errors.New("fingerprint")
		}
		if err != nil {
			// Not ours (another encryption key), damaged or forged:
			// treated as absent, and overwritten by the next fetch.
			s.reject("token record", notSealed)
		} else {
			r.has = true
			r.tok.Value = config.NewSecret(v.Value)
			if v.Expiry > 0 {
				r.tok.Expiry = time.UnixMilli(v.Expiry)
			}
			r.tok.IdleTimeout = time.Duration(v.Idle) * time.Millisecond
			r.fetchedAt = time.UnixMilli(v.FetchedAt)
		}
	}
	if fe := m["fe"]; fe != "" {
		plain, err := s.open(n.rec, fe)
		var f failure
		if err == nil {
			err = json.Unmarshal(plain, &f)
		}
		if err != nil {
			// Ignored, and replaced by the next fetch's outcome.
			s.reject("back-off record", notSealed)
		} else {
			// Bounded by this proxy's own max_backoff (with its jitter),
			// whoever sealed it.
			until := time.UnixMilli(f.Until)
			if limit := time.Now().Add(s.opts.MaxBackoff * 3 / 2); until.After(limit) {
				s.reject("back-off record", beyondBounds)
				until = limit
			}
			r.failUntil, r.failures, r.lastErr = until, min(max(f.Failures, 0), maxFailures), f.Err
		}
	}
	return r, nil
}

// Fetch implements tokencache.Store.
func (s *Store) Fetch(ctx context.Context, key, stale string, fresh func(tokencache.Token, time.Time) bool, fetch tokencache.FetchFunc) (tokencache.Token, time.Time, error) {
	if !s.up.Load() {
		tok, err := fetch(ctx)
		return tok, time.Time{}, err
	}
	n := s.names(key)
	if stale != "" {
		if err := s.dropIf(ctx, n, stale); err != nil {
			return s.degraded(ctx, err, fetch)
		}
	}
	checked := false // whether the lock another proxy holds was looked at
	for {
		r, err := s.load(ctx, n)
		if err != nil {
			return s.degraded(ctx, err, fetch)
		}
		now := time.Now()
		if r.has && fresh(r.tok, r.fetchedAt) {
			return r.tok, r.fetchedAt, nil
		}
		if now.Before(r.failUntil) {
			return tokencache.Token{}, time.Time{}, fmt.Errorf("the fleet backs off from this issuer for %s after %d failed fetches: %s",
				r.failUntil.Sub(now).Round(time.Millisecond), r.failures, r.lastErr)
		}
		got, err := s.lock(ctx, n)
		if err != nil {
			return s.degraded(ctx, err, fetch)
		}
		if got {
			return s.fetchLocked(ctx, n, r, fresh, fetch)
		}
		if !checked {
			checked = true
			if s.clearForgedLock(ctx, n) {
				continue
			}
		}
		// Another proxy fetches: wait for its result.
		select {
		case <-ctx.Done():
			return tokencache.Token{}, time.Time{}, fmt.Errorf("waiting for another proxy's fetch: %w", ctx.Err())
		case <-time.After(s.opts.PollInterval):
		}
	}
}

// degraded fetches locally after the store failed.
func (s *Store) degraded(ctx context.Context, err error, fetch tokencache.FetchFunc) (tokencache.Token, time.Time, error) {
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return tokencache.Token{}, time.Time{}, err
	}
	s.failed(err)
	tok, ferr := fetch(ctx)
	return tok, time.Time{}, ferr
}

// lock takes key's lock for this process, with a lease.
func (s *Store) lock(ctx context.Context, n names) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
	defer cancel()
	return s.rdb.SetNX(ctx, n.lock, s.owner, s.lease()).Result()
}

func (s *Store) lease() time.Duration { return max(s.opts.FetchTimeout/3, 300*time.Millisecond) }

// clearForgedLock deletes key's lock if no proxy of the fleet could have
// taken it: it has no expiry, or more of its lease left than four of this
// proxy's leases (a holder renews a lease of its fetch timeout's third).
// Such a lock would hold the fleet back from fetching; it is counted.
func (s *Store) clearForgedLock(ctx context.Context, n names) bool {
	ctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
	defer cancel()
	cleared, err := clearForged.Run(ctx, s.rdb, []string{n.lock}, (4 * s.lease()).Milliseconds()).Int()
	if err != nil || cleared != 1 {
		return false
	}
	s.reject("lock", beyondBounds)
	return true
}

// Scripts run atomically in the store.
var (
	// clearForged: delete a lock with no expiry, or with more than ARGV[1]
	// ms of its lease left.
	clearForged = redis.NewScript(`local t = redis.call("PTTL", KEYS[1]) if t == -1 or t > tonumber(ARGV[1]) then redis.call("DEL", KEYS[1]) return 1 end return 0`)
	// unlock: delete the lock if this process still holds it.
	unlock = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)
	// renew: extend the lease if this process still holds it.
	renew = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) end return 0`)
	// dropIf: delete the token if it is still the one with this fingerprint.
	dropIf = redis.NewScript(`if redis.call("HGET", KEYS[1], "fp") == ARGV[1] then redis.call("HDEL", KEYS[1], "fp", "d") return 1 end return 0`)
	// replaceIf: put a new value (fingerprint ARGV[2], sealed ARGV[3]) if
	// the one held is still the one with fingerprint ARGV[1].
	replaceIf = redis.NewScript(`if redis.call("HGET", KEYS[1], "fp") == ARGV[1] then redis.call("HSET", KEYS[1], "fp", ARGV[2], "d", ARGV[3]) return 1 end return 0`)
)

// Current implements tokencache.RollingStore.
func (s *Store) Current(ctx context.Context, key string) (tokencache.Token, time.Time, bool, error) {
	if !s.up.Load() {
		return tokencache.Token{}, time.Time{}, false, errDegraded
	}
	r, err := s.load(ctx, s.names(key))
	if err != nil {
		s.failed(err)
		return tokencache.Token{}, time.Time{}, false, err
	}
	valid := r.has && (r.tok.Expiry.IsZero() || time.Now().Before(r.tok.Expiry))
	return r.tok, r.fetchedAt, valid, nil
}

// Replace implements tokencache.RollingStore.
func (s *Store) Replace(ctx context.Context, key, old string, tok tokencache.Token, fetchedAt time.Time) (bool, error) {
	if !s.up.Load() {
		return false, errDegraded
	}
	n := s.names(key)
	plain, _ := json.Marshal(s.sealedOf(tok, fetchedAt))
	ctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
	defer cancel()
	done, err := replaceIf.Run(ctx, s.rdb, []string{n.rec}, s.fingerprint(old), s.fingerprint(tok.Value.Reveal()), s.seal(n.rec, plain)).Int()
	if err != nil {
		s.failed(err)
		return false, err
	}
	return done == 1, nil
}

// Drop implements tokencache.RollingStore.
func (s *Store) Drop(ctx context.Context, key, value string) error {
	if !s.up.Load() {
		return errDegraded
	}
	if err := s.dropIf(ctx, s.names(key), value); err != nil {
		s.failed(err)
		return err
	}
	return nil
}

var errDegraded = errors.New("the shared token store is unreachable")

// sealedOf is what a record holds of tok, fetched at fetchedAt.
func (s *Store) sealedOf(tok tokencache.Token, fetchedAt time.Time) sealed {
	v := sealed{Value: tok.Value.Reveal(), Idle: tok.IdleTimeout.Milliseconds(), FetchedAt: fetchedAt.UnixMilli()}
	if !tok.Expiry.IsZero() {
		v.Expiry = tok.Expiry.UnixMilli()
	}
	return v
}

func (s *Store) dropIf(ctx context.Context, n names, value string) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
	defer cancel()
	return dropIf.Run(ctx, s.rdb, []string{n.rec}, s.fingerprint(value)).Err()
}

// fetchLocked fetches while holding key's lock (renewing its lease), and
// stores the result for the fleet: the token, or the failure and until
// when the fleet backs off.
func (s *Store) fetchLocked(ctx context.Context, n names, before record, fresh func(tokencache.Token, time.Time) bool, fetch tokencache.FetchFunc) (tokencache.Token, time.Time, error) {
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.opts.OpTimeout)
		defer cancel()
		_ = unlock.Run(ctx, s.rdb, []string{n.lock}, s.owner).Err()
	}()
	// The lock may have passed from a proxy that just stored its result.
	if r, err := s.load(ctx, n); err == nil && r.has && fresh(r.tok, r.fetchedAt) {
		return r.tok, r.fetchedAt, nil
	} else if err == nil {
		before = r
	}
	renewing, stopRenew := context.WithCancel(ctx)
	defer stopRenew()
	go func() {
		t := time.NewTicker(s.lease() / 3)
		defer t.Stop()
		for {
			select {
			case <-renewing.Done():
				return
			case <-t.C:
				rctx, cancel := context.WithTimeout(context.Background(), s.opts.OpTimeout)
				_ = renew.Run(rctx, s.rdb, []string{n.lock}, s.owner, s.lease().Milliseconds()).Err()
				cancel()
			}
		}
	}()
	tok, err := fetch(ctx)
	stopRenew()
	now := time.Now()
	wctx, cancel := context.WithTimeout(context.Background(), s.opts.OpTimeout)
	defer cancel()
	if err != nil {
		failures := min(before.failures+1, maxFailures)
		until := now.Add(s.backoff(failures))
		plain, _ := json.Marshal(failure{Until: until.UnixMilli(), Failures: failures, Err: err.Error()})
		// fu and fn are what earlier versions kept in the clear; no
		// reader uses them now.
		pipe := s.rdb.TxPipeline()
		pipe.HDel(wctx, n.rec, "fu", "fn")
		pipe.HSet(wctx, n.rec, "fe", s.seal(n.rec, plain))
		_, werr := pipe.Exec(wctx)
		if werr == nil {
			werr = s.rdb.PExpire(wctx, n.rec, max(until.Sub(now), time.Second)+time.Hour).Err()
		}
		if werr != nil {
			s.failed(werr)
		}
		return tok, time.Time{}, err
	}
	v := s.sealedOf(tok, now)
	plain, _ := json.Marshal(v)
	pipe := s.rdb.TxPipeline()
	pipe.HDel(wctx, n.rec, "fu", "fn", "fe")
	pipe.HSet(wctx, n.rec, "fp", s.fingerprint(v.Value), "d", s.seal(n.rec, plain))
	if tok.Expiry.IsZero() {
		pipe.Persist(wctx, n.rec)
	} else {
		pipe.PExpireAt(wctx, n.rec, tok.Expiry)
	}
	if _, werr := pipe.Exec(wctx); werr != nil {
		s.failed(werr) // the token is good: this proxy uses it all the same
	}
	return tok, now, nil
}

// backoff is the fleet's wait after failures, as the cache's.
func (s *Store) backoff(failures int) time.Duration {
	return tokencache.Options{MinBackoff: s.opts.MinBackoff, MaxBackoff: s.opts.MaxBackoff}.Backoff(failures)
}

// Put stores value under key for ttl, sealed, for the fleet's other state
// (openOBD sessions). Keys are hashed as the cache's are.
func (s *Store) Put(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if !s.up.Load() {
		return errDegraded
	}
	n := s.names("state\x00" + key)
	ctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
	defer cancel()
	if err := s.rdb.Set(ctx, n.rec, s.seal(n.rec, value), ttl).Err(); err != nil {
		s.failed(err)
		return err
	}
	return nil
}

// Get returns what Put stored under key.
func (s *Store) Get(ctx context.Context, key string) ([]byte, bool, error) {
	if !s.up.Load() {
		return nil, false, errDegraded
	}
	n := s.names("state\x00" + key)
	ctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
	defer cancel()
	v, err := s.rdb.Get(ctx, n.rec).Result()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		s.failed(err)
		return nil, false, err
	}
	plain, err := s.open(n.rec, v)
	if err != nil {
		s.reject("state record", notSealed)
		return nil, false, nil // not this fleet's: absent
	}
	return plain, true, nil
}

// leaseScript takes a free lease or renews this process's own (1), or
// takes one that no proxy could hold (2): no expiry, or more than ARGV[3]
// ms left.
var leaseScript = redis.NewScript(`local v = redis.call("GET", KEYS[1])
if v == false or v == ARGV[1] then redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2]) return 1 end
local t = redis.call("PTTL", KEYS[1])
if t == -1 or t > tonumber(ARGV[3]) then redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2]) return 2 end return 0`)

// Lease takes key's lease for this process, or renews it, for ttl; it
// reports whether this process holds it. A holder that stops renewing
// loses it when ttl runs out.
func (s *Store) Lease(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	if !s.up.Load() {
		return false, errDegraded
	}
	n := s.names("lease\x00" + key)
	ctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
	defer cancel()
	got, err := leaseScript.Run(ctx, s.rdb, []string{n.lock}, s.owner, ttl.Milliseconds(), (4 * ttl).Milliseconds()).Int()
	if err != nil {
		s.failed(err)
		return false, err
	}
	if got == 2 {
		s.reject("lease", beyondBounds)
	}
	return got >= 1, nil
}
