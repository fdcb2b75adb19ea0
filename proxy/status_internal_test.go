package proxy

import (
	"testing"
	"time"

	"github.com/authproxy/authproxy/tokencache"
)

// A key whose token has no expiry (an ODIL session, kept alive by use) is
// never due a refresh: /status shows none (it once showed the largest
// duration there is), and no expiry either.
func TestStatusShowsNoRefreshForAKeyThatNeverExpires(t *testing.T) {
	now := time.Now()
	far := now.Add(time.Duration(1<<63 - 1 - now.UnixNano())) // what a cache that never refreshes holds
	c := credentialOf(tokencache.Entry{Key: "k", Valid: true, FetchedAt: now.Add(-time.Minute), RefreshAt: far}, now)
	if c.NextRefreshSeconds != nil || c.ExpiresInSeconds != nil || c.Left != 1 || c.AgeSeconds == nil || *c.AgeSeconds != 60 {
		t.Errorf("a key with no expiry: %+v", c)
	}
	// One that expires is due its refresh before then, in seconds.
	c = credentialOf(tokencache.Entry{Key: "k", Valid: true, FetchedAt: now.Add(-10 * time.Minute), Expiry: now.Add(50 * time.Minute), RefreshAt: now.Add(38 * time.Minute)}, now)
	if c.NextRefreshSeconds == nil || *c.NextRefreshSeconds != 38*60 || c.ExpiresInSeconds == nil || *c.ExpiresInSeconds != 50*60 {
		t.Errorf("a key that expires: %+v", c)
	}
	// A failing key says when it is tried next.
	c = credentialOf(tokencache.Entry{Key: "k", Failures: 2, RetryAt: now.Add(4 * time.Second), LastErr: "issuer said 503"}, now)
	if c.State != "failing" || c.NextAttemptSeconds == nil || *c.NextAttemptSeconds != 4 {
		t.Errorf("a failing key: %+v", c)
	}
}
