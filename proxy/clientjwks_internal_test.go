package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// A jwks_url's keys, on a clock the test moves: refreshed in the
// background every jwks_refresh, kept while the endpoint is down until
// jwks_keep after the last good fetch and dropped after, fetched again at
// once for an unknown kid when the endpoint is back.
func TestJWKSSourceRefreshesAndKeeps(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var fetches atomic.Int64
	var down atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		if down.Load() {
			http.Error(w, "down", http.StatusBadGateway)
			return
		}
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256"}}})
	}))
	defer srv.Close()
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	s := &jwksSource{url: srv.URL, refresh: 5 * time.Minute, keep: time.Hour, client: srv.Client(),
		log: slog.New(slog.DiscardHandler), now: clock}
	waitFetches := func(n int64) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); fetches.Load() < n; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d fetches, want %d", fetches.Load(), n)
			}
		}
		for s.refreshing.Load() { // the refresh that fetched has ended
			time.Sleep(time.Millisecond)
		}
	}

	s.fetch(time.Time{})
	if len(s.lookup("k1")) != 1 || fetches.Load() != 1 {
		t.Fatalf("after the first fetch: %d fetches", fetches.Load())
	}
	advance(4 * time.Minute)
	s.lookup("k1")
	time.Sleep(50 * time.Millisecond)
	if fetches.Load() != 1 {
		t.Fatalf("refreshed before jwks_refresh: %d fetches", fetches.Load())
	}
	advance(2 * time.Minute) // 6m: due
	if len(s.lookup("k1")) != 1 {
		t.Fatal("no key while a refresh is due")
	}
	waitFetches(2)
	good := s.lastGood()

	down.Store(true)
	advance(6 * time.Minute)
	if len(s.lookup("k1")) != 1 {
		t.Fatal("the keys went with the endpoint")
	}
	waitFetches(3)
	if s.lastGood() != good {
		t.Fatal("a failed fetch replaced the keys")
	}
	advance(30 * time.Second) // a failing endpoint is tried again after a minute at most, not at each lookup
	s.lookup("k1")
	time.Sleep(50 * time.Millisecond)
	if fetches.Load() != 3 {
		t.Fatalf("%d fetches: a failing endpoint was tried again within the minute", fetches.Load())
	}
	advance(good.Add(time.Hour + time.Second).Sub(clock())) // past jwks_keep
	if keys := s.current("k1", clock()); len(keys) != 0 {
		t.Fatal("the keys outlived jwks_keep")
	}
	waitFetches(4)

	down.Store(false)
	advance(2 * time.Minute) // past the last demand's minute
	if len(s.lookup("k1")) != 1 {
		t.Fatal("no key once the endpoint is back")
	}
}
