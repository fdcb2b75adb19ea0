package proxy_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/sim"
	"github.com/authproxy/authproxy/tokencache"
)

// odilWorld puts the ODIL simulator behind a sidecar and a forward proxy.
type odilWorld struct {
	odil *sim.ODIL
	p    *running
	e    *env
	port string
}

func newODILWorld(t *testing.T, password string, cacheOpts tokencache.Options, extra ...string) *odilWorld {
	e := newEnv(t)
	w := &odilWorld{e: e, odil: &sim.ODIL{KeyName: "odil-key", Key: secretToken, APICode: "TR:SB:OneDealer:OD",
		Username: "dealer-api", Password: "right-password"}}
	up := e.httpsUpstream(w.odil)
	w.port = port(t, up.URL)
	e.injEnv = injectors.Env{Cache: tokencache.New(cacheOpts)}
	w.p = e.start(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, host: odil.authproxy.test, upstream: "https://odil.authproxy.test:%[1]s"}
  - {name: fwd, kind: forward, address: 127.0.0.1:0}
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {odil.authproxy.test: 127.0.0.1}}
injectors:
  odil:
    kind: odil
    base_url: "https://odil.authproxy.test:%[1]s/"
    company: AzureLDMS
    username: {value: dealer-api}
    password: {value: %[2]q}
    sas:
      key_name: {value: odil-key}
      key: {value: %[3]q}
    external:
      owner_user_id: user-17
      owner_company_id: company-4
      dimension_branch: athens
routes:
  - {name: odil-api, match: {host: odil.authproxy.test, path: "/api/*"}, injector: odil}
