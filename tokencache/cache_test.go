package tokencache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/internal/syncbuf"
	"github.com/authproxy/authproxy/sim"
)

type clock = sim.Clock

func newClock() *clock { return sim.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) }

// issuer is a fake token endpoint: it counts fetches, can be made to fail
// or to block, and issues tokens valid for life.
type issuer struct {
	clock *clock
	life  time.Duration
	calls atomic.Int64
	fail  atomic.Bool
	gate  chan struct{} // when set, each fetch waits for it (or ctx)
}

func (i *issuer) fetch(ctx context.Context) (Token, error) {
	n := i.calls.Add(1)
	if i.gate != nil {
		select {
		case <-i.gate:
		case <-ctx.Done():
			return Token{}, ctx.Err()
		}
	}
	if i.fail.Load() {
		return Token{}, errors.New("issuer down")
	}
	return Token{Value: config.NewSecret(fmt.Sprintf("tok-%d", n)), Expiry: i.clock.Now().Add(i.life)}, nil
}

func newCache(c *clock, opts Options) *Cache {
	opts.Now = c.Now
	return New(opts)
}

func TestColdBurstFetchesOnce(t *testing.T) {
	clk := newClock()
	iss := &issuer{clock: clk, life: time.Hour, gate: make(chan struct{})}
	c := newCache(clk, Options{})
	var wg sync.WaitGroup
	got := make([]string, 500)
	for i := range got {
		wg.Go(func() {
			tok, err := c.Get(context.Background(), "k", iss.fetch)
			if err != nil {
				t.Error(err)
			}
			got[i] = tok.Value.Reveal()
		})
	}
	for iss.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // let the rest pile up on the one fetch
	close(iss.gate)
	wg.Wait()
	if n := iss.calls.Load(); n != 1 {
		t.Errorf("%d fetches for one cold key, want 1", n)
	}
	for i, v := range got {
		if v != "tok-1" {
			t.Fatalf("caller %d got %q", i, v)
		}
	}
}

func TestCallerCancelDoesNotCancelSharedFetch(t *testing.T) {
	clk := newClock()
	iss := &issuer{clock: clk, life: time.Hour, gate: make(chan struct{})}
	c := newCache(clk, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := c.Get(ctx, "k", iss.fetch); errc <- err }()
	for iss.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller got %v", err)
	}
	close(iss.gate)
	c.wg.Wait()
	tok, err := c.Get(context.Background(), "k", iss.fetch)
	if err != nil || tok.Value.Reveal() != "tok-1" || iss.calls.Load() != 1 {
		t.Errorf("after the shared fetch: %q %v, %d fetches", tok.Value.Reveal(), err, iss.calls.Load())
	}
}

func TestRefreshAheadNeverMakesCallersWait(t *testing.T) {
	clk := newClock()
	iss := &issuer{clock: clk, life: 100 * time.Second}
	c := newCache(clk, Options{RefreshFraction: 0.8, MinMargin: 5 * time.Second})
	if _, err := c.Get(context.Background(), "k", iss.fetch); err != nil {
		t.Fatal(err)
	}
	c.wg.Wait()

	iss.gate = make(chan struct{}) // the refresh will hang until released
	clk.Advance(85 * time.Second)  // past 80% of the lifetime
	for i := 0; i < 100; i++ {
		tok, err := c.Get(context.Background(), "k", iss.fetch)
		if err != nil || tok.Value.Reveal() != "tok-1" {
			t.Fatalf("during refresh: %q %v, want the old token at once", tok.Value.Reveal(), err)
		}
	}
	close(iss.gate)
	c.wg.Wait()
	if n := iss.calls.Load(); n != 2 {
		t.Errorf("%d fetches, want 1 + 1 refresh", n)
	}
	tok, _ := c.Get(context.Background(), "k", iss.fetch)
	if tok.Value.Reveal() != "tok-2" {
		t.Errorf("after refresh: %q", tok.Value.Reveal())
	}
}

func TestRefreshDueOnlyForKeysInUse(t *testing.T) {
	clk := newClock()
	iss := &issuer{clock: clk, life: 100 * time.Second}
	c := newCache(clk, Options{})
	c.Get(context.Background(), "used", iss.fetch)
	c.Get(context.Background(), "unused", iss.fetch)
	c.wg.Wait()
	clk.Advance(10 * time.Second)
	c.Get(context.Background(), "used", iss.fetch) // use, before it is due
	clk.Advance(75 * time.Second)                  // both due
	c.RefreshDue()
	c.wg.Wait()
	if n := iss.calls.Load(); n != 3 {
		t.Errorf("%d fetches, want 2 + a refresh of the key in use only", n)
	}
}

