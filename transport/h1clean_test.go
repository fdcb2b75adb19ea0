package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/internal/hostile"
)

// startHostile starts a hostile upstream, over TLS with a certificate of
// httptest's (returned, nil for plain HTTP).
func startHostile(t testing.TB, useTLS bool, answer, tail string) (*hostile.Server, *x509.Certificate) {
	t.Helper()
	var cfg *tls.Config
	var cert *x509.Certificate
	if useTLS {
		ts := httptest.NewUnstartedServer(nil)
		ts.StartTLS() // for its certificate
		cfg, cert = ts.TLS, ts.Certificate()
		ts.Close()
	}
	s, err := hostile.Start(cfg, answer, tail)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, cert
}

// roundTrip sends method url on rt and reads the answer whole, within
// 10 s, in reads of 32 KiB as httputil.ReverseProxy makes them: the
// response reader's buffer is passed by, and the TLS layer keeps what ends
// a record past the body.
func roundTrip(rt http.RoundTripper, method, url string) (status int, marker, body string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, url, nil)
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	var b []byte
	buf := make([]byte, 32<<10)
	for len(b) < 1<<20 {
		n, err := resp.Body.Read(buf)
		b = append(b, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			return resp.StatusCode, "", string(b), err
		}
	}
	return resp.StatusCode, resp.Header.Get("X-Marker"), string(b), nil
}

// After an upstream left an answer queued (in the same write, or sent
// while the connection sat idle), the trigger's client gets what
// http.Transport would give it, and the next three requests each get
// their own answer, over plain HTTP and TLS.
func TestH1FastNeverHandsOnAnAnswerLeftQueued(t *testing.T) {
	log.SetOutput(io.Discard) // http.Transport's "Unsolicited response" lines
	t.Cleanup(func() { log.SetOutput(os.Stderr) })
	for _, useTLS := range []bool{false, true} {
		for _, late := range []bool{false, true} {
			for _, tr := range hostile.Triggers {
				name := fmt.Sprintf("tls=%v/late=%v/%s", useTLS, late, tr.Name)
				t.Run(name, func(t *testing.T) {
					answer, tail := tr.Answer, ""
					if late { // the planted answer comes once the first has been read
						answer, tail = tr.Late()
					}
					h, cert := startHostile(t, useTLS, answer, tail)
					u := newSetTrusting(t, cert, config.Upstream{})
					// What http.Transport gives the trigger's client.
					ref, refCert := startHostile(t, useTLS, answer, "")
					refTr := &http.Transport{DisableCompression: true}
					if useTLS {
						roots := x509.NewCertPool()
						roots.AddCert(refCert)
						refTr.TLSClientConfig = &tls.Config{RootCAs: roots}
					}
					defer refTr.CloseIdleConnections()
					wantStatus, _, wantBody, wantErr := roundTrip(refTr, tr.Method, ref.URL()+"/hostile")

					status, _, body, err := roundTrip(u.H1, tr.Method, h.URL()+"/hostile")
					if (err != nil) != (wantErr != nil) || status != wantStatus || body != wantBody {
						t.Fatalf("trigger: %d %q (err %v); http.Transport gives %d %q (err %v)", status, body, err, wantStatus, wantBody, wantErr)
					}
					if !h.SendTail() {
						t.Fatal("the upstream never wrote its tail")
					}
					before := h.Count()
					for i := 1; i <= 3; i++ {
						m := fmt.Sprintf("client-%d", i)
						status, marker, body, err := roundTrip(u.H1, http.MethodGet, h.URL()+"/m/"+m)
						if err != nil || status != 200 || marker != m || body != m {
							t.Fatalf("%s after the trigger: %d marker %q body %q (err %v)", m, status, marker, body, err)
						}
					}
					if h.Count() == before {
						t.Error("the connection that carried the trigger was reused")
					}
				})
			}
		}
	}
}

// An answer that is clean leaves its connection in the pool, with a TLS
// session ticket or a Content-Length: 0 on a 204 as servers send them.
func TestH1FastReusesCleanConnections(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		h, cert := startHostile(t, useTLS, "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", "")
		u := newSetTrusting(t, cert, config.Upstream{})
		for i := 0; i < 5; i++ {
			if status, _, _, err := roundTrip(u.H1, http.MethodGet, h.URL()+"/hostile"); err != nil || status != 204 {
				t.Fatalf("tls=%v: 204: %d %v", useTLS, status, err)
			}
			m := fmt.Sprint("m", i)
			if _, marker, _, err := roundTrip(u.H1, http.MethodHead, h.URL()+"/m/"+m); err != nil || marker != m {
				t.Fatalf("tls=%v: HEAD: marker %q %v", useTLS, marker, err)
			}
		}
		if n := h.Count(); n != 1 {
			t.Errorf("tls=%v: 10 clean answers took %d connections, want 1", useTLS, n)
		}
	}
}

// recordConn follows TLS record framing however the bytes are cut.
func TestRecordConnFollowsRecords(t *testing.T) {
	stream := []byte{23, 3, 3, 0, 3, 'a', 'b', 'c', 22, 3, 3, 0, 0, 23, 3, 3, 1, 0}
	stream = append(stream, make([]byte, 256)...)
	for cut := 0; cut <= len(stream); cut++ {
		for cut2 := cut; cut2 <= len(stream); cut2 += 7 {
			var c recordConn
			c.follow(stream[:cut])
			c.follow(stream[cut:cut2])
			atBoundary := cut2 == 0 || cut2 == 8 || cut2 == 13 || cut2 == len(stream)
			if c.midRecord() == atBoundary {
				t.Fatalf("after %d then %d bytes: midRecord = %v", cut, cut2, c.midRecord())
			}
		}
	}
}

// For any bytes an upstream sends as its answer to one request (read at
// once or while the connection is idle), the next requests get exactly the
// clean answers the upstream wrote for them: never a byte of what it sent
// before.
func FuzzH1FastNeverHandsOnLeftovers(f *testing.F) {
	for _, tr := range hostile.Triggers {
		f.Add(tr.Method == http.MethodHead, false, uint16(len(tr.Answer)), []byte(tr.Answer))
		f.Add(tr.Method == http.MethodHead, true, uint16(len(tr.Answer)/2), []byte(tr.Answer))
	}
	f.Add(false, false, uint16(0), []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	f.Add(false, false, uint16(10), []byte("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"+hostile.Planted))
	f.Fuzz(func(t *testing.T, head, useTLS bool, split uint16, stream []byte) {
		at := min(int(split), len(stream))
		h, cert := startHostile(t, useTLS, string(stream[:at]), string(stream[at:]))
		u := newSetTrusting(t, cert, config.Upstream{})
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		// The answer to the hostile request may be anything, and may never
		// end: its client gives up after a short wait.
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		req, _ := http.NewRequestWithContext(ctx, method, h.URL()+"/hostile", nil)
		if resp, err := u.H1.RoundTrip(req); err == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
		}
		cancel()
		if !h.SendTail() {
			t.Fatal("the upstream never wrote its tail")
		}
		for i := 1; i <= 2; i++ {
			m := fmt.Sprintf("client-%d", i)
			status, marker, body, err := roundTrip(u.H1, http.MethodGet, h.URL()+"/m/"+m)
			if err != nil && errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("%s: no answer within 10 s", m)
			}
			if err != nil || status != 200 || marker != m || body != m {
				t.Fatalf("%s after %q then %q: %d marker %q body %q (err %v)", m, stream[:at], stream[at:], status, marker, body, err)
			}
		}
	})
}
