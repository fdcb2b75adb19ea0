package redisstore_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/internal/redistest"
	"github.com/authproxy/authproxy/sim"
	"github.com/authproxy/authproxy/tokencache"
	"github.com/authproxy/authproxy/tokencache/redisstore"
)

const testKey = "0123456789abcdef0123456789abcdef-fleet-key"

// replica is one proxy's cache on the shared store.
type replica struct {
	cache *tokencache.Cache
	store *redisstore.Store
}

func newReplica(t testing.TB, addr string, opts tokencache.Options, mod func(*redisstore.Options)) *replica {
	t.Helper()
	so := redisstore.Options{Address: addr, EncryptionKey: []byte(testKey), KeyPrefix: "test:",
		FetchTimeout: opts.FetchTimeout, MinBackoff: opts.MinBackoff, MaxBackoff: opts.MaxBackoff}
	if mod != nil {
		mod(&so)
	}
	st, err := redisstore.New(so)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	opts.Store = st
	return &replica{cache: tokencache.New(opts), store: st}
}

// issuer counts fetches and hands out numbered tokens.
type issuer struct {
	calls atomic.Int64
	delay time.Duration
	life  time.Duration
	fail  atomic.Bool
}

func (is *issuer) fetch(ctx context.Context) (tokencache.Token, error) {
	n := is.calls.Add(1)
	select {
	case <-time.After(is.delay):
	case <-ctx.Done():
		return tokencache.Token{}, ctx.Err()
	}
	if is.fail.Load() {
		return tokencache.Token{}, errors.New("issuer says no")
	}
	tok := tokencache.Token{Value: config.NewSecret(fmt.Sprintf("tok-%d-s3cr3t-value", n))}
	if is.life > 0 {
		tok.Expiry = time.Now().Add(is.life)
	}
	return tok, nil
}

// 300 concurrent cold requests spread over 3 proxies cost one fetch.
func TestFleetColdBurstFetchesOnce(t *testing.T) {
	srv := redistest.Start(t)
	is := &issuer{delay: 200 * time.Millisecond, life: time.Hour}
	var reps []*replica
	for range 3 {
		reps = append(reps, newReplica(t, srv.Addr, tokencache.Options{}, nil))
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[string]int{}
	for i := range 300 {
		wg.Go(func() {
			tok, err := reps[i%3].cache.Get(context.Background(), "obh\x00mount:m1", is.fetch)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				got["error: "+err.Error()]++
				return
			}
			got[tok.Value.Reveal()]++
		})
	}
	wg.Wait()
	if n := is.calls.Load(); n != 1 {
		t.Errorf("%d fetches at the issuer for 300 cold requests over 3 proxies, want 1", n)
	}
	if len(got) != 1 || got["tok-1-s3cr3t-value"] != 300 {
		t.Errorf("tokens handed out: %v, want the one token 300 times", got)
	}
}

// Under steady load on 3 proxies over several lifetimes, the fleet
// refreshes once per lifetime in all, and a valid token is always held.
func TestFleetRefreshesOncePerLifetime(t *testing.T) {
	srv := redistest.Start(t)
	const life = 2 * time.Second
	is := &issuer{life: life}
	opts := tokencache.Options{RefreshFraction: 0.5, MinMargin: 100 * time.Millisecond, ScanInterval: 20 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var reps []*replica
	for range 3 {
		r := newReplica(t, srv.Addr, opts, nil)
		go r.cache.Run(ctx)
		reps = append(reps, r)
	}
	key := "obh\x00mount:m1"
	if _, err := reps[0].cache.Get(ctx, key, is.fetch); err != nil {
		t.Fatal(err)
	}
	const run = 5 * time.Second
	misses := 0
	for end := time.Now().Add(run); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		for _, r := range reps {
			if _, ok := r.cache.Peek(key); !ok {
				// The first use on a replica fetches from the store.
				if _, err := r.cache.Get(ctx, key, is.fetch); err != nil {
					t.Fatal(err)
				}
				misses++
			}
		}
	}
	// One fetch, then one refresh per half lifetime (RefreshFraction 0.5).
	want := 1 + int(run/(life/2))
	if n := int(is.calls.Load()); n > want+1 || n < want-2 {
		t.Errorf("%d fetches over %v with a %v token on 3 proxies, want about %d (one per refresh, fleet-wide)", n, run, life, want)
	}
	if misses > 2 {
		t.Errorf("%d lookups found no valid token after the first (want 2: each other replica's first use)", misses)
	}
}