`+strings.Join(extra, "\n"), w.port, password, secretToken), nil, nil)
	return w
}

// clients returns how each mode reaches the API: the sidecar over HTTP/1.1
// and h2c (the frame relay), and the forward proxy with interception over
// HTTP/2 (the relay) and HTTP/1.1.
func (w *odilWorld) clients() map[string]func(method, path string, body []byte) *http.Response {
	sidecar := h1Client()
	forward := proxiedClient(w.p.addr("fwd"), &tlsRoots{w.e.proxyCA}, true)
	do := func(c *http.Client, base string) func(string, string, []byte) *http.Response {
		return func(method, path string, body []byte) *http.Response {
			req, _ := http.NewRequest(method, base+path, bytes.NewReader(body))
			if body == nil {
				req.Body = nil
			}
			req.Header.Set("Session", "client-spoofed-session")
			resp, err := c.Do(req)
			if err != nil {
				w.e.t.Fatal(err)
			}
			return resp
		}
	}
	return map[string]func(string, string, []byte) *http.Response{
		"sidecar":     do(sidecar, "http://"+w.p.addr("app")),
		"sidecar-h2c": do(h2cClient(), "http://"+w.p.addr("app")),
		"forward":     do(forward, "https://odil.authproxy.test:"+w.port),
		"forward-h1":  do(proxiedClient(w.p.addr("fwd"), &tlsRoots{w.e.proxyCA}, false), "https://odil.authproxy.test:"+w.port),
	}
}

func decodeODIL(t *testing.T, resp *http.Response) sim.ODILSeen {
	t.Helper()
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	var seen sim.ODILSeen
	if err := json.Unmarshal(b, &seen); err != nil {
		t.Fatal(err)
	}
	return seen
}

func TestODILRollingSessionAndTransparentRecreation(t *testing.T) {
	// MinBackoff also guards against dropping a session created moments
	// ago; the simulator expires sessions on demand, so keep it short here.
	w := newODILWorld(t, "right-password", tokencache.Options{MinBackoff: time.Millisecond, MaxBackoff: time.Second})
	for mode, do := range w.clients() {
		t.Run(mode, func(t *testing.T) {
			// A sequence of calls: each carries the session the previous
			// response handed out.
			var prev sim.ODILSeen
			for i := 0; i < 5; i++ {
				seen := decodeODIL(t, do("GET", fmt.Sprintf("/api/od/vehicles/%d", i), nil))
				if i > 0 && seen.Session != prev.Renewed {
					t.Errorf("call %d carried %q, want the renewed %q", i, seen.Session, prev.Renewed)
				}
				if seen.Header.Get("EntityOwnerUserID") != "user-17" || seen.Header.Get("EntityOwnerCompanyID") != "company-4" ||
					seen.Header.Get("DimensionBranch") != "athens" || seen.Header.Get("DimensionMake") != "" {
					t.Errorf("entity headers: %v", seen.Header)
				}
				prev = seen
			}

			// Sessions expire; 50 concurrent callers hit the error at once.
			w.odil.ExpireAll()
			creates := w.odil.Creates()
			codes := burst(50, func() (*http.Response, error) { return do("GET", "/api/od/parts", nil), nil })
			if codes[200] != 50 {
				t.Errorf("after expiry: %v, want 50 × 200", codes)
			}
			if n := w.odil.Creates() - creates; n != 1 {
				t.Errorf("%d sessions created for 50 callers after expiry, want 1", n)
			}

			// A POST after expiry is replayed byte for byte.
			w.odil.ExpireAll()
			body := bytes.Repeat([]byte(`{"part":"brake-pad"}`), 500)
			sum := sha256.Sum256(body)
			seen := decodeODIL(t, do("POST", "/api/od/orders", body))
			if seen.BodyBytes != int64(len(body)) || seen.BodySHA != hex.EncodeToString(sum[:]) {
				t.Errorf("replayed POST: %d bytes, sha match %v", seen.BodyBytes, seen.BodySHA == hex.EncodeToString(sum[:]))
			}
		})
	}
}

func TestODILWrongCredentialsDoNotStorm(t *testing.T) {
	w := newODILWorld(t, "wrong-password", tokencache.Options{}) // default backoff: 1 s, doubling
	do := w.clients()["sidecar"]
	for i := 0; i < 30; i++ {
		resp := do("GET", "/api/od/vehicles", nil)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(b), "credential rejected") {
			t.Fatalf("request %d: %d %q, want 502 credential rejected", i, resp.StatusCode, b)
		}
	}
	if n := w.odil.Creates(); n < 1 || n > 2 {
		t.Errorf("30 requests with wrong credentials caused %d session/create calls, want 1 (2 if a backoff elapsed)", n)
	}
	logs := w.p.logs.String()
	if !strings.Contains(logs, "uri:TR:ErrorCodes:AuthenticationFailed") {
		t.Errorf("the log does not say why:\n%s", logs)
	}
	if strings.Contains(logs, "wrong-password") {
		t.Error("the password is in the log")
	}
}

func TestODILBodyOverTheReplayLimitGetsTheErrorAsIs(t *testing.T) {
	w := newODILWorld(t, "right-password", tokencache.Options{MinBackoff: time.Millisecond}, "retry: {max_body_bytes: 100}")
	for _, mode := range []string{"sidecar", "sidecar-h2c", "forward", "forward-h1"} {
		t.Run(mode, func(t *testing.T) {
			do := w.clients()[mode]
			decodeODIL(t, do("GET", "/api/od/vehicles", nil))
			w.odil.ExpireAll()
			resp := do("POST", "/api/od/orders", bytes.Repeat([]byte("x"), 101))
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "uri:TR:ErrorCodes:Common:SessionExpired") {
				t.Errorf("a body over retry.max_body_bytes after expiry: %d %q, want ODIL's 400 as is", resp.StatusCode, b)
			}
			// The session was dropped all the same: the next request recovers.
			seen := decodeODIL(t, do("POST", "/api/od/orders", bytes.Repeat([]byte("x"), 100)))
			if seen.BodyBytes != 100 {
				t.Errorf("next request: %+v", seen)
			}
		})
	}
}
