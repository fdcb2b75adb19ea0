package proxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/proctest"
)

// worldPath is one way through the proxy to the listenerWorld's upstream:
// a client, the base URL it asks, and the protocol it speaks to the proxy.
type worldPath struct {
	name   string
	client *http.Client
	base   string
	h2     bool
}

// paths are the five ways in: the sidecar over HTTP/1.1 and h2c, the
// forward listener's intercepted HTTP/1.1 and HTTP/2, and its plain
// absolute-URI requests.
func (w *listenerWorld) paths() []worldPath {
	fwd := func(h2 bool) *http.Client { return proxiedClient(w.p.addr("fwd"), &tlsRoots{w.e.proxyCA}, h2) }
	return []worldPath{
		{"sidecar HTTP/1.1", h1Client(), "http://" + w.p.addr("app"), false},
		{"sidecar h2c", h2cClient(), "http://" + w.p.addr("app"), true},
		{"forward intercepted HTTP/1.1", fwd(false), "https://" + w.target(), false},
		{"forward intercepted HTTP/2", fwd(true), "https://" + w.target(), true},
		{"forward plain HTTP/1.1", fwd(false), "http://" + w.plainHost(), false},
	}
}

// direct is a client of the upstream itself, over HTTP/2 or HTTP/1.1.
func (w *listenerWorld) direct(h2 bool) *http.Client {
	tr := &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: w.e.pki.Pool}, DisableCompression: true,
		Protocols: new(http.Protocols),
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, p, _ := net.SplitHostPort(addr)
			return (&net.Dialer{}).DialContext(ctx, network, "127.0.0.1:"+p) // *.authproxy.test is loopback
		}}
	if h2 {
		tr.Protocols.SetHTTP2(true)
	} else {
		tr.Protocols.SetHTTP1(true)
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// A response head reaches the client as the upstream sent it: nothing
// added (no Date, no sniffed Content-Type), nothing rewritten (a gRPC
// content type stays application/grpc), on every path, by either engine.
// The reference is what a client of the upstream itself gets over the
// same protocol.
func TestResponseHeadersArriveAsSent(t *testing.T) {
	upstream := http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		h := rw.Header()
		h["Date"] = nil // sent without one
		switch r.URL.Path {
		case "/v1/grpc":
			h.Set("Content-Type", "application/grpc")
		default:
			h["Content-Type"] = nil // sent without one; the body looks like HTML
		}
		h.Add("X-Multi", "a")
		h.Add("X-Multi", "b")
		h.Set("Cache-Control", "no-store")
		rw.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(rw, "<html>body</html>")
	})
	w := newListenerWorld(t, upstream, "/v1/*")
	for _, path := range []string{"/v1/grpc", "/v1/bare"} {
		want := map[bool]http.Header{}
		for _, h2 := range []bool{false, true} {
			resp, err := w.direct(h2).Get("https://" + w.target() + path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			want[h2] = resp.Header
		}
		if _, ok := want[true]["Date"]; ok {
			t.Fatalf("the test upstream sends a Date; it must not, for the test to show anything")
		}
		for _, p := range w.paths() {
			t.Run(p.name+path, func(t *testing.T) {
				resp, err := p.client.Get(p.base + path)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(body) != "<html>body</html>" {
					t.Errorf("body %q", body)
				}
				if got, w := fmt.Sprint(resp.Header), fmt.Sprint(want[p.h2]); got != w {
					t.Errorf("client got head\n  %s\nthe upstream sends\n  %s", got, w)
				}
			})
		}
	}
}

// An event stream's head reaches the client as soon as the upstream sends
// it, before any event: the upstream sends its first event only once the
// client has the head, so a proxy that held the head for the first body
// byte would fail this (after 10 s), never pass it slowly.
func TestEventStreamHeadIsNotHeldForTheBody(t *testing.T) {
	gotHead := make(chan struct{}, 1)
	upstream := http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "text/event-stream")
		rw.WriteHeader(http.StatusOK)
		http.NewResponseController(rw).Flush()
		select {
		case <-gotHead:
			_, _ = io.WriteString(rw, "data: first\n\n")
		case <-time.After(10 * time.Second):
			_, _ = io.WriteString(rw, "data: too late\n\n")
		case <-r.Context().Done():
		}
	})
	w := newListenerWorld(t, upstream, "/events/*")
	for _, p := range w.paths() {
		t.Run(p.name, func(t *testing.T) {
			start := time.Now()
			resp, err := p.client.Get(p.base + "/events/x")
			if err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			gotHead <- struct{}{}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "data: first\n\n" {
				t.Errorf("got %q: the head waited for the body", body)
			}
			t.Logf("head after %v", took)
		})
	}
}

