package transport

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/authproxy/authproxy/config"
)

// connServer is a TLS HTTP/1.1 server on loopback that counts the
// connections it accepted and has open.
type connServer struct {
	*httptest.Server
	mu             sync.Mutex
	opened, closed int
}

func newConnServer(t *testing.T, h http.HandlerFunc) *connServer {
	return newConnServerIdle(t, h, 0)
}

// newConnServerIdle starts a connServer that closes connections idle for
// longer than idle (0: never).
func newConnServerIdle(t *testing.T, h http.HandlerFunc, idle time.Duration) *connServer {
	t.Helper()
	s := &connServer{}
	s.Server = httptest.NewUnstartedServer(h)
	s.Config.IdleTimeout = idle
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		s.mu.Lock()
		defer s.mu.Unlock()
		switch st {
		case http.StateNew:
			s.opened++
		case http.StateClosed, http.StateHijacked:
			s.closed++
		}
	}
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

func (s *connServer) counts() (opened, closed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opened, s.closed
}

// waitClosed waits up to 5 s for the server to have seen n connections close.
func (s *connServer) waitClosed(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, closed := s.counts(); closed >= n {
			return
		}
		if time.Now().After(deadline) {
			opened, closed := s.counts()
			t.Fatalf("server saw %d connections closed (of %d opened), want %d", closed, opened, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func newSet(t *testing.T, s *connServer, cfg config.Upstream) *Set {
	t.Helper()
	return newSetTrusting(t, s.Certificate(), cfg)
}

// newSetTrusting builds a Set from cfg whose roots are cert (nil: the
// system's).
func newSetTrusting(t testing.TB, cert *x509.Certificate, cfg config.Upstream) *Set {
	t.Helper()
	if cert == nil {
		u, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(u.Close)
		return u
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	if err := os.WriteFile(ca, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.CAFile = ca
	u, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.Close)
	return u
}

func do(t *testing.T, rt http.RoundTripper, method, url string, body io.Reader) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, body)
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	return resp, string(b)
}

func TestH1FastKeepsConnectionsAlive(t *testing.T) {
	s := newConnServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 1 {
			t.Errorf("server saw %s, want HTTP/1.1", r.Proto)
		}
		switch r.URL.Path {
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
		case "/hints":
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Write([]byte("final"))
		default:
			w.Header().Set("X-Method", r.Method)
			io.WriteString(w, "hello "+r.Method)
		}
	})
	u := newSet(t, s, config.Upstream{})
	for i := 0; i < 20; i++ {
		resp, body := do(t, u.H1, "GET", s.URL+"/x", nil)
		if resp.StatusCode != 200 || body != "hello GET" {
			t.Fatalf("GET: %d %q", resp.StatusCode, body)
		}
	}
	if resp, body := do(t, u.H1, "HEAD", s.URL+"/x", nil); resp.StatusCode != 200 || body != "" || resp.Header.Get("X-Method") != "HEAD" {
		t.Errorf("HEAD: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if resp, body := do(t, u.H1, "GET", s.URL+"/nocontent", nil); resp.StatusCode != 204 || body != "" {
		t.Errorf("204: %d %q", resp.StatusCode, body)
	}
	if resp, body := do(t, u.H1, "GET", s.URL+"/hints", nil); resp.StatusCode != 200 || body != "final" {
		t.Errorf("after 103 Early Hints: %d %q, want the final 200", resp.StatusCode, body)
	}
	// A request with a body goes through the fallback transport, on a
	// connection of its own.
	if resp, body := do(t, u.H1, "POST", s.URL+"/x", strings.NewReader("data")); resp.StatusCode != 200 || body != "hello POST" {
		t.Errorf("POST: %d %q", resp.StatusCode, body)
	}
	if opened, _ := s.counts(); opened != 2 {
		t.Errorf("server saw %d connections, want 1 for the 23 bodiless requests and 1 for the POST", opened)
	}
}

func TestH1FastRetriesOnAConnectionTheServerClosed(t *testing.T) {
	// The server drops idle connections before the client does.
	s := newConnServerIdle(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }, 50*time.Millisecond)
	u := newSet(t, s, config.Upstream{})
	do(t, u.H1, "GET", s.URL, nil)
	s.waitClosed(t, 1)
	resp, body := do(t, u.H1, "GET", s.URL, nil) // the pooled connection is dead
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("after the server closed the idle connection: %d %q", resp.StatusCode, body)
	}
	if opened, _ := s.counts(); opened != 2 {
		t.Errorf("server saw %d connections, want 2", opened)
	}
}

