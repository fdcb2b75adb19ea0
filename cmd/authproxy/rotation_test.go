package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/proctest"
	"github.com/authproxy/authproxy/sim"
)

// A client secret rotated in the wrong order (the file changes before the
// issuer accepts the new secret): the token fetched with the old secret
// goes on being served, and the proxy says so; once the issuer accepts
// the new secret, the next request fetches with it. A change to the
// injector's block (not its credentials) still starts it afresh.
func TestSecretRotatedBeforeTheIssuerKeepsTheToken(t *testing.T) {
	dir := t.TempDir()
	pki, serve := testTLS(t, dir, "auth.rot.test", "api.rot.test")
	oldTS := &sim.TokenServer{ClientID: "rot-app", ClientSecret: "old-secret-1", Auth: "basic", ExpiresIn: 3600}
	newTS := &sim.TokenServer{ClientID: "rot-app", ClientSecret: "new-secret-2", Auth: "basic", ExpiresIn: 3600}
	var issuer atomic.Pointer[sim.TokenServer] // the issuer accepts one secret at a time
	issuer.Store(oldTS)
	var refused atomic.Int64
	authPort := serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		issuer.Load().ServeHTTP(rec, r)
		if rec.Code != 200 {
			refused.Add(1)
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes())
	}))
	apiPort := serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !oldTS.Valid(tok) && !newTS.Valid(tok) {
			http.Error(w, "unknown token", http.StatusUnauthorized)
			return
		}
		(&sim.Echo{}).ServeHTTP(w, r)
	}))
	secretFile := filepath.Join(dir, "client-secret")
	os.WriteFile(secretFile, []byte("old-secret-1"), 0o600)
	cfg := filepath.Join(dir, "c.yaml")
	write := func(scopes string) {
		os.WriteFile(cfg, []byte(fmt.Sprintf(`
reload: {watch: false}
listeners:
  - {name: app, kind: sidecar, address: "127.0.0.1:0", upstream: "https://api.rot.test:%s"}
upstream: {ca_file: %q, resolve: {api.rot.test: 127.0.0.1, auth.rot.test: 127.0.0.1}}
token_cache: {min_backoff: 100ms, max_backoff: 200ms}
injectors:
  api:
    kind: oauth2
    token_url: "https://auth.rot.test:%s/token"
    client_id: {value: rot-app}
    client_secret: {file: %q}
    scopes: [%s]
routes:
  - {name: api, match: {path: /v1/*}, injector: api}
`, apiPort, pki.CAFile, authPort, secretFile, scopes)), 0o644)
	}
	write("read")
	p := proctest.Start(t, exec.Command(binary, "run", cfg))
	app := "http://" + p.Await(t, regexp.MustCompile(`listener=app kind=sidecar address=(\S+)`), 20*time.Second)[1]
	token := func() string {
		t.Helper()
		resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 30 * time.Second}).Get(app + "/v1/x")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET: %d", resp.StatusCode)
		}
		var seen sim.Seen
		json.NewDecoder(resp.Body).Decode(&seen)
		return strings.TrimPrefix(seen.Header.Get("Authorization"), "Bearer ")
	}
	first := token()
	if !oldTS.Valid(first) {
		t.Fatalf("the first token %q is not the old issuer's", first)
	}

	// The secret file changes before the issuer takes the new secret.
	os.WriteFile(secretFile, []byte("new-secret-2"), 0o600)
	syscall.Kill(p.Cmd.Process.Pid, syscall.SIGHUP)
	p.Await(t, regexp.MustCompile(`level=WARN msg="injector credentials changed: its tokens are kept until the new credentials fetch one, or they expire" injector=api tokens_kept=1`), 20*time.Second)
	for i := range 5 {
		if got := token(); got != first {
			t.Fatalf("request %d after the rotation got another token: %q (first %q, old issuer: %v)\n%s", i, got, first, oldTS.Valid(got), p.Logs())
		}
	}
	waitUntil(t, "a fetch with the new secret, refused", func() bool { token(); return refused.Load() > 0 })

	// The issuer now takes the new secret: the next requests get its token.
	issuer.Store(newTS)
	waitUntil(t, "a token fetched with the new secret", func() bool { return newTS.Valid(token()) })
	if strings.Contains(p.Logs(), "new-secret-2") || strings.Contains(p.Logs(), "old-secret-1") {
		t.Error("the log shows a secret")
	}

	// A change to the block (its scopes) starts the injector afresh.
	before := newTS.Calls()
	write("read, write")
	syscall.Kill(p.Cmd.Process.Pid, syscall.SIGHUP)
	waitUntil(t, "the second reload", func() bool { return strings.Count(p.Logs(), `msg="configuration reloaded"`) == 2 })
	if strings.Count(p.Logs(), "injector credentials changed") != 1 {
		t.Errorf("a changed block was taken for rotated credentials:\n%s", p.Logs())
	}
	token()
	if newTS.Calls() != before+1 {
		t.Errorf("a changed block cost %d token requests, want 1 (its tokens forgotten)", newTS.Calls()-before)
	}
}
