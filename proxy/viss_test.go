package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/sim"
	"github.com/authproxy/authproxy/tokencache"
)

func TestVISSShortAndLongTermThroughSidecarAndForward(t *testing.T) {
	e := newEnv(t)
	clock := sim.NewClock(time.Now())
	viss := sim.NewVISS()
	viss.Now = clock.Now
	viss.AcceptAGT = true
	up := e.httpsUpstream(viss)
	vport := port(t, up.URL)
	e.injEnv = injectors.Env{Now: clock.Now, Cache: tokencache.New(tokencache.Options{Now: clock.Now, ScanInterval: 10 * time.Millisecond})}
	p := e.start(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, host: viss.authproxy.test, upstream: "https://viss.authproxy.test:%[1]s"}
  - {name: fwd, kind: forward, address: 127.0.0.1:0}
ca: {cert_file: "{{CA_CERT}}", key_file: "{{CA_KEY}}"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {viss.authproxy.test: 127.0.0.1}}
injectors:
  short:
    kind: viss
    agts_url: "https://viss.authproxy.test:%[1]s/agts"
    ats_url: "https://viss.authproxy.test:%[1]s/ats"
    vin: "{vin}"
    context: Independent+OEM+Cloud
    proof: {value: ABC}
    purpose: fuel-status
  long:
    kind: viss
    agts_url: "https://viss.authproxy.test:%[1]s/agts"
    ats_url: "https://viss.authproxy.test:%[1]s/ats"
    vin: "{header:X-Vin}"
    context: Owner+Third party+Nomadic
    proof: {value: ABC}
    purpose: fuel-status
    long_term: {key_file: %[2]q}
  wrong-proof:
    kind: viss
    agts_url: "https://viss.authproxy.test:%[1]s/agts"
    vin: GEO001
    context: Dealer+OEM+Vehicle
    proof: {value: not-the-proof}
  agt-only:
    kind: viss
    agts_url: "https://viss.authproxy.test:%[1]s/agts"
    vin: GEO001
    context: Dealer+OEM+Vehicle
    proof: {value: ABC}
routes:
  - {name: short, match: {host: viss.authproxy.test, path: "/short/{vin}/*"}, injector: short}
  - {name: long, match: {host: viss.authproxy.test, path: "/long/*"}, injector: long}
  - {name: agt-only, match: {host: viss.authproxy.test, path: "/agt/*"}, injector: agt-only}
  - {name: wrong-proof, match: {host: viss.authproxy.test, path: "/wrong/*"}, injector: wrong-proof}
`, vport, filepath.Join(e.dir, "viss-key.pem")), nil, nil)

	clients := map[string]struct {
		c    *http.Client
		base string
	}{
		"sidecar": {h1Client(), "http://" + p.addr("app")},
		"forward": {proxiedClient(p.addr("fwd"), &tlsRoots{e.proxyCA}, true), "https://viss.authproxy.test:" + vport},
	}
	get := func(t *testing.T, mode, path, vin string) {
		t.Helper()
		req, _ := http.NewRequest("GET", clients[mode].base+path, nil)
		if vin != "" {
			req.Header.Set("X-Vin", vin)
		}
		resp, err := clients[mode].c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), `"value":"42"`) {
			t.Fatalf("%s %s: %d %s", mode, path, resp.StatusCode, b)
		}
	}
	for _, mode := range []string{"sidecar", "forward"} {
		t.Run(mode, func(t *testing.T) {
			for i := 0; i < 3; i++ {
				get(t, mode, "/short/VIN-A/Vehicle/Speed", "")
				get(t, mode, "/short/VIN-B/Vehicle/Speed", "")
				get(t, mode, "/long/Vehicle/Powertrain/FuelLevel", "VIN-C")
				get(t, mode, "/agt/Vehicle/Speed", "")
			}
		})
	}
	// One AGT per (VIN, context): A, B (short), C (long), GEO001 (AGT only);
	// one access token per AGT and purpose.
	if a, x := viss.AGTRequests(), viss.ATSRequests(); a != 4 || x != 3 {
		t.Errorf("%d AGT and %d ATS requests, want 4 and 3", a, x)
	}
	// The AGTS refuses the proof with HTTP 201 and an error body: the client
	// gets a clear error, not a request without its token.
	resp, err := h1Client().Get("http://" + p.addr("app") + "/wrong/Vehicle/Speed")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(b), `credential rejected by its issuer (route "wrong-proof")`) {
		t.Errorf("wrong proof: %d %q", resp.StatusCode, b)
	}
	if !strings.Contains(p.logs.String(), "201 Created with error: Client authentication failed") {
		t.Errorf("the log does not say why")
	}
	if a, x := viss.AGTRequests(), viss.ATSRequests(); a != 5 || x != 3 {
		t.Errorf("%d AGT and %d ATS requests, want 5 and 3 (one refused)", a, x)
	}

	// 50 minutes on, the access tokens (1 h) are refreshed in the
	// background while requests keep flowing; the AGTs (4 h, 4 days) are
	// reused for the new exchanges.
	clock.Advance(50 * time.Minute)
	get(t, "sidecar", "/short/VIN-A/Vehicle/Speed", "")
	get(t, "sidecar", "/long/Vehicle/Speed", "VIN-C")
	// Wait for the exchanges to finish, not merely arrive: the clock jumps
	// next, and a proof of possession checked after the jump would be stale.
	deadline := time.Now().Add(10 * time.Second)
	for viss.AccessTokensIssued() < 5 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if a, x := viss.AGTRequests(), viss.ATSRequests(); a != 5 || x != 5 {
		t.Errorf("after the refresh point: %d AGT and %d ATS requests, want 5 and 5", a, x)
	}
	clock.Advance(15 * time.Minute) // past the old tokens' expiry
	get(t, "sidecar", "/short/VIN-A/Vehicle/Speed", "")
	get(t, "forward", "/long/Vehicle/Speed", "VIN-C")
	if x := viss.ATSRequests(); x != 5 {
		t.Errorf("requests after the old tokens expired caused %d more ATS requests", x-5)
	}
}