// A proxy that dies holding the lock (it never renews its lease) delays
// the others by at most the lease: one of them then fetches.
func TestALockHolderThatDiesIsReplaced(t *testing.T) {
	srv := redistest.Start(t)
	is := &issuer{life: time.Hour}
	opts := tokencache.Options{FetchTimeout: 3 * time.Second}
	r := newReplica(t, srv.Addr, opts, nil)
	// A dead proxy's lock: taken, never renewed, never released.
	dead := newReplica(t, srv.Addr, opts, nil)
	key := "odil\x00TR:SB:OneDealer:OD"
	lockKey := lockOf(t, srv, dead, key)
	if err := srv.Client().Set(context.Background(), lockKey, "99999-dead", time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	tok, err := r.cache.Get(context.Background(), key, is.fetch)
	if err != nil {
		t.Fatalf("after the holder died: %v", err)
	}
	if waited := time.Since(began); waited < 900*time.Millisecond || waited > 3*time.Second {
		t.Errorf("waited %v for a dead holder's lease of 1 s", waited)
	}
	if tok.Value.Reveal() != "tok-1-s3cr3t-value" || is.calls.Load() != 1 {
		t.Errorf("token %q after %d fetches", tok.Value.Reveal(), is.calls.Load())
	}
}

// lockOf finds the store's lock key for key, by letting dead take it once.
func lockOf(t *testing.T, srv *redistest.Server, dead *replica, key string) string {
	t.Helper()
	c := srv.Client()
	defer c.Close()
	var keys []string
	var err error
	_, _ = dead.cache.Get(context.Background(), key, func(ctx context.Context) (tokencache.Token, error) {
		keys, err = c.Keys(ctx, "test:l:*").Result() // on the cache's goroutine: checked below
		return tokencache.Token{}, errors.New("dead before answering")
	})
	if err != nil || len(keys) != 1 {
		t.Fatalf("locks while fetching: %v %v", keys, err)
	}
	lock := keys[0]
	// Forget the failure this left, so only the lock matters.
	if err := c.Del(context.Background(), strings.Replace(lock, ":l:", ":t:", 1)).Err(); err != nil {
		t.Fatal(err)
	}
	return lock
}

// A token an upstream refused is dropped from the store only if the store
// still holds it; a newer one another proxy fetched stays.
func TestStaleDropIsCompareAndDelete(t *testing.T) {
	srv := redistest.Start(t)
	is := &issuer{life: time.Hour}
	opts := tokencache.Options{MinBackoff: time.Millisecond}
	a, b := newReplica(t, srv.Addr, opts, nil), newReplica(t, srv.Addr, opts, nil)
	key := "obh\x00mount:m1"
	ctx := context.Background()
	t1, _ := a.cache.Get(ctx, key, is.fetch)
	t1b, _ := b.cache.Get(ctx, key, is.fetch)
	if t1.Value.Reveal() != t1b.Value.Reveal() || is.calls.Load() != 1 {
		t.Fatalf("b did not take a's token: %q %q", t1.Value.Reveal(), t1b.Value.Reveal())
	}
	time.Sleep(5 * time.Millisecond) // past MinBackoff
	// a's upstream refuses token 1: a drops it, here and in the store.
	if !a.cache.Invalidate(key, t1.Value.Reveal()) {
		t.Fatal("a kept the refused token")
	}
	t2, err := a.cache.Get(ctx, key, is.fetch)
	if err != nil || t2.Value.Reveal() != "tok-2-s3cr3t-value" {
		t.Fatalf("a after the refusal: %q %v", t2.Value.Reveal(), err)
	}
	// b's upstream refuses token 1 too, later: token 2 stays in the store.
	time.Sleep(5 * time.Millisecond)
	b.cache.Invalidate(key, t1.Value.Reveal())
	t2b, err := b.cache.Get(ctx, key, is.fetch)
	if err != nil || t2b.Value.Reveal() != "tok-2-s3cr3t-value" || is.calls.Load() != 2 {
		t.Errorf("b after refusing the old token: %q %v, %d fetches; want a's token 2 and no third fetch", t2b.Value.Reveal(), err, is.calls.Load())
	}
}

// A failed fetch makes the whole fleet back off: another proxy does not
// ask the issuer again before the backoff has passed.
func TestBackoffIsShared(t *testing.T) {
	srv := redistest.Start(t)
	is := &issuer{life: time.Hour}
	is.fail.Store(true)
	opts := tokencache.Options{MinBackoff: 2 * time.Second, MaxBackoff: 2 * time.Second}
	a, b := newReplica(t, srv.Addr, opts, nil), newReplica(t, srv.Addr, opts, nil)
	key := "obelisk\x00"
	if _, err := a.cache.Get(context.Background(), key, is.fetch); err == nil {
		t.Fatal("a failing issuer gave a token")
	}
	_, err := b.cache.Get(context.Background(), key, is.fetch)
	if err == nil || !strings.Contains(err.Error(), "backs off") || !strings.Contains(err.Error(), "issuer says no") {
		t.Errorf("b during a's backoff: %v, want the shared backoff naming the failure", err)
	}
	if n := is.calls.Load(); n != 1 {
		t.Errorf("%d fetches at a failing issuer from 2 proxies within the backoff, want 1", n)
	}
}

// The store never holds a token, a secret, a scope, a VIN or a key name in
// the clear, nor in base64 or hex.
func TestStoreHoldsNothingInTheClear(t *testing.T) {
	srv := redistest.Start(t)
	r := newReplica(t, srv.Addr, tokencache.Options{}, nil)
	secrets := []string{"viss", "WVWZZZ1JZXW000001", "Independent+OEM+Cloud", "pay-how-you-drive", "obh", "mount:BgfBtrPrRPaz7pQU",
		"eyJhbGciOiJSUzI1NiJ9.payload.sig-of-the-token", testKey}
	for i, key := range []string{"viss\x00WVWZZZ1JZXW000001\x00Independent+OEM+Cloud\x00pay-how-you-drive", "obh\x00openid mount:BgfBtrPrRPaz7pQU"} {
		_, err := r.cache.Get(context.Background(), key, func(context.Context) (tokencache.Token, error) {
			if i == 1 {
				return tokencache.Token{}, errors.New("scope mount:BgfBtrPrRPaz7pQU refused")
			}
			return tokencache.Token{Value: config.NewSecret("eyJhbGciOiJSUzI1NiJ9.payload.sig-of-the-token"), Expiry: time.Now().Add(time.Hour)}, nil
		})
		if (err != nil) != (i == 1) {
			t.Fatal(err)
		}
	}
	c := srv.Client()
	defer c.Close()
	ctx := context.Background()
	keys, err := c.Keys(ctx, "*").Result()
	if err != nil || len(keys) != 2 {
		t.Fatalf("keys %v %v, want a record per cache key", keys, err)
	}
	var dump strings.Builder
	for _, k := range keys {
		dump.WriteString(k + "\n")
		m, err := c.HGetAll(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		fields := slices.Sorted(func(yield func(string) bool) {
			for f := range m {
				if !yield(f) {
					return
				}
			}
		})
		for _, f := range fields {
			dump.WriteString(f + "=" + m[f] + "\n")
		}
	}
	for _, s := range secrets {
		for _, form := range []string{s, base64.StdEncoding.EncodeToString([]byte(s)), base64.RawURLEncoding.EncodeToString([]byte(s)), hex.EncodeToString([]byte(s))} {
			if strings.Contains(dump.String(), form) {
				t.Errorf("the store holds %q (or an encoding of it):\n%s", s, dump.String())
			}
		}
	}
	// Another encryption key (another fleet) cannot read the records: its
	// keys differ, and so it fetches its own.
	other := newReplica(t, srv.Addr, tokencache.Options{}, func(o *redisstore.Options) { o.EncryptionKey = []byte(strings.Repeat("k", 40)) })
	fetched := false
	other.cache.Get(ctx, "viss\x00WVWZZZ1JZXW000001\x00Independent+OEM+Cloud\x00pay-how-you-drive", func(context.Context) (tokencache.Token, error) {
		fetched = true
		return tokencache.Token{Value: config.NewSecret("theirs"), Expiry: time.Now().Add(time.Hour)}, nil
	})
	if !fetched {
		t.Error("a proxy with another encryption key took this fleet's token")
	}
}

// When the store stops, every proxy fetches on its own and requests keep
// working; the state change is reported once; when the store is back, the
// proxies share again.
func TestDegradedModeAndRejoin(t *testing.T) {
	srv := redistest.Start(t)
	is := &issuer{life: time.Hour}
	var mu sync.Mutex
	var states []bool
	r := newReplica(t, srv.Addr, tokencache.Options{}, func(o *redisstore.Options) {
		o.OnState = func(up bool) { mu.Lock(); states = append(states, up); mu.Unlock() }
	})
	ctx := context.Background()
	if _, err := r.cache.Get(ctx, "a\x00", is.fetch); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	for i := range 20 {
		if _, err := r.cache.Get(ctx, fmt.Sprintf("b\x00%d", i), is.fetch); err != nil {
			t.Fatalf("request %d with the store down: %v", i, err)
		}
	}
	if r.store.Up() {
		t.Error("the store is down and Up says shared")
	}
	srv.Restart()
	deadline := time.Now().Add(5 * time.Second)
	for !r.store.Up() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !r.store.Up() {
		t.Fatal("the store is back and Up still says degraded after 5 s")
	}
	mu.Lock()
	if !slices.Equal(states, []bool{false, true}) {
		t.Errorf("state changes reported: %v, want [false true]", states)
	}
	mu.Unlock()
	// Shared again: a second proxy takes the token the first one stores.
	if _, err := r.cache.Get(ctx, "c\x00", is.fetch); err != nil {
		t.Fatal(err)
	}
	before := is.calls.Load()
	other := newReplica(t, srv.Addr, tokencache.Options{}, nil)
	if _, err := other.cache.Get(ctx, "c\x00", is.fetch); err != nil || is.calls.Load() != before {
		t.Errorf("after the store came back, another proxy fetched again (%v)", err)
	}
}

// A local hit costs what it costs without a store; a local miss served
// from the store is one round trip.
func BenchmarkSharedLocalHit(b *testing.B) {
	srv := redistest.Start(b)
	r := newReplica(b, srv.Addr, tokencache.Options{}, nil)
	is := &issuer{life: time.Hour}
	ctx := context.Background()
	if _, err := r.cache.Get(ctx, "k\x00", is.fetch); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := r.cache.Get(ctx, "k\x00", is.fetch); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSharedLocalMissFromStore(b *testing.B) {
	srv := redistest.Start(b)
	is := &issuer{life: time.Hour}
	ctx := context.Background()
	warm := newReplica(b, srv.Addr, tokencache.Options{}, nil)
	if _, err := warm.cache.Get(ctx, "k\x00", is.fetch); err != nil {
		b.Fatal(err)
	}
	r := newReplica(b, srv.Addr, tokencache.Options{}, nil)
	var lat []time.Duration
	b.ResetTimer()
	for b.Loop() {
		r.cache.Forget("k") // a local miss each time
		began := time.Now()
		if _, err := r.cache.Get(ctx, "k\x00", is.fetch); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(began))
	}
	b.StopTimer()
	if is.calls.Load() != 1 {
		b.Fatalf("%d fetches at the issuer, want 1", is.calls.Load())
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// writeServerCert writes a certificate for names from pki's CA, and its key.
func writeServerCert(t *testing.T, pki *sim.PKI, dir string, names ...string) (certFile, keyFile string) {
	t.Helper()
	cert, err := pki.CA.Issue(names...)
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "redis.crt"), filepath.Join(dir, "redis.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), 0o600)
	return certFile, keyFile
}

// token_cache.shared with tls: true, built from a config as the proxy
// builds it: the store's certificate is verified against the upstream
// roots (upstream.ca_file) for the name in address (pinned by
// upstream.resolve). A store whose certificate is not trusted is never
// used: the proxy fetches on its own.
func TestTLSStoreFromTheConfig(t *testing.T) {
	dir := t.TempDir()
	pki, err := sim.NewPKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := writeServerCert(t, pki, dir, "redis.fleet.test")
	srv := redistest.StartTLS(t, certFile, keyFile, pki.CAFile)
	other, _ := sim.NewPKI(t.TempDir()) // a CA the proxy does not trust
	build := func(caFile string) *replica {
		t.Helper()
		cfg, err := config.Parse([]byte(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.example.com"}
upstream: {ca_file: %q, resolve: {redis.fleet.test: 127.0.0.1}}
token_cache:
  shared: {address: "redis.fleet.test:%d", tls: true, encryption_key: {value: %q}}
injectors:
  tok: {kind: static, headers: {X-Key: {value: k}}}
routes:
  - {name: api, match: {path: /v1/*}, injector: tok}
`, caFile, srv.Port(), testKey)))
		if err != nil {
			t.Fatal(err)
		}
		st, err := injectors.NewStore(cfg, injectors.Env{})
		if err != nil || st == nil {
			t.Fatalf("store: %v", err)
		}
		t.Cleanup(func() { st.Close() })
		return &replica{cache: tokencache.New(tokencache.Options{Store: st}), store: st}
	}
	is := &issuer{life: time.Hour}
	ctx := context.Background()
	a, b := build(pki.CAFile), build(pki.CAFile)
	for _, r := range []*replica{a, b} {
		if _, err := r.cache.Get(ctx, "k\x00", is.fetch); err != nil {
			t.Fatal(err)
		}
	}
	if n := is.calls.Load(); n != 1 || !a.store.Up() || !b.store.Up() {
		t.Errorf("over TLS: %d fetches for 2 proxies (want 1), up %v %v", n, a.store.Up(), b.store.Up())
	}
	untrusting := build(other.CAFile)
	if _, err := untrusting.cache.Get(ctx, "k\x00", is.fetch); err != nil {
		t.Fatal(err)
	}
	if untrusting.store.Up() || is.calls.Load() != 2 {
		t.Errorf("a store with an untrusted certificate: up %v, %d fetches; want degraded and a fetch of its own", untrusting.store.Up(), is.calls.Load())
	}
}

// redisCLI runs redis-cli against srv, as anyone who can write to the
// store could.
func redisCLI(t *testing.T, srv *redistest.Server, args ...string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(srv.Addr)
	out, err := exec.Command("redis-cli", append([]string{"-h", host, "-p", port}, args...)...).CombinedOutput()
	if err != nil || strings.HasPrefix(string(out), "ERR") {
		t.Fatalf("redis-cli %v: %v %s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

func unexpired(tok tokencache.Token, _ time.Time) bool {
	return tok.Expiry.IsZero() || time.Now().Before(tok.Expiry)
}

// Whoever can write to the store but does not hold the encryption key
// cannot make the fleet back off, hold it from fetching, or keep a stale
// token in place: a forged or garbage value in any field a proxy reads
// (the sealed token d and its fingerprint fp, the back-off fe and the
// clear fields fu and fn of earlier versions, the lock and a lease) is
// ignored, replaced by the next fetch, and counted; a back-off sealed by a
// proxy with a longer max_backoff is cut to the reader's own.
func TestForgedStoreFieldsAreIgnored(t *testing.T) {
	srv := redistest.Start(t)
	opts := tokencache.Options{MinBackoff: time.Second, MaxBackoff: 2 * time.Second, FetchTimeout: 30 * time.Second}
	a := newReplica(t, srv.Addr, opts, nil)
	is := &issuer{life: time.Hour}
	key := "forged\x00"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fetch := func(t *testing.T, when string) {
		t.Helper()
		start := time.Now()
		ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if _, _, err := a.store.Fetch(ctx, key, "", unexpired, is.fetch); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("%s: the fetch waited %v", when, d)
		}
	}
	fetch(t, "first fetch")
	rec := redisCLI(t, srv, "--scan", "--pattern", "test:t:*")
	if rec == "" || strings.Contains(rec, "\n") {
		t.Fatalf("records: %q, want one", rec)
	}
	lock := "test:l:" + strings.TrimPrefix(rec, "test:t:")
	farFuture := strconv.FormatInt(time.Now().Add(640496*time.Hour).UnixMilli(), 10)

	for _, tc := range []struct {
		name    string
		forge   []string
		refetch bool // the token is dropped first: the forgery stands in a fetch's way
	}{
		{"clear fu and fn of earlier versions", []string{"HSET", rec, "fu", farFuture, "fn", "999999"}, true},
		{"garbage fe", []string{"HSET", rec, "fe", "not-hex"}, true},
		{"hex fe sealed with another key", []string{"HSET", rec, "fe", strings.Repeat("ab", 60)}, true},
		{"garbage d", []string{"HSET", rec, "d", "zz"}, false},
		{"fp not the token's", []string{"HSET", rec, "fp", strings.Repeat("0", 32)}, false},
		{"a lock with no expiry", []string{"SET", lock, "someone"}, true},
		{"a lock with a year's lease", []string{"SET", lock, "someone", "PX", "31536000000"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			redisCLI(t, srv, "DEL", rec, lock) // each forgery on a clean record
			fetch(t, "a clean record")
			before, rejected := is.calls.Load(), a.store.Rejected()
			if tc.refetch {
				redisCLI(t, srv, "HDEL", rec, "d", "fp")
			}
			redisCLI(t, srv, tc.forge...)
			fetch(t, "after the forgery")
			if is.calls.Load() == before {
				t.Error("no fetch: the forged record was taken as the fleet's")
			}
			if tc.name != "clear fu and fn of earlier versions" && a.store.Rejected() == rejected {
				t.Error("the forgery was not counted")
			}
			if fields := redisCLI(t, srv, "HKEYS", rec); strings.Contains(fields, "fu") || strings.Contains(fields, "fe") {
				t.Errorf("the forged fields were not replaced: %q", fields)
			}
			if n := redisCLI(t, srv, "EXISTS", lock); n != "0" {
				t.Errorf("the forged lock is still there")
			}
		})
	}

	// A back-off sealed by a proxy whose max_backoff is an hour: the
	// reader waits no longer than its own (2 s, with jitter up to 3 s).
	long := newReplica(t, srv.Addr, tokencache.Options{MinBackoff: time.Hour, MaxBackoff: time.Hour}, nil)
	redisCLI(t, srv, "DEL", rec, lock)
	is.fail.Store(true)
	if _, _, err := long.store.Fetch(ctx, key, "", unexpired, is.fetch); err == nil {
		t.Fatal("a failing issuer gave a token")
	}
	if fe := redisCLI(t, srv, "HGET", rec, "fe"); fe == "" || strings.Contains(fe, "issuer says no") {
		t.Errorf("the back-off is not sealed: %q", fe)
	}
	rejected := a.store.Rejected()
	_, _, err := a.store.Fetch(ctx, key, "", unexpired, is.fetch)
	if err == nil || !strings.Contains(err.Error(), "backs off") || !strings.Contains(err.Error(), "issuer says no") {
		t.Fatalf("during the long back-off: %v, want the shared back-off naming the failure", err)
	}
	m := regexp.MustCompile(`for (\S+) after`).FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("no wait in %q", err)
	}
	if d, perr := time.ParseDuration(m[1]); perr != nil || d > 3*time.Second {
		t.Errorf("the reader backs off for %s (%v), want at most its own 1.5 x max_backoff (3s)", m[1], perr)
	}
	if a.store.Rejected() == rejected {
		t.Error("the back-off beyond the reader's bound was not counted")
	}

	// A lease no proxy could hold (no expiry) is taken over and counted;
	// a live one is not.
	if got, err := a.store.Lease(ctx, "session", 10*time.Second); err != nil || !got {
		t.Fatalf("a free lease: %v %v", got, err)
	}
	leases := strings.Fields(redisCLI(t, srv, "--scan", "--pattern", "test:l:*"))
	if len(leases) != 1 {
		t.Fatalf("lease keys: %q, want one", leases)
	}
	b := newReplica(t, srv.Addr, opts, nil)
	if got, _ := b.store.Lease(ctx, "session", 10*time.Second); got {
		t.Error("b took a's live lease")
	}
	redisCLI(t, srv, "SET", leases[0], "someone")
	if got, err := b.store.Lease(ctx, "session", 10*time.Second); err != nil || !got || b.store.Rejected() == 0 {
		t.Errorf("a lease with no expiry: taken %v (%v), %d counted; want taken and counted", got, err, b.store.Rejected())
	}
	// A state record that does not open is absent, and counted.
	if err := a.store.Put(ctx, "state", []byte("v"), time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, k := range strings.Fields(redisCLI(t, srv, "--scan", "--pattern", "test:t:*")) {
		if k != rec {
			redisCLI(t, srv, "SET", k, "garbage")
		}
	}
	rejected = a.store.Rejected()
	if _, ok, err := a.store.Get(ctx, "state"); ok || err != nil || a.store.Rejected() == rejected {
		t.Errorf("a garbage state record: found %v (%v), counted %v", ok, err, a.store.Rejected() != rejected)
	}
}
