package proxy_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/sim"
	"github.com/authproxy/authproxy/tokencache"
)

// vissWorld is the reference deployment: AGTS, ATS and data server on
// three TLS ports of viss.authproxy.test, a sidecar and a forward listener
// in front of the data server.
type vissWorld struct {
	viss  *sim.VISS
	clock *sim.Clock
	p     *running
	data  string // the data server's port
	e     *env
}

func newVISSWorld(t *testing.T, shared bool) *vissWorld {
	e := newEnv(t)
	w := &vissWorld{viss: sim.NewVISS(), clock: sim.NewClock(time.Now()), e: e}
	w.viss.Now = w.clock.Now
	w.viss.SharedChannel = shared
	t.Cleanup(w.viss.Close)
	agts, ats, data := e.httpsUpstream(w.viss.AGTS()), e.httpsUpstream(w.viss.ATS()), e.httpsUpstream(w.viss.Data())
	w.data = port(t, data.URL)
	e.injEnv = injectors.Env{Now: w.clock.Now, Cache: tokencache.New(tokencache.Options{Now: w.clock.Now,
		MinBackoff: time.Second, FetchTimeout: 10 * time.Second, ScanInterval: 10 * time.Millisecond})}
	w.p = e.start(vissConfig(port(t, agts.URL), port(t, ats.URL), w.data, filepath.Join(e.dir, "viss-key.pem"), "", ""), nil, nil)
	return w
}

// vissConfig is the reference deployment's config: the viss injector on the
// AGTS, ATS and data ports of viss.authproxy.test, a sidecar and a forward
// listener; injectorExtra is more of the injector's block (lines indented
// for it), routeExtra more keys of the route (", key: value").
func vissConfig(agts, ats, data, keyFile, injectorExtra, routeExtra string) string {
	return fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, host: viss.authproxy.test, upstream: "https://viss.authproxy.test:%[3]s"}
  - {name: fwd, kind: forward, address: 127.0.0.1:0}
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {viss.authproxy.test: 127.0.0.1}}
injectors:
  fleet:
    kind: viss
    agts_url: "https://viss.authproxy.test:%[1]s/agts"
    ats_url: "https://viss.authproxy.test:%[2]s/ats"
    vin: "{header:X-Vin}"
    context: Independent+OEM+Cloud
    proof: {value: ABC}
    purpose: pay-how-you-drive
    long_term: {key_file: %[4]q}
%[5]s
routes:
  - {name: vehicle, match: {host: viss.authproxy.test, path: "/Vehicle/*"}, injector: fleet%[6]s}