func TestOutageServesValidTokenThenFailsFastThenRecovers(t *testing.T) {
	clk := newClock()
	iss := &issuer{clock: clk, life: 100 * time.Second}
	c := newCache(clk, Options{MinBackoff: 2 * time.Second, MaxBackoff: 8 * time.Second, MinMargin: 5 * time.Second})
	get := func() (string, error) {
		tok, err := c.Get(context.Background(), "k", iss.fetch)
		c.wg.Wait()
		return tok.Value.Reveal(), err
	}
	if v, err := get(); v != "tok-1" || err != nil {
		t.Fatal(v, err)
	}
	iss.fail.Store(true)
	// From the refresh point to expiry, every scan and request still gets
	// the old token, and retries are spaced by the backoff.
	clk.Advance(80 * time.Second)
	for s := 0; s < 19; s++ {
		if v, err := get(); v != "tok-1" || err != nil {
			t.Fatalf("at +%ds during the outage: %q %v", 80+s, v, err)
		}
		c.RefreshDue()
		c.wg.Wait()
		clk.Advance(time.Second)
	}
	attempts := iss.calls.Load() - 1
	if attempts < 2 || attempts > 10 {
		t.Errorf("%d refresh attempts in 19s of outage with 2s..8s backoff", attempts)
	}
	// Past expiry: fail fast, without a fetch per request.
	clk.Advance(2 * time.Second)
	before := iss.calls.Load()
	var failed int
	for i := 0; i < 50; i++ {
		if _, err := c.Get(context.Background(), "k", iss.fetch); err != nil {
			failed++
			if !errors.Is(err, ErrExpired) && err.Error() != "issuer down" {
				t.Errorf("error %v", err)
			}
		}
	}
	c.wg.Wait()
	if failed != 50 || iss.calls.Load()-before > 1 {
		t.Errorf("after expiry: %d of 50 failed, %d fetches (want all failed, at most 1 fetch)", failed, iss.calls.Load()-before)
	}
	// The issuer comes back: the background scan recovers on its own.
	iss.fail.Store(false)
	clk.Advance(20 * time.Second)
	c.RefreshDue()
	c.wg.Wait()
	before = iss.calls.Load()
	if v, err := get(); err != nil || v == "tok-1" || iss.calls.Load() != before {
		t.Errorf("after recovery: %q %v (fetched on the request: %v)", v, err, iss.calls.Load() != before)
	}
}

func TestInvalidate(t *testing.T) {
	clk := newClock()
	iss := &issuer{clock: clk, life: time.Hour}
	c := newCache(clk, Options{MinBackoff: time.Second})
	tok, _ := c.Get(context.Background(), "k", iss.fetch)
	c.wg.Wait()
	if c.Invalidate("k", tok.Value.Reveal()) {
		t.Error("a token fetched just now was dropped")
	}
	clk.Advance(2 * time.Second)
	if !c.Invalidate("k", "some-other-token") {
		t.Error("a value the cache no longer holds should report true (retry with the current one)")
	}
	if got, _ := c.Get(context.Background(), "k", iss.fetch); got.Value.Reveal() != tok.Value.Reveal() {
		t.Error("invalidating a different value dropped the cached one")
	}
	if !c.Invalidate("k", tok.Value.Reveal()) {
		t.Fatal("Invalidate did not drop the token")
	}
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Go(func() { c.Get(context.Background(), "k", iss.fetch) })
	}
	wg.Wait()
	if n := iss.calls.Load(); n != 2 {
		t.Errorf("%d fetches after invalidation by 20 callers, want 2", n)
	}
}