func TestH1FastDoesNotReuseUnfinishedOrClosingConnections(t *testing.T) {
	s := newConnServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
		io.WriteString(w, strings.Repeat("x", 64<<10))
	})
	u := newSet(t, s, config.Upstream{})

	do(t, u.H1, "GET", s.URL+"/close", nil)
	s.waitClosed(t, 1)

	// A body closed before its end leaves unread bytes: the connection
	// cannot carry another request.
	req, _ := http.NewRequest("GET", s.URL+"/big", nil)
	resp, err := u.H1.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Read(make([]byte, 10))
	resp.Body.Close()
	s.waitClosed(t, 2)

	do(t, u.H1, "GET", s.URL+"/big", nil)
	if opened, _ := s.counts(); opened != 3 {
		t.Errorf("server saw %d connections, want 3", opened)
	}
}

func TestH1FastHonoursTheRequestContextAndResponseHeaderTimeout(t *testing.T) {
	release := make(chan struct{})
	s := newConnServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	u := newSet(t, s, config.Upstream{ResponseHeaderTimeout: config.Duration(100 * time.Millisecond)})

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", s.URL, nil)
	start := time.Now()
	_, err := u.H1.RoundTrip(req)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled request: err %v, want context.Canceled", err)
	}

	req, _ = http.NewRequest("GET", s.URL, nil)
	_, err = u.H1.RoundTrip(req)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("slow upstream: err %v, want the response header timeout", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("both requests took %v", d)
	}
	s.waitClosed(t, 2) // neither connection went back to the pool
}

func TestH1FastBoundsAndExpiresIdleConnections(t *testing.T) {
	release := make(chan struct{})
	var inFlight sync.WaitGroup
	s := newConnServer(t, func(w http.ResponseWriter, r *http.Request) {
		inFlight.Done()
		<-release
		io.WriteString(w, "ok")
	})
	u := newSet(t, s, config.Upstream{MaxIdleConnsPerHost: 1, IdleConnTimeout: config.Duration(200 * time.Millisecond)})

	// Three requests at once need three connections; one stays idle.
	inFlight.Add(3)
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", s.URL, nil)
			resp, err := u.H1.RoundTrip(req)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}()
	}
	inFlight.Wait()
	close(release)
	wg.Wait()
	s.waitClosed(t, 2) // over max_idle_conns_per_host
	if _, closed := s.counts(); closed != 2 {
		t.Errorf("%d connections closed right after the requests, want 2", closed)
	}
	s.waitClosed(t, 3) // the idle one, after idle_conn_timeout
}

// An upstream's response head is bounded on both HTTP/1.1 paths (the fast
// path and http.Transport): a 3 MiB head, which each would otherwise read
// whole, is refused.
func TestResponseHeadIsBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				bw := bufio.NewWriter(c)
				bw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n")
				for i := 0; i < 3<<10; i++ {
					fmt.Fprintf(bw, "X-Pad-%d: %s\r\n", i, strings.Repeat("p", 1000))
				}
				bw.WriteString("\r\nok")
				_ = bw.Flush()
			}()
		}
	}()
	u, err := New(config.Upstream{})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for _, method := range []string{"GET", "POST"} { // fast path, http.Transport
		req, _ := http.NewRequest(method, "http://"+ln.Addr().String()+"/", strings.NewReader(""))
		if method == "GET" {
			req.Body = nil
		}
		resp, err := u.H1.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
			t.Errorf("%s: a 3 MiB response head was read whole", method)
		} else if !strings.Contains(err.Error(), "exceed") {
			t.Errorf("%s: %v, want the head refused as too large", method, err)
		}
	}
}

// CanonicalAddr is net.JoinHostPort of the host and the (default) port,
// whether or not it builds a new string.
func TestCanonicalAddr(t *testing.T) {
	for _, raw := range []string{
		"https://example.com", "http://example.com", "https://example.com:8443/x",
		"http://127.0.0.1:80", "https://[::1]:443", "https://[::1]", "https://[fe80::1%25en0]:443",
		"https://EXAMPLE.com:443", "https://example.com.:443",
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		port := u.Port()
		if port == "" {
			port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
		}
		if got, want := CanonicalAddr(u), net.JoinHostPort(u.Hostname(), port); got != want {
			t.Errorf("CanonicalAddr(%s) = %q, want %q", raw, got, want)
		}
	}
}
