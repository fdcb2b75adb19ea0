// Package tokencache holds credentials fetched from token issuers, keyed
// by (injector, scope), in a bounded LRU. For every key it fetches once at a
// time, refreshes ahead of expiry in the background, keeps serving a
// still-valid token through an issuer outage, backs off between failed
// fetches, and fails fast once a token has truly expired.
package tokencache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/authproxy/authproxy/config"
)

// Token is a credential and its lifetime.
type Token struct {
	// Value is the credential.
	Value config.Secret
	// Expiry is when the token stops being valid; zero means never.
	Expiry time.Time
	// IdleTimeout, when set, also ends the token after this long without
	// use (Obelisk's max_idle_time).
	IdleTimeout time.Duration
}

// FetchFunc obtains a new token. It runs on a context detached from any
// request, bounded by Options.FetchTimeout.
type FetchFunc func(ctx context.Context) (Token, error)

// Options configure a Cache. Zero values take the defaults.
type Options struct {
	// Size is the most keys kept; the least recently used is evicted.
	Size int // default 1024
	// RefreshFraction: a token is refreshed once this fraction of its
	// lifetime has passed...
	RefreshFraction float64 // default 0.8
	// MinMargin: ...and at the latest this long before it expires.
	MinMargin time.Duration // default 30s
	// FetchTimeout bounds one fetch.
	FetchTimeout time.Duration // default 15s
	// MinBackoff and MaxBackoff bound the wait between failed fetches of a
	// key (exponential, with ±50% jitter).
	MinBackoff time.Duration // default 1s
	MaxBackoff time.Duration // default 60s
	// ScanInterval is how often Run looks for keys due a refresh.
	ScanInterval time.Duration // default 1s
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Observer, when set, is told of lookups, fetches and evictions (for
	// metrics); its calls must not block.
	Observer Observer
	// Store, when set, shares tokens with other proxies (see Store); the
	// cache stays the first level, and a hit never reaches the store.
	Store Store
	// Log, when set, gets a line for each token fetched (its key's name,
	// a fingerprint of the key, the token's lifetime) at info, and one for
	// each change between fetching and failing: the first failure at warn,
	// the recovery at info; repeated failures only at debug.
	Log *slog.Logger
}

// Observer sees what the cache does, by the name that begins each key (the
// text before its first NUL: the injector's name, by convention).
type Observer interface {
	// Looked is a Get or Peek: hit when a valid token was there.
	Looked(name string, hit bool)
	// Fetched is the end of a fetch that took d; refresh: a background
	// refresh of a token that was still valid.
	Fetched(name string, d time.Duration, refresh bool, err error)
	// Evicted is a key dropped to make room.
	Evicted(name string)
}

// KeyFingerprint is what logs and pages show of a key: the first 4 bytes
// of its SHA-256, in hex. A key holds values taken from requests (a mount
// id, a VIN), which are not shown.
func KeyFingerprint(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:4])
}

// KeyName is the name a key begins with: what precedes its first NUL.
func KeyName(key string) string {
	if i := strings.IndexByte(key, 0); i >= 0 {
		return key[:i]
	}
	return key
}