func TestReplaceNeverResurrectsAnOlderValue(t *testing.T) {
	clk := newClock()
	c := newCache(clk, Options{})
	fetch := func(context.Context) (Token, error) { return Token{Value: config.NewSecret("s1")}, nil }
	c.Get(context.Background(), "k", fetch)
	c.wg.Wait()
	tok := func(v string) Token { return Token{Value: config.NewSecret(v)} }
	// Two requests were sent with s1; their responses renew it to s2 and s3.
	if !c.Replace("k", "s1", tok("s2")) {
		t.Fatal("the first renewal was refused")
	}
	if c.Replace("k", "s1", tok("s3")) {
		t.Error("a renewal of a superseded value was accepted")
	}
	if c.Replace("k", "s0", tok("s1")) {
		t.Error("an older value came back")
	}
	got, _ := c.Get(context.Background(), "k", fetch)
	if got.Value.Reveal() != "s2" {
		t.Errorf("cached %q, want s2", got.Value.Reveal())
	}
	// Concurrent renewals from requests that all carried s2: exactly one wins.
	var wins atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Go(func() {
			if c.Replace("k", "s2", tok(fmt.Sprintf("n%d", i))) {
				wins.Add(1)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Errorf("%d concurrent renewals of one value won, want 1", wins.Load())
	}
}

func TestBoundedLRU(t *testing.T) {
	clk := newClock()
	iss := &issuer{clock: clk, life: time.Hour}
	c := newCache(clk, Options{Size: 20})
	for i := 0; i < 50; i++ {
		c.Get(context.Background(), fmt.Sprintf("mount-%d", i), iss.fetch)
	}
	if c.Len() != 20 || iss.calls.Load() != 50 {
		t.Errorf("len %d after 50 keys with size 20; %d fetches", c.Len(), iss.calls.Load())
	}
	c.Get(context.Background(), "mount-49", iss.fetch)
	if iss.calls.Load() != 50 {
		t.Error("a recent key was evicted")
	}
}

func TestIdleTimeout(t *testing.T) {
	clk := newClock()
	var n atomic.Int64
	fetch := func(context.Context) (Token, error) {
		n.Add(1)
		return Token{Value: config.NewSecret("t"), Expiry: clk.Now().Add(24 * time.Hour), IdleTimeout: time.Hour}, nil
	}
	c := newCache(clk, Options{})
	for i := 0; i < 5; i++ { // used every 50 minutes: stays valid
		c.Get(context.Background(), "k", fetch)
		c.wg.Wait()
		clk.Advance(50 * time.Minute)
	}
	if n.Load() != 1 {
		t.Errorf("%d fetches while used within the idle time", n.Load())
	}
	clk.Advance(11 * time.Minute) // now idle for 61 minutes
	c.Get(context.Background(), "k", fetch)
	c.wg.Wait()
	if n.Load() != 2 {
		t.Errorf("a token idle past its max idle time was served")
	}
}

func TestRunStopsFetchesAndReturns(t *testing.T) {
	clk := newClock()
	iss := &issuer{clock: clk, life: time.Hour, gate: make(chan struct{})}
	c := newCache(clk, Options{ScanInterval: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	second := make(chan error, 1)
	go func() { second <- c.Run(ctx) }() // a second Run only waits
	go c.Get(context.Background(), "k", iss.fetch)
	for iss.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return with a fetch in flight")
	}
	<-second
	_, err := c.Get(context.Background(), "k", iss.fetch)
	if err == nil {
		t.Error("a fetch after Run ended succeeded")
	}
}

// BenchmarkGetHit is the hot path: a cached, valid token.
func BenchmarkGetHit(b *testing.B) {
	c := New(Options{})
	fetch := func(context.Context) (Token, error) {
		return Token{Value: config.NewSecret("t"), Expiry: time.Now().Add(time.Hour)}, nil
	}
	ctx := context.Background()
	c.Get(ctx, "injector\x00scope", fetch)
	c.wg.Wait()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Get(ctx, "injector\x00scope", fetch); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGetHitParallel(b *testing.B) {
	c := New(Options{})
	fetch := func(context.Context) (Token, error) {
		return Token{Value: config.NewSecret("t"), Expiry: time.Now().Add(time.Hour)}, nil
	}
	keys := make([]string, 64)
	for i := range keys {
		keys[i] = fmt.Sprintf("injector\x00scope-%d", i)
		c.Get(context.Background(), keys[i], fetch)
	}
	c.wg.Wait()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			c.Get(context.Background(), keys[i%len(keys)], fetch)
			i++
		}
	})
}

// A refresh fraction below one half is honoured: the old floor of half a
// lifetime turned 0.3 into 0.5 without a word.
func TestRefreshFractionBelowHalfIsHonoured(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fraction float64
		life     time.Duration
		margin   time.Duration
		want     time.Duration
	}{
		{"0.3 of an hour", 0.3, time.Hour, 30 * time.Second, 18 * time.Minute},
		{"0.8 of an hour", 0.8, time.Hour, 30 * time.Second, 48 * time.Minute},
		{"the margin wins over 0.8", 0.8, 100 * time.Second, 30 * time.Second, 70 * time.Second},
		{"half a short token at least", 0.8, 40 * time.Second, 30 * time.Second, 20 * time.Second},
		{"0.2 of a short token", 0.2, 40 * time.Second, 30 * time.Second, 8 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			c := newCache(clk, Options{RefreshFraction: tc.fraction, MinMargin: tc.margin})
			got := c.refreshTime(clk.Now(), Token{Expiry: clk.Now().Add(tc.life)}).Sub(clk.Now())
			if got != tc.want {
				t.Errorf("refresh after %s, want %s", got, tc.want)
			}
		})
	}
}