// Expect: 100-continue gets its 100 (Continue) through every path, so a
// client that waits for it (curl does for bodies over 1 MiB) never stalls.
// The clients wait up to 20 s for the 100 and give up after 10 s: a path
// that never answers it fails rather than passing slowly.
func TestExpectContinueIsAnswered(t *testing.T) {
	upstream := http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(rw, "%d bytes, authorization %v", n, r.Header.Get("Authorization") != "")
	})
	w := newListenerWorld(t, upstream, "/up/*")
	const size = 2 << 20
	body := bytes.Repeat([]byte("u"), size)
	want := fmt.Sprintf("%d bytes, authorization true", size)
	for _, p := range w.paths() {
		t.Run("net/http "+p.name, func(t *testing.T) {
			c := *p.client
			tr := c.Transport.(*http.Transport).Clone()
			tr.ExpectContinueTimeout = 20 * time.Second
			c.Transport, c.Timeout = tr, 10*time.Second
			req, _ := http.NewRequest("PUT", p.base+"/up/file", bytes.NewReader(body))
			req.Header.Set("Expect", "100-continue")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(got) != want {
				t.Errorf("got %d %q", resp.StatusCode, got)
			}
		})
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed (bash .ci/deps installs it as root)")
	}
	for _, tc := range []struct{ name, url string }{
		{"forward intercepted", "https://" + w.target() + "/up/file"},
		{"forward plain", "http://" + w.plainHost() + "/up/file"},
	} {
		t.Run("curl "+tc.name, func(t *testing.T) {
			caFile := w.e.caCert
			cmd := exec.Command("curl", "-sS", "--http1.1", "--max-time", "10", "--expect100-timeout", "20",
				"--proxy", "http://"+w.p.addr("fwd"), "--cacert", caFile, "-T", "-", tc.url)
			cmd.Env = []string{"PATH=/usr/bin:/bin"}
			cmd.Stdin = bytes.NewReader(body)
			out, err := cmd.CombinedOutput()
			if err != nil || string(out) != want {
				t.Errorf("curl: %v: %s", err, strings.TrimSpace(string(out)))
			}
		})
	}
}

// grpcurl, a gRPC client that knows no service in advance, works through
// the forward listener (HTTPS_PROXY, interception): server reflection
// (list, describe) and then a call, with the credential injected.
func TestGRPCurlThroughTheForwardListener(t *testing.T) {
	bin := proctest.Tool(t, "grpcurl")
	e := newEnv(t)
	_, grpcPort := e.grpcUpstream()
	cfg := strings.Replace(grpcConfig(grpcPort), "path: /grpc.testing.TestService/*", "path: /*", 1)
	p := e.start(cfg, nil, nil)
	target := "grpc.authproxy.test:" + grpcPort
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"-cacert", e.caCert, "-max-time", "20"}, args...)...)
		cmd.Env = []string{"HTTPS_PROXY=http://" + p.addr("fwd"), "PATH=/usr/bin:/bin"}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("grpcurl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if out := run(target, "list"); !strings.Contains(out, "grpc.testing.TestService") {
		t.Errorf("list: %s", out)
	}
	if out := run(target, "describe", "grpc.testing.TestService"); !strings.Contains(out, "rpc UnaryCall") {
		t.Errorf("describe: %s", out)
	}
	out := run("-d", `{"fill_username": true, "payload": {"body": "aGk="}}`, target, "grpc.testing.TestService/UnaryCall")
	if !strings.Contains(out, `"username": "Bearer `+secretToken+`"`) || !strings.Contains(out, `"body": "aGk="`) {
		t.Errorf("call: %s", out)
	}
}
