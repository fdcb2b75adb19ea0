package proxy_test

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/sim"
	"github.com/authproxy/authproxy/tokencache"
)

// exerciseUpstream serves the HTTP exercise behind a credential check of
// the route's kind: anything without a valid credential gets 401 and is
// counted. Under /x/: ?size=N downloads, uploads are echoed (sim.Echo),
// /x/redirect answers 302, /x/ws is a WebSocket echo.
type exerciseUpstream struct {
	valid    func(http.Header) bool
	echo     sim.Echo
	rejected atomic.Int64
}

func (u *exerciseUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !u.valid(r.Header) {
		u.rejected.Add(1)
		http.Error(w, "no valid credential", http.StatusUnauthorized)
		return
	}
	switch r.URL.Path {
	case "/x/redirect":
		http.Redirect(w, r, "/x/elsewhere?from=redirect", http.StatusFound)
	case "/x/ws":
		websocket.Handler(func(ws *websocket.Conn) { // message by message
			for {
				var m string
				if websocket.Message.Receive(ws, &m) != nil || websocket.Message.Send(ws, m) != nil {
					return
				}
			}
		}).ServeHTTP(w, r)
	default:
		u.echo.ServeHTTP(w, r)
	}
}

// credentialKinds are the kinds of route the exercises run with: the YAML
// of the injector (named bearer) and the check the upstream makes.
func credentialKinds(t *testing.T, e *env) map[string]func() (yaml string, valid func(http.Header) bool) {
	return map[string]func() (string, func(http.Header) bool){
		"static": func() (string, func(http.Header) bool) {
			return fmt.Sprintf(`  bearer: {kind: static, headers: {Authorization: {value: %q, prefix: "Bearer "}}}`, secretToken),
				func(h http.Header) bool { return h.Get("Authorization") == "Bearer "+secretToken }
		},
		"oauth2": func() (string, func(http.Header) bool) {
			ts := &sim.TokenServer{ClientID: "fleet-app", ClientSecret: secretToken}
			auth := e.httpsUpstream(ts)
			return fmt.Sprintf(`  bearer: {kind: oauth2, token_url: "https://auth.authproxy.test:%s/token", client_id: {value: fleet-app}, client_secret: {value: %q}}`,
					port(t, auth.URL), secretToken),
				func(h http.Header) bool {
					a := h.Get("Authorization")
					return strings.HasPrefix(a, "Bearer ") && ts.Valid(a[len("Bearer "):])
				}
		},
		"odil": func() (string, func(http.Header) bool) {
			odil := &sim.ODIL{KeyName: "odil-key", Key: secretToken, APICode: "TR:SB:OneDealer:OD", Username: "dealer-api", Password: "right-password"}
			up := e.httpsUpstream(odil)
			return fmt.Sprintf(`  bearer:
    kind: odil
    base_url: "https://odil.authproxy.test:%s/"
    company: AzureLDMS
    username: {value: dealer-api}
    password: {value: right-password}
    sas: {key_name: {value: odil-key}, key: {value: %q}}`, port(t, up.URL), secretToken),
				func(h http.Header) bool { return h.Get("Authorization") == "" && odil.Valid(h.Get("Session")) }
		},
	}
}

// The HTTP exercise — 64 MiB both ways (the upload chunked), HEAD, a 3xx
// passed through as it is, WebSocket over HTTP/1.1 — on every path through
// the proxy (sidecar HTTP/1.1 and h2c; forward intercepted HTTP/1.1 and
// HTTP/2, and plain), with a static, an oauth2 and an odil route. (openOBD
// routes carry gRPC only: the gRPC exercise and the openOBD tests cover
// them.) The large transfers run with the static route; the others move
// 1 MiB each way, as the credential plays no part in streaming.
func TestHTTPExerciseOnEveryPathAndCredentialKind(t *testing.T) {
	for _, kind := range []string{"static", "oauth2", "odil"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t)
			e.injEnv = injectors.Env{Cache: tokencache.New(tokencache.Options{})}
			yaml, valid := credentialKinds(t, e)[kind]()
			up := &exerciseUpstream{valid: valid}
			w := newListenerWorldOn(t, e, up, "/x/*", yaml)
			size := int64(1 << 20)
			if kind == "static" {
				size = 64 << 20
			}
			for _, p := range w.paths() {
				t.Run(p.name, func(t *testing.T) { exerciseHTTP(t, w, p, size) })
			}
			if n := up.rejected.Load(); n != 0 {
				t.Errorf("%d requests reached the upstream without a valid credential", n)
			}
		})
	}
}

func exerciseHTTP(t *testing.T, w *listenerWorld, p worldPath, size int64) {
	want := sha256.New()
	_, _ = io.Copy(want, io.LimitReader(&sim.Pattern{}, size))
	wantSum := hex.EncodeToString(want.Sum(nil))

	req, _ := http.NewRequest("POST", p.base+"/x/upload", io.LimitReader(&sim.Pattern{}, size))
	req.ContentLength = -1 // chunked on HTTP/1.1
	req.Header.Set("Authorization", "Bearer client-spoofed")
	resp, err := p.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	seen := decodeSeen(t, resp)
	if seen.BodyBytes != size || seen.BodySHA != wantSum {
		t.Errorf("upload: the upstream got %d bytes (sha match %v), want %d", seen.BodyBytes, seen.BodySHA == wantSum, size)
	}

	resp, err = p.client.Get(fmt.Sprintf("%s/x/download?size=%d", p.base, size))
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	if err != nil || n != size || hex.EncodeToString(h.Sum(nil)) != wantSum {
		t.Errorf("download: %d bytes (err %v), sha match %v", n, err, hex.EncodeToString(h.Sum(nil)) == wantSum)
	}

	resp, err = p.client.Head(p.base + "/x/download?size=1000")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != 1000 || len(body) != 0 {
		t.Errorf("HEAD: %d, content-length %d, %d body bytes", resp.StatusCode, resp.ContentLength, len(body))
	}

	noFollow := *p.client
	noFollow.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err = noFollow.Get(p.base + "/x/redirect")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/x/elsewhere?from=redirect" {
		t.Errorf("3xx: %d Location %q, want the upstream's 302 as it is", resp.StatusCode, resp.Header.Get("Location"))
	}

	if !p.h2 && !strings.HasPrefix(p.base, "http://plain") {
		websocketEcho(t, w, p)
	}
}

// websocketEcho opens a WebSocket (HTTP/1.1 Upgrade) through the path and
// has the upstream echo two messages.
func websocketEcho(t *testing.T, w *listenerWorld, p worldPath) {
	var conn net.Conn
	location := "ws://" + w.p.addr("app") + "/x/ws"
	if strings.HasPrefix(p.base, "https://") { // intercepted
		conn = tls.Client(connectTo(t, w.p.addr("fwd"), w.target()), &tls.Config{ServerName: "api.authproxy.test", RootCAs: w.e.proxyCA, NextProtos: []string{"http/1.1"}})
		location = "wss://" + w.target() + "/x/ws"
	} else {
		var err error
		if conn, err = net.Dial("tcp", w.p.addr("app")); err != nil {
			t.Fatal(err)
		}
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	cfg, err := websocket.NewConfig(location, "http://localhost/")
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.NewClient(cfg, conn)
	if err != nil {
		t.Fatalf("WebSocket handshake: %v", err)
	}
	for _, msg := range []string{"hello", strings.Repeat("w", 70_000)} {
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
			t.Fatalf("WebSocket echo: %d bytes (err %v), want %d", len(got), err, len(msg))
		}
	}
}