func TestErrorSaysWhetherATokenWasEverObtained(t *testing.T) {
	clk := newClock()
	iss := &issuer{clock: clk, life: time.Minute}
	iss.fail.Store(true)
	c := newCache(clk, Options{MinBackoff: 10 * time.Second})
	if _, err := c.Get(context.Background(), "k", iss.fetch); err == nil {
		t.Fatal("no error from a failing issuer")
	}
	_, err := c.Get(context.Background(), "k", iss.fetch)
	if !errors.Is(err, ErrNoToken) || errors.Is(err, ErrExpired) {
		t.Errorf("never fetched: %v, want %v", err, ErrNoToken)
	}
	iss.fail.Store(false)
	clk.Advance(time.Minute)
	if _, err := c.Get(context.Background(), "k", iss.fetch); err != nil {
		t.Fatal(err)
	}
	iss.fail.Store(true)
	clk.Advance(2 * time.Minute) // expired
	c.Get(context.Background(), "k", iss.fetch)
	_, err = c.Get(context.Background(), "k", iss.fetch)
	if !errors.Is(err, ErrExpired) {
		t.Errorf("expired: %v, want %v", err, ErrExpired)
	}
}

// Peek never fetches and never waits: nothing before the first Get, the
// valid token after it, nothing once it has expired; a due refresh starts
// in the background as for Get.
func TestPeekNeverFetches(t *testing.T) {
	clk := newClock()
	iss := &issuer{clock: clk, life: 100 * time.Second}
	c := newCache(clk, Options{RefreshFraction: 0.8, MinMargin: 5 * time.Second})
	if _, ok := c.Peek("k"); ok || iss.calls.Load() != 0 {
		t.Fatalf("Peek of an unknown key: ok=%v, %d fetches", ok, iss.calls.Load())
	}
	if _, err := c.Get(context.Background(), "k", iss.fetch); err != nil {
		t.Fatal(err)
	}
	c.wg.Wait()
	if tok, ok := c.Peek("k"); !ok || tok.Value.Reveal() != "tok-1" {
		t.Fatalf("Peek after Get: %q %v", tok.Value.Reveal(), ok)
	}
	iss.gate = make(chan struct{})
	clk.Advance(85 * time.Second) // due a refresh, still valid
	if tok, ok := c.Peek("k"); !ok || tok.Value.Reveal() != "tok-1" {
		t.Fatalf("Peek during the refresh: %q %v, want the valid token at once", tok.Value.Reveal(), ok)
	}
	close(iss.gate)
	c.wg.Wait()
	if n := iss.calls.Load(); n != 2 {
		t.Errorf("%d fetches, want 1 + the refresh Peek started", n)
	}
	clk.Advance(200 * time.Second)
	if _, ok := c.Peek("k"); ok {
		t.Error("Peek returned an expired token")
	}
	c.wg.Wait()
	if n := iss.calls.Load(); n != 2 {
		t.Errorf("Peek of an expired token fetched (%d fetches)", n)
	}
}

// The log says each fetch, with a fingerprint of its key and the token's
// lifetime; a failure once when the fetches start failing (at warn), not
// for each retry, and once when they recover. No token value appears.
func TestFetchesAreLoggedOncePerStateChange(t *testing.T) {
	clk := newClock()
	iss := &issuer{clock: clk, life: 100 * time.Second}
	var buf syncbuf.Buffer
	c := newCache(clk, Options{MinBackoff: time.Second, MaxBackoff: time.Second, Log: slog.New(slog.NewTextHandler(&buf, nil))})
	key := "fleet\x00scope-a"
	if _, err := c.Get(context.Background(), key, iss.fetch); err != nil {
		t.Fatal(err)
	}
	c.wg.Wait()
	iss.fail.Store(true)
	for i := 0; i < 3; i++ {
		clk.Advance(200 * time.Second) // expired, and past the backoff
		if _, err := c.Get(context.Background(), key, iss.fetch); err == nil {
			t.Fatal("a failing issuer gave a token")
		}
	}
	iss.fail.Store(false)
	clk.Advance(2 * time.Second)
	if _, err := c.Get(context.Background(), key, iss.fetch); err != nil {
		t.Fatal(err)
	}
	c.wg.Wait()
	logs := buf.String()
	for want, n := range map[string]int{
		`level=INFO msg="token fetched" injector=fleet key=`: 1,
		`lifetime=1m40s`: 2,
		`level=WARN msg="token fetch failing" injector=fleet`:          1,
		`msg="token fetched: the issuer answers again" injector=fleet`: 1,
		`after_failures=3`: 1,
	} {
		if got := strings.Count(logs, want); got != n {
			t.Errorf("%q appears %d times, want %d:\n%s", want, got, n, logs)
		}
	}
	if strings.Contains(logs, "tok-") || strings.Contains(logs, "scope-a") {
		t.Errorf("the log shows a token or the key:\n%s", logs)
	}
}