func (o *Options) defaults() {
	if o.Size <= 0 {
		o.Size = 1024
	}
	if o.RefreshFraction <= 0 || o.RefreshFraction >= 1 {
		o.RefreshFraction = 0.8
	}
	if o.MinMargin <= 0 {
		o.MinMargin = 30 * time.Second
	}
	if o.FetchTimeout <= 0 {
		o.FetchTimeout = 15 * time.Second
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(60*time.Second, o.MinBackoff)
	}
	if o.ScanInterval <= 0 {
		o.ScanInterval = time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

var never = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

// ErrExpired is wrapped by the error Get returns when a key's token has
// expired and its last fetch failed less than a backoff ago; ErrNoToken
// when no fetch of the key ever succeeded.
var (
	ErrExpired = errors.New("token expired and its issuer is failing")
	ErrNoToken = errors.New("no token obtained yet and its issuer is failing")
)

// Store shares tokens between proxies: a fleet of them then fetches each
// key once, as one proxy would. The cache calls it only to fetch (a miss,
// a due refresh); hits stay local.
type Store interface {
	// Fetch returns key's token and when it was fetched: the one the store
	// holds if fresh says it may be used, or else one fetched with fetch
	// by whichever proxy holds key's lock, the others waiting for it
	// (bounded by ctx). A token the store holds whose value is stale (an
	// upstream refused it) is dropped first, if it is still that value.
	// A store that cannot be reached fetches locally.
	Fetch(ctx context.Context, key, stale string, fresh func(Token, time.Time) bool, fetch FetchFunc) (Token, time.Time, error)
}

// RollingStore is a Store that also shares credentials that roll with
// every response (Cache.Rolling): the store holds the current value, read
// before every use, and each renewal replaces it atomically.
type RollingStore interface {
	Store
	// Up reports whether the store is reachable (false: each proxy on its
	// own until it is).
	Up() bool
	// Current returns key's value in the store, if it holds a valid one,
	// and when it was first fetched.
	Current(ctx context.Context, key string) (Token, time.Time, bool, error)
	// Replace swaps key's value for tok if the store still holds old, and
	// reports whether it did.
	Replace(ctx context.Context, key, old string, tok Token, fetchedAt time.Time) (bool, error)
	// Drop removes key's value if it is still value.
	Drop(ctx context.Context, key, value string) error
}

// Cache is safe for concurrent use. Build it with New; call Run to have
// keys in use refreshed in the background.
type Cache struct {
	opts    Options
	entries *lru.Cache[string, *entry]

	base    context.Context // parent of every fetch; cancelled when Run ends
	stop    context.CancelFunc
	wg      sync.WaitGroup // fetches in flight
	running atomic.Bool

	fetches    atomic.Int64
	forgetting atomic.Bool

	localMu  sync.RWMutex
	rolling  map[string]bool   // key names whose credential rolls (Rolling)
	identity map[string]string // key name -> what its credentials are (Identify)
}

type entry struct {
	key string

	mu        sync.Mutex
	fetch     FetchFunc // the latest caller's, reused by background refreshes
	tok       Token
	has       bool
	fetchedAt time.Time
	refreshAt time.Time
	usedAt    time.Time // last use, or attempted use
	call      *call     // the fetch in flight, if any
	failures  int
	retryAt   time.Time
	lastErr   error
	fetches   int    // ended fetches, successful or not
	replaced  int    // Replace calls since the last fetch (a rolling session's renewals)
	stale     string // a value Invalidate dropped, for the store to drop too
}

type call struct {
	done chan struct{}
	tok  Token
	err  error
}

// New builds a cache. It starts no goroutines.
func New(opts Options) *Cache {
	opts.defaults()
	c := &Cache{opts: opts}
	var onEvict func(string, *entry)
	if ob := opts.Observer; ob != nil {
		onEvict = func(key string, _ *entry) {
			if !c.forgetting.Load() { // Forget is no eviction
				ob.Evicted(KeyName(key))
			}
		}
	}
	entries, err := lru.NewWithEvict[string, *entry](opts.Size, onEvict)
	if err != nil {
		panic(err) // only for a non-positive size, which defaults() rules out
	}
	c.entries = entries
	c.base, c.stop = context.WithCancel(context.Background())
	return c
}

// Len reports how many keys the cache holds.
func (c *Cache) Len() int { return c.entries.Len() }

// Fetches reports how many fetches the cache has started.
func (c *Cache) Fetches() int64 { return c.fetches.Load() }

// Get returns the token for key, fetching it with fetch when there is no
// valid one. Concurrent callers share one fetch; each gives up when its own
// ctx ends, the fetch carrying on for the others. A valid token due a
// refresh is returned at once while the refresh runs in the background.
func (c *Cache) Get(ctx context.Context, key string, fetch FetchFunc) (Token, error) {
	e, ok := c.entries.Get(key)
	if !ok {
		e = &entry{key: key, fetch: fetch}
		if prev, found, _ := c.entries.PeekOrAdd(key, e); found {
			e = prev
		}
	}
	if rs := c.rollingStore(key); rs != nil {
		if tok, ok := c.current(ctx, rs, e); ok {
			return tok, nil
		}
	}
	now := c.opts.Now()
	e.mu.Lock()
	e.fetch = fetch
	valid := e.validLocked(now)
	c.looked(key, valid)
	if valid {
		tok := c.hitLocked(e, now)
		e.mu.Unlock()
		return tok, nil
	}
	e.usedAt = now
	if e.call == nil {
		if e.failures > 0 && now.Before(e.retryAt) {
			why := ErrExpired
			if e.fetchedAt.IsZero() {
				why = ErrNoToken
			}
			err := fmt.Errorf("%w (next attempt in %s): %w", why, e.retryAt.Sub(now).Round(time.Millisecond), e.lastErr)
			e.mu.Unlock()
			return Token{}, err
		}
		c.startLocked(e)
	}
	cl := e.call
	e.mu.Unlock()
	select {
	case <-cl.done:
		return cl.tok, cl.err
	case <-ctx.Done():
		return Token{}, ctx.Err()
	}
}

// current reads a rolling key's value from the store into e, and returns
// it if the store holds a valid one. When it holds none, e's value is
// dropped, so that the caller fetches (through the store: one proxy
// creates, the others take its value).
func (c *Cache) current(ctx context.Context, rs RollingStore, e *entry) (Token, bool) {
	sctx, cancel := context.WithTimeout(ctx, storeOpTimeout)
	tok, fetchedAt, ok, err := rs.Current(sctx, c.storeKey(e.key))
	cancel()
	if err != nil {
		return Token{}, false // the store is degraded now: the local value serves
	}
	now := c.opts.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	if !ok {
		e.has = false
		return Token{}, false // Get goes on, and counts the miss
	}
	c.looked(e.key, true)
	if !e.has || e.tok.Value.Reveal() != tok.Value.Reveal() {
		e.tok, e.has, e.fetchedAt = tok, true, fetchedAt
		e.refreshAt = c.refreshTime(fetchedAt, tok)
	}
	e.usedAt = now
	return tok, true
}

// Has reports whether the cache holds a valid token for key, and is not a
// use of it: nothing is counted, refreshed or kept from idling out (for
// readiness probes).
func (c *Cache) Has(key string) bool {
	e, ok := c.entries.Peek(key)
	if !ok {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.validLocked(c.opts.Now())
}

// Warm fetches key's token unless the cache holds a valid one, and tries
// again after each failure (waiting at least MinBackoff, as the cache
// would) until it has one or ctx ends.
func (c *Cache) Warm(ctx context.Context, key string, fetch FetchFunc) error {
	for {
		_, err := c.Get(ctx, key, fetch)
		if err == nil || ctx.Err() != nil {
			return ctx.Err()
		}
		select {
		case <-time.After(c.opts.MinBackoff):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Peek returns key's token when the cache holds a valid one, as Get would
// at once (starting a due refresh in the background), and false when Get
// would have to fetch or fail: it never fetches and never waits.
func (c *Cache) Peek(key string) (Token, bool) {
	if c.rollingStore(key) != nil {
		return Token{}, false // the store has the current value: Get reads it
	}
	e, ok := c.entries.Get(key)
	if !ok {
		c.looked(key, false)
		return Token{}, false
	}
	now := c.opts.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	valid := e.validLocked(now)
	c.looked(key, valid)
	if !valid {
		return Token{}, false
	}
	return c.hitLocked(e, now), true
}

func (c *Cache) looked(key string, hit bool) {
	if c.opts.Observer != nil {
		c.opts.Observer.Looked(KeyName(key), hit)
	}
}

// Soonest reports, per key name, when the soonest of its valid tokens
// expires (tokens without an expiry are left out).
func (c *Cache) Soonest() map[string]time.Time {
	now := c.opts.Now()
	out := map[string]time.Time{}
	for _, key := range c.entries.Keys() {
		e, ok := c.entries.Peek(key)
		if !ok {
			continue
		}
		e.mu.Lock()
		if e.validLocked(now) && !e.tok.Expiry.IsZero() {
			name := KeyName(key)
			if at, ok := out[name]; !ok || e.tok.Expiry.Before(at) {
				out[name] = e.tok.Expiry
			}
		}
		e.mu.Unlock()
	}
	return out
}

// hitLocked (e.mu held) is a use of e's valid token: it starts a refresh
// that is due, in the background.
func (c *Cache) hitLocked(e *entry, now time.Time) Token {
	e.usedAt = now
	if !now.Before(e.refreshAt) && e.call == nil && !now.Before(e.retryAt) {
		c.startLocked(e)
	}
	return e.tok
}

// Invalidate drops key's token if it is still value (an upstream refused
// it), so the next Get fetches afresh. It reports whether the cache no
// longer holds value: true when it was dropped now or had already been
// replaced, so a request sent with it may be retried with the current one.
// A token fetched less than MinBackoff ago is kept (and false returned):
// refusing a brand-new token is the upstream's problem, and dropping it
// would turn every refused request into a fetch.
func (c *Cache) Invalidate(key, value string) bool {
	e, ok := c.entries.Peek(key)
	if !ok {
		return true
	}
	now := c.opts.Now()
	e.mu.Lock()
	switch {
	case !e.has || e.tok.Value.Reveal() != value:
		// Already dropped or replaced here.
	case now.Sub(e.fetchedAt) < c.opts.MinBackoff:
		e.mu.Unlock()
		return false
	default:
		e.has = false
		e.failures, e.retryAt = 0, time.Time{}
		e.stale = value
	}
	e.mu.Unlock()
	if rs := c.rollingStore(key); rs != nil {
		// The retry reads the store: it must not find this value there,
		// even when another request's drop of it is still on its way.
		ctx, cancel := context.WithTimeout(context.Background(), storeOpTimeout)
		_ = rs.Drop(ctx, c.storeKey(key), value)
		cancel()
	}
	return true
}

// Replace swaps key's token for tok if the cache still holds old, and
// reports whether it did. A credential that rolls — renewed by every
// response, as ODIL's session is — is replaced this way: a response renews
// the value its request carried, so a late response to an older request
// can never bring back a value that was already superseded. The token's
// fetch time (and so its refresh time) is kept.
func (c *Cache) Replace(key, old string, tok Token) bool {
	e, ok := c.entries.Peek(key)
	if !ok {
		return false
	}
	if rs := c.rollingStore(key); rs != nil {
		e.mu.Lock()
		fetchedAt := e.fetchedAt
		e.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), storeOpTimeout)
		done, err := rs.Replace(ctx, c.storeKey(key), old, tok, fetchedAt)
		cancel()
		if err == nil && !done {
			return false // the fleet has moved on from old
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.has || e.tok.Value.Reveal() != old {
		return false
	}
	e.tok = tok
	e.usedAt = c.opts.Now()
	e.replaced++
	return true
}

// Rolling marks every key that name begins as a credential that rolls
// with every response (Replace): with a RollingStore, each use reads the
// current value from the store (Peek then never answers, so that no
// caller that must not wait does), and each renewal and each drop is made
// in the store first, so that no proxy of the fleet uses a value another
// has seen replaced. With a plain Store such keys are not shared.
func (c *Cache) Rolling(name string) {
	c.localMu.Lock()
	defer c.localMu.Unlock()
	if c.rolling == nil {
		c.rolling = map[string]bool{}
	}
	c.rolling[name] = true
}

// Identify says what makes the credentials of every key that name begins
// what they are — their issuer, their client, a hash of its secret or
// key — so that a Store keys them by it too: proxies whose configs give
// the same injector name to other credentials never share a token.
func (c *Cache) Identify(name string, parts ...string) {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	c.localMu.Lock()
	defer c.localMu.Unlock()
	if c.identity == nil {
		c.identity = map[string]string{}
	}
	c.identity[name] = hex.EncodeToString(h.Sum(nil)[:16])
}

// StoreKey is key as the Store knows it (with its name's identity), for
// injectors that keep other state in the store.
func (c *Cache) StoreKey(key string) string { return c.storeKey(key) }

// storeKey is key as the Store knows it: with its name's identity.
func (c *Cache) storeKey(key string) string {
	c.localMu.RLock()
	defer c.localMu.RUnlock()
	if id := c.identity[KeyName(key)]; id != "" {
		return key + "\x00" + id
	}
	return key
}

func (c *Cache) isRolling(key string) bool {
	c.localMu.RLock()
	defer c.localMu.RUnlock()
	return c.rolling[KeyName(key)]
}

// store is the Store that key's fetches go through, or nil.
func (c *Cache) store(key string) Store {
	if c.opts.Store == nil {
		return nil
	}
	if _, ok := c.opts.Store.(RollingStore); !ok && c.isRolling(key) {
		return nil
	}
	return c.opts.Store
}

// rollingStore is the RollingStore a rolling key is read through now: nil
// for other keys, without one, and while it is unreachable.
func (c *Cache) rollingStore(key string) RollingStore {
	rs, ok := c.opts.Store.(RollingStore)
	if !ok || !rs.Up() || !c.isRolling(key) {
		return nil
	}
	return rs
}

// storeOpTimeout bounds a rolling key's store reads and writes made on a
// request's behalf.
const storeOpTimeout = time.Second

// StoreState reports whether a Store is configured and, if it tells,
// whether it is reachable (tokens shared) or not (degraded).
func (c *Cache) StoreState() (configured, up bool) {
	if c.opts.Store == nil {
		return false, false
	}
	if u, ok := c.opts.Store.(interface{ Up() bool }); ok {
		return true, u.Up()
	}
	return true, true
}

// Renew keeps the valid tokens of every key that name begins, for an
// injector whose credentials (not its configuration) a reload changed:
// each is due a refresh at once, which its next lookup starts with the new
// injector's fetch (the old one's is dropped, so no background refresh
// uses the old credentials); until a fetch succeeds, the kept token is
// served, as a token whose refresh fails is, and it expires as it would
// have. Keys with no valid token are dropped. It returns how many tokens
// it kept.
func (c *Cache) Renew(name string) (kept int) {
	now := c.opts.Now()
	var drop []string
	for _, key := range c.entries.Keys() {
		if KeyName(key) != name {
			continue
		}
		e, ok := c.entries.Peek(key)
		if !ok {
			continue
		}
		e.mu.Lock()
		if e.validLocked(now) {
			e.refreshAt, e.fetch = now, nil
			kept++
		} else {
			drop = append(drop, key)
		}
		e.mu.Unlock()
	}
	c.forgetting.Store(true)
	defer c.forgetting.Store(false)
	for _, key := range drop {
		c.entries.Remove(key)
	}
	return kept
}

// Forget drops every key that name begins, so its next lookup fetches
// afresh (an injector replaced by a reload starts with no tokens).
func (c *Cache) Forget(name string) {
	c.forgetting.Store(true)
	defer c.forgetting.Store(false)
	for _, key := range c.entries.Keys() {
		if KeyName(key) == name {
			c.entries.Remove(key)
		}
	}
}

// Entry describes one key of the cache, for a status page: never its
// token.
type Entry struct {
	Name string // the key's name (its injector)
	// Key is the key's fingerprint (KeyFingerprint), as fetch log lines
	// name it: the key itself holds values taken from requests (mount
	// ids, VINs) and is not shown.
	Key        string
	Valid      bool      // a valid token is held
	Refreshing bool      // a fetch is in flight
	Expiry     time.Time // of the token held (zero: none, or no expiry)
	RefreshAt  time.Time // when it is refreshed in the background
	FetchedAt  time.Time // when the token held was fetched
	Failures   int       // consecutive failed fetches
	RetryAt    time.Time // no fetch before then, after failures
	LastErr    string    // the latest failure's message (the injectors' are scrubbed)
	Fetches    int       // ended fetches
	Renewals   int       // Replace calls since the last fetch
}

// Entries describes every key, sorted by name and key.
func (c *Cache) Entries() []Entry {
	var out []Entry
	for _, key := range c.entries.Keys() {
		e, ok := c.entries.Peek(key)
		if !ok {
			continue
		}
		e.mu.Lock()
		en := Entry{Name: KeyName(key), Key: KeyFingerprint(key), Valid: e.validLocked(c.opts.Now()), Refreshing: e.call != nil,
			FetchedAt: e.fetchedAt, Failures: e.failures, RetryAt: e.retryAt, Fetches: e.fetches, Renewals: e.replaced}
		if e.has {
			en.Expiry, en.RefreshAt = e.tok.Expiry, e.refreshAt
		}
		if e.lastErr != nil {
			en.LastErr = e.lastErr.Error()
		}
		e.mu.Unlock()
		out = append(out, en)
	}
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Name+"\x00"+a.Key, b.Name+"\x00"+b.Key) })
	return out
}

func (e *entry) validLocked(now time.Time) bool {
	if !e.has {
		return false
	}
	if !e.tok.Expiry.IsZero() && !now.Before(e.tok.Expiry) {
		return false
	}
	return e.tok.IdleTimeout == 0 || now.Sub(e.usedAt) < e.tok.IdleTimeout
}

// startLocked starts the one fetch for e. e.mu is held.
func (c *Cache) startLocked(e *entry) {
	cl := &call{done: make(chan struct{})}
	e.call = cl
	fetch := e.fetch
	refresh := e.validLocked(c.opts.Now())
	stale := e.stale
	e.stale = ""
	st := c.store(e.key)
	c.wg.Add(1)
	c.fetches.Add(1)
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(c.base, c.opts.FetchTimeout)
		began := time.Now()
		var tok Token
		var err error
		fetchedAt := time.Time{}
		if st != nil {
			tok, fetchedAt, err = st.Fetch(ctx, c.storeKey(e.key), stale, c.fresh, fetch)
		} else {
			tok, err = fetch(ctx)
		}
		cancel()
		if ob := c.opts.Observer; ob != nil {
			ob.Fetched(KeyName(e.key), time.Since(began), refresh, err)
		}
		now := c.opts.Now()
		e.mu.Lock()
		c.logFetch(e, tok, err, now)
		e.fetches++
		if err == nil {
			e.replaced = 0
		}
		if err == nil {
			if fetchedAt.IsZero() || fetchedAt.After(now) {
				fetchedAt = now
			}
			e.tok, e.has = tok, true
			e.fetchedAt, e.usedAt = fetchedAt, now
			e.refreshAt = c.refreshTime(fetchedAt, tok)
			e.failures, e.retryAt, e.lastErr = 0, time.Time{}, nil
		} else {
			e.failures++
			e.lastErr = err
			e.retryAt = now.Add(c.backoff(e.failures))
		}
		cl.tok, cl.err = tok, err
		e.call = nil
		e.mu.Unlock()
		close(cl.done)
	}()
}

// logFetch logs a fetch's end (e.mu held, before e records it).
func (c *Cache) logFetch(e *entry, tok Token, err error, now time.Time) {
	l := c.opts.Log
	if l == nil {
		return
	}
	args := []any{"injector", KeyName(e.key), "key", KeyFingerprint(e.key)}
	switch {
	case err == nil:
		life := "none"
		if !tok.Expiry.IsZero() {
			life = tok.Expiry.Sub(now).Round(time.Second).String()
		}
		args = append(args, "lifetime", life)
		if e.failures > 0 {
			l.Info("token fetched: the issuer answers again", append(args, "after_failures", e.failures)...)
			return
		}
		l.Info("token fetched", args...)
	case e.failures == 0:
		l.Warn("token fetch failing", append(args, "err", err)...)
	default:
		l.Debug("token fetch failed again", append(args, "failures", e.failures+1, "err", err)...)
	}
}

// fresh reports whether a token fetched at fetchedAt (by any proxy) may
// be taken as it is: valid, and not yet due a refresh.
func (c *Cache) fresh(tok Token, fetchedAt time.Time) bool {
	now := c.opts.Now()
	return (tok.Expiry.IsZero() || now.Before(tok.Expiry)) && now.Before(c.refreshTime(fetchedAt, tok))
}

// refreshTime is when a token fetched at now is refreshed: after
// RefreshFraction of its lifetime, at the latest MinMargin before expiry,
// but never before half its lifetime, or RefreshFraction of it when that
// is less (a short token must not be refreshed at once for the margin's
// sake; a fraction below one half is the operator's choice and honoured).
func (c *Cache) refreshTime(now time.Time, tok Token) time.Time {
	if tok.Expiry.IsZero() {
		return never
	}
	life := tok.Expiry.Sub(now)
	at := now.Add(time.Duration(float64(life) * c.opts.RefreshFraction))
	if latest := tok.Expiry.Add(-c.opts.MinMargin); latest.Before(at) {
		at = latest
	}
	if earliest := now.Add(time.Duration(float64(life) * min(c.opts.RefreshFraction, 0.5))); at.Before(earliest) {
		at = earliest
	}
	return at
}

func (c *Cache) backoff(failures int) time.Duration { return c.opts.Backoff(failures) }

// Backoff is the wait after failures consecutive failed fetches:
// exponential from MinBackoff to MaxBackoff, with ±50% jitter (o with its
// defaults applied: see WithDefaults). A Store that backs off for a fleet
// uses it too.
func (o Options) Backoff(failures int) time.Duration {
	d := o.MinBackoff << min(failures-1, 30)
	if d > o.MaxBackoff || d <= 0 {
		d = o.MaxBackoff
	}
	return time.Duration(float64(d) * (0.5 + rand.Float64()))
}

// WithDefaults is o with every zero value replaced by its default.
func (o Options) WithDefaults() Options {
	o.defaults()
	return o
}

// RefreshDue starts a background fetch for every key used since its last
// fetch whose token is due a refresh, or has expired (or was never
// fetched) and was wanted within the last 5×MaxBackoff, once its backoff
// has passed. Run calls it every ScanInterval.
func (c *Cache) RefreshDue() {
	now := c.opts.Now()
	for _, key := range c.entries.Keys() {
		e, ok := c.entries.Peek(key)
		if !ok {
			continue
		}
		e.mu.Lock()
		wanted := e.usedAt.After(e.fetchedAt) // used since the last fetch
		var due bool
		if e.validLocked(now) {
			due = !now.Before(e.refreshAt)
		} else {
			// Expired or never fetched: keep trying while there is demand.
			due = now.Sub(e.usedAt) <= 5*c.opts.MaxBackoff
		}
		if wanted && due && e.call == nil && !now.Before(e.retryAt) && e.fetch != nil {
			c.startLocked(e)
		}
		e.mu.Unlock()
	}
}

// Run refreshes keys in use in the background until ctx ends, then cancels
// fetches in flight and waits for them. Calls after the first (several
// injectors share one cache) just wait for their ctx.
func (c *Cache) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		<-ctx.Done()
		return ctx.Err()
	}
	t := time.NewTicker(c.opts.ScanInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			c.stop()
			c.wg.Wait()
			return ctx.Err()
		case <-t.C:
			c.RefreshDue()
		}
	}
}
