package proxy_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/sim"
	"github.com/authproxy/authproxy/tokencache"
)

// oauthWorld is an OBH-like setup: a Zitadel-like token endpoint and an API
// that accepts only live tokens from it, behind a sidecar.
type oauthWorld struct {
	ts    *sim.TokenServer
	echo  *sim.Echo
	cache *tokencache.Cache
	p     *running
	// refused gets a value each time the API has answered 401.
	refused chan struct{}
}

func newOAuthWorld(t *testing.T, clock *sim.Clock, cacheSize int) *oauthWorld {
	e := newEnv(t)
	w := &oauthWorld{ts: &sim.TokenServer{ClientID: "fleet-app", ClientSecret: secretToken, Auth: "basic",
		RequireScopes: []string{"urn:zitadel:iam:org:project:id:272428514190297504:aud"}}, echo: &sim.Echo{}}
	if clock != nil {
		w.ts.Now = clock.Now
	}
	auth := e.httpsUpstream(w.ts)
	w.refused = make(chan struct{}, 16)
	guarded := w.ts.RequireToken(w.echo)
	api := e.httpsUpstream(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: rw}
		guarded.ServeHTTP(rec, r)
		if rec.status == http.StatusUnauthorized {
			select {
			case w.refused <- struct{}{}:
			default:
			}
		}
	}))
	opts := tokencache.Options{Size: cacheSize, MinBackoff: time.Second, MaxBackoff: 4 * time.Second, ScanInterval: 20 * time.Millisecond}
	if clock != nil {
		opts.Now = clock.Now
	}
	w.cache = tokencache.New(opts)
	e.injEnv = injectors.Env{Cache: w.cache}
	w.p = e.start(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.authproxy.test:%s"}
upstream:
  ca_file: "{{UPSTREAM_CA}}"
  resolve: {api.authproxy.test: 127.0.0.1, auth.authproxy.test: 127.0.0.1}
injectors:
  obh:
    kind: oauth2
    preset: obh
    token_url: "https://auth.authproxy.test:%s/oauth/v2/token"
    client_id: {value: fleet-app}
    client_secret: {value: %q}
    scopes: [openid, sub, "urn:zitadel:iam:org:project:id:272428514190297504:aud", "role:restricted", "mount:{mount}"]
  obh-owner:
    kind: oauth2
    preset: obh
    token_url: "https://auth.authproxy.test:%s/oauth/v2/token"
    client_id: {value: fleet-app}
    client_secret: {value: %q}
    scopes: [openid, sub, "urn:zitadel:iam:org:project:id:272428514190297504:aud", "role:owner"]
routes:
  - {name: mounts, match: {path: "/mounts/{mount}/*"}, injector: obh}
  - {name: fleet, match: {path: "/fleet/*"}, injector: obh-owner}
`, port(t, api.URL), port(t, auth.URL), secretToken, port(t, auth.URL), secretToken), nil, nil)
	return w
}

func (w *oauthWorld) get(t *testing.T, c *http.Client, path string) (int, string) {
	t.Helper()
	resp, err := c.Get("http://" + w.p.addr("app") + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestOAuth2ColdBurstCostsOneTokenRequest(t *testing.T) {
	w := newOAuthWorld(t, nil, 0)
	c := h2cClient()
	statuses := burst(500, func() (*http.Response, error) { return c.Get("http://" + w.p.addr("app") + "/fleet/bikes") })
	if statuses[200] != 500 {
		t.Errorf("statuses %v, want 500 × 200", statuses)
	}
	if n := w.ts.Calls(); n != 1 {
		t.Errorf("%d token requests for a cold burst of 500, want 1", n)
	}
}

func TestOAuth2TokenPerMountWithBoundedCache(t *testing.T) {
	w := newOAuthWorld(t, nil, 20)
	c := h1Client()
	for i := 0; i < 50; i++ {
		if st, body := w.get(t, c, fmt.Sprintf("/mounts/m%02d/lock", i)); st != 200 {
			t.Fatalf("mount %d: %d %s", i, st, body)
		}
	}
	if n := w.ts.Calls(); n != 50 {
		t.Errorf("%d token requests for 50 mounts, want 50", n)
	}
	scopes := w.ts.Scopes()
	if scopes["openid sub urn:zitadel:iam:org:project:id:272428514190297504:aud role:restricted mount:m07"] != 1 {
		t.Errorf("scope for m07 not requested exactly once: %v", scopes)
	}
	if w.cache.Len() != 20 {
		t.Errorf("cache holds %d keys, want its bound 20", w.cache.Len())
	}
	for i := 30; i < 50; i++ { // the 20 most recent are cached
		w.get(t, c, fmt.Sprintf("/mounts/m%02d/lock", i))
	}
	if n := w.ts.Calls(); n != 50 {
		t.Errorf("re-using the 20 most recent mounts cost %d token requests", n-50)
	}
	w.get(t, c, "/mounts/m00/lock") // evicted: fetched again
	if n := w.ts.Calls(); n != 51 {
		t.Errorf("an evicted mount cost %d token requests, want 1", n-50)
	}
	for _, mount := range []string{"a%20b", "a%C2%A0b", "a%E2%80%A8b", "a%E3%80%80b", "a%22b"} {
		if st, body := w.get(t, c, "/mounts/"+mount+"/lock"); st != 400 || !strings.Contains(body, "visible ASCII") {
			t.Errorf("mount %s: %d %q, want 400", mount, st, body)
		}
	}
}

func TestOAuth2RetriesOnceWhenTheUpstreamRefusesTheToken(t *testing.T) {
	clock := sim.NewClock(time.Now())
	w := newOAuthWorld(t, clock, 0)
	c := h2cClient()
	post := func(body []byte) (int, sim.Seen) {
		resp, err := c.Post("http://"+w.p.addr("app")+"/fleet/upload", "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, sim.Seen{Path: string(b)}
		}
		return 200, decodeSeen(t, resp)
	}
	body := bytes.Repeat([]byte("replay-me "), 3000) // 30 kB
	sum := sha256.Sum256(body)
	if st, _ := post(body); st != 200 {
		t.Fatalf("first request: %d", st)
	}
	// The issuer revokes the token the proxy holds (the proxy cannot know).
	revokeAll(w.ts, t)
	clock.Advance(5 * time.Second)
	st, seen := post(body)
	if st != 200 || seen.BodyBytes != int64(len(body)) || seen.BodySHA != hex.EncodeToString(sum[:]) {
		t.Errorf("after revocation: %d, body %d bytes (sha match %v), want a transparent retry",
			st, seen.BodyBytes, seen.BodySHA == hex.EncodeToString(sum[:]))
	}
	if n := w.ts.Calls(); n != 2 {
		t.Errorf("%d token requests, want 2", n)
	}
	// A body larger than the replay limit is not retried: the client gets the 401.
	revokeAll(w.ts, t)
	clock.Advance(5 * time.Second)
	if st, _ := post(bytes.Repeat([]byte("x"), 200<<10)); st != http.StatusUnauthorized {
		t.Errorf("large body after revocation: %d, want the upstream's 401", st)
	}
	// The token was still dropped, so the next request recovers.
	if st, _ := post([]byte("small")); st != 200 {
		t.Errorf("next request: %d", st)
	}
}

// An upstream may refuse a token on the request head, before the client has
// sent its body: the retry then waits for the body, which the proxy keeps.
func TestOAuth2RetriesWhenTheUpstreamRefusesBeforeTheBody(t *testing.T) {
	for name, c := range map[string]*http.Client{"h2c": h2cClient(), "http1": h1Client()} {
		t.Run(name, func(t *testing.T) { testRetryBeforeTheBody(t, c) })
	}
}

func testRetryBeforeTheBody(t *testing.T, c *http.Client) {
	clock := sim.NewClock(time.Now())
	w := newOAuthWorld(t, clock, 0)
	if st, body := w.get(t, c, "/fleet/warm"); st != 200 {
		t.Fatalf("first request: %d %s", st, body)
	}
	revokeAll(w.ts, t)
	clock.Advance(5 * time.Second)
	body := bytes.Repeat([]byte("sent-late "), 2000)
	sum := sha256.Sum256(body)
	pr, pw := io.Pipe()
	go func() {
		select { // the body is sent only once the upstream has refused the head
		case <-w.refused:
			pw.Write(body)
			pw.Close()
		case <-time.After(10 * time.Second):
			pw.CloseWithError(errors.New("the upstream never refused the token"))
		}
	}()
	resp, err := c.Post("http://"+w.p.addr("app")+"/fleet/upload", "application/octet-stream", pr)
	if err != nil {
		t.Fatal(err)
	}
	seen := decodeSeen(t, resp)
	if seen.BodyBytes != int64(len(body)) || seen.BodySHA != hex.EncodeToString(sum[:]) {
		t.Errorf("the retry carried %d bytes (sha match %v), want the whole body", seen.BodyBytes, seen.BodySHA == hex.EncodeToString(sum[:]))
	}
	if n := w.ts.Calls(); n != 2 {
		t.Errorf("%d token requests, want 2", n)
	}
}

// statusRecorder notes the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// revokeAll revokes every token the simulated issuer has handed out.
func revokeAll(ts *sim.TokenServer, t *testing.T) {
	t.Helper()
	for i := int64(1); i <= ts.Calls(); i++ {
		for scope := range ts.Scopes() {
			ts.Revoke(fmt.Sprintf("at-%d-%x", i, sha256.Sum256([]byte(scope)))[:32])
		}
	}
}

func TestOAuth2SurvivesIssuerOutageUntilExpiryThenRecovers(t *testing.T) {
	clock := sim.NewClock(time.Now())
	w := newOAuthWorld(t, clock, 0)
	c := h1Client()
	if st, _ := w.get(t, c, "/fleet/x"); st != 200 {
		t.Fatal(st)
	}
	w.ts.SetDown(http.StatusServiceUnavailable)
	clock.Advance(50 * time.Minute) // past the refresh point (80% of 1 h), before expiry
	for i := 0; i < 20; i++ {
		if st, body := w.get(t, c, "/fleet/x"); st != 200 {
			t.Fatalf("during the outage, before expiry: %d %s", st, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	clock.Advance(11 * time.Minute) // past expiry
	callsBefore := w.ts.Calls()
	for i := 0; i < 50; i++ {
		st, body := w.get(t, c, "/fleet/x")
		if st != http.StatusServiceUnavailable || !strings.Contains(body, "credential unavailable") {
			t.Fatalf("after expiry: %d %q, want 503", st, body)
		}
	}
	// gRPC clients get UNAVAILABLE.
	req, _ := http.NewRequest("POST", "http://"+w.p.addr("app")+"/fleet/x", strings.NewReader(""))
	req.Header.Set("Content-Type", "application/grpc")
	resp, err := h2cClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Grpc-Status") != "14" {
		t.Errorf("gRPC after expiry: grpc-status %q, want 14", resp.Header.Get("Grpc-Status"))
	}
	if herd := w.ts.Calls() - callsBefore; herd > 3 {
		t.Errorf("51 failing requests caused %d token requests: no herd allowed", herd)
	}
	// The issuer returns; the proxy recovers by itself.
	w.ts.SetDown(0)
	clock.Advance(10 * time.Second) // past the longest backoff
	deadline := time.Now().Add(10 * time.Second)
	for {
		if st, _ := w.get(t, c, "/fleet/x"); st == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no recovery within 10s of the issuer returning")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if strings.Contains(w.p.logs.String(), secretToken) {
		t.Error("the client secret is in the log")
	}
}

func TestOAuth2RouteMustCaptureTemplatedPathValues(t *testing.T) {
	e := newEnv(t)
	cfg, err := parseConfig(e, `
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: "https://api.example.com"}
injectors:
  obh:
    kind: oauth2
    preset: obh
    client_id: {value: c}
    client_secret: {value: s}
    scopes: ["urn:zitadel:iam:org:project:id:1:aud", "mount:{mount}"]
routes:
  - {name: all, match: {path: "/api/*"}, injector: obh}
`)
	if err != nil {
		t.Fatal(err)
	}
	injs, err := injectors.BuildAll(cfg, injectors.Env{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = proxy.New(cfg, injs, proxy.Options{})
	if err == nil || err.Error() != `routes[0].match.path: injector "obh" reads {mount}, which "/api/*" does not capture` {
		t.Errorf("got %v", err)
	}
}