`, agts, ats, data, keyFile, injectorExtra, routeExtra)
}

// get reads a signal through the sidecar or the forward listener and
// returns the status and body the client got.
func (w *vissWorld) get(t *testing.T, mode, path, vin string) (int, string) {
	t.Helper()
	c, base := h1Client(), "http://"+w.p.addr("app")
	switch mode {
	case "sidecar-h2c":
		c, base = h2cClient(), "http://"+w.p.addr("app")
	case "forward":
		c, base = proxiedClient(w.p.addr("fwd"), &tlsRoots{w.e.proxyCA}, true), "https://viss.authproxy.test:"+w.data
	}
	req, _ := http.NewRequest("GET", base+path, nil)
	req.Header.Set("X-Vin", vin)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

func (w *vissWorld) mustRead(t *testing.T, mode, path, vin string) {
	t.Helper()
	if st, body := w.get(t, mode, path, vin); st != 200 || !strings.Contains(body, `"value":"42"`) {
		t.Fatalf("%s %s (VIN %s): %d %s", mode, path, vin, st, body)
	}
}

// The reference flow end to end: a long-term AGT with PoP, the ATS
// exchange, reads of a validated signal; then a server restart (its tokens
// die, answered with 200 and an error body: the token is dropped, a new
// one obtained with the same AGT, the request sent once more), and a
// purpose that does not cover the signal (the client gets the server's
// answer as it is).
func TestVISSReferenceFlowThroughSidecarAndForward(t *testing.T) {
	w := newVISSWorld(t, false)
	modes := []string{"sidecar", "sidecar-h2c", "forward"}
	for _, mode := range modes {
		for range 3 {
			w.mustRead(t, mode, "/Vehicle/Speed", "VIN-A")
			w.mustRead(t, mode, "/Vehicle/Speed", "VIN-B")
		}
	}
	if a, x, d := w.viss.AGTRequests(), w.viss.ATSRequests(), w.viss.DataRequests(); a != 2 || x != 2 || d != 18 {
		t.Fatalf("%d AGT, %d ATS, %d data requests; want one AGT and one exchange per VIN, 18 reads", a, x, d)
	}

	t.Run("server restart", func(t *testing.T) {
		for i, mode := range modes {
			w.viss.Restart()
			w.clock.Advance(2 * time.Second) // the tokens are older than the cache's min_backoff
			w.mustRead(t, mode, "/Vehicle/Speed", "VIN-A")
			if a, x := w.viss.AGTRequests(), w.viss.ATSRequests(); a != 2 || x != int64(3+i) {
				t.Errorf("%s, after the restart: %d AGT and %d ATS requests, want the AGT reused and one new exchange (2, %d)", mode, a, x, 3+i)
			}
		}
		if d := w.viss.DataRequests(); d != 21 {
			t.Errorf("%d data reads served, want 21", d)
		}
	})

	t.Run("purpose does not cover the signal", func(t *testing.T) {
		before := w.viss.ATSRequests()
		for _, mode := range modes {
			st, body := w.get(t, mode, "/Vehicle/Cabin/Door/Row1/Left/IsOpen", "VIN-A")
			if st != 200 || !strings.Contains(body, "Permission denied. Purpose does not match signals requested.") {
				t.Errorf("%s: got %d %s, want the server's own answer", mode, st, body)
			}
		}
		if n := w.viss.ATSRequests() - before; n != 0 {
			t.Errorf("a refusal for the purpose cost %d new exchanges", n)
		}
	})
}

// The reference AGTS answers concurrent requests wrongly (one shared
// channel); the proxy sends it one at a time, so eight vehicles at once
// all get their data.
func TestVISSOneRequestAtATimeToTheReferenceAGTS(t *testing.T) {
	w := newVISSWorld(t, true)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for _, mode := range []string{"sidecar", "forward"} {
				vin := fmt.Sprintf("VIN-%s-%d", mode, i)
				if st, body := w.get(t, mode, "/Vehicle/Speed", vin); st != 200 || !strings.Contains(body, `"value":"42"`) {
					t.Errorf("%s VIN %s: %d %s", mode, vin, st, body)
				}
			}
		})
	}
	wg.Wait()
	if a := w.viss.AGTRequests(); a != 16 {
		t.Errorf("%d AGT requests, want 16", a)
	}
}

// The simulator's concurrency fault is real: without the proxy's bound,
// concurrent requests to it get other requests' answers or none.
func TestSimVISSSharedChannelFaultIsReal(t *testing.T) {
	viss := sim.NewVISS()
	viss.SharedChannel = true
	defer viss.Close()
	srv := httptest.NewServer(viss.AGTS())
	defer srv.Close()
	var wg sync.WaitGroup
	var mu sync.Mutex
	wrong := 0
	for i := range 16 {
		wg.Go(func() {
			vin := fmt.Sprintf("VIN%02d", i)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/agts",
				strings.NewReader(fmt.Sprintf(`{"vin":%q,"context":"Independent+OEM+Cloud","proof":"ABC"}`, vin)))
			resp, err := http.DefaultClient.Do(req)
			ok := false
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				ok = strings.Contains(string(b), `"token"`) && agtVIN(string(b)) == vin
			}
			if !ok {
				mu.Lock()
				wrong++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if wrong == 0 {
		t.Error("16 concurrent requests all got their own AGT: the fault is not reproduced")
	}
}

// agtVIN is the vin claim of the AGT in an AGTS answer.
func agtVIN(answer string) string {
	var a struct{ Token string }
	if json.Unmarshal([]byte(answer), &a) != nil {
		return ""
	}
	parts := strings.Split(a.Token, ".")
	if len(parts) != 3 {
		return ""
	}
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var c struct{ Vin string }
	_ = json.Unmarshal(payload, &c)
	return c.Vin
}

// A plain-HTTP issuer works when the injector says so, and every start
// says it at WARN.
func TestVISSPlaintextIssuerIsLoggedAtStart(t *testing.T) {
	e := newEnv(t)
	viss := sim.NewVISS()
	agts := httptest.NewServer(viss.AGTS())
	t.Cleanup(agts.Close)
	data := e.httpsUpstream(viss.Data())
	viss.Validated = []string{} // this deployment accepts reads without a token, so the AGT-only route is seen to work
	p := e.start(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, host: viss.authproxy.test, upstream: "https://viss.authproxy.test:%[2]s"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {viss.authproxy.test: 127.0.0.1}}
injectors:
  vehicle:
    kind: viss
    agts_url: "%[1]s/agts"
    allow_plaintext_issuer: true
    vin: GEO001
    context: Independent+OEM+Cloud
    proof: {value: ABC}
routes:
  - {name: vehicle, match: {path: "/Vehicle/*"}, injector: vehicle}
`, agts.URL, port(t, data.URL)), nil, nil)
	resp, err := h1Client().Get("http://" + p.addr("app") + "/Vehicle/Speed")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || viss.AGTRequests() != 1 {
		t.Errorf("through a plain-HTTP AGTS: %d, %d AGT requests", resp.StatusCode, viss.AGTRequests())
	}
	if logs := p.logs.String(); !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "agts_url is plain HTTP (allow_plaintext_issuer)") {
		t.Errorf("no warning at start:\n%.2000s", logs)
	}
}
