package proxy_test

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/internal/redistest"
	"github.com/authproxy/authproxy/sim"
	"github.com/authproxy/authproxy/tokencache"
	"github.com/authproxy/authproxy/tokencache/redisstore"
)

// Three proxies on one store share one ODIL session: every request, through
// whichever proxy, carries the session the previous response handed out;
// after an expiry, 50 concurrent callers spread over the three cause one
// new session in all.
func TestODILFleetSharesOneRollingSession(t *testing.T) {
	srv := redistest.Start(t)
	e := newEnv(t)
	odil := &sim.ODIL{KeyName: "odil-key", Key: secretToken, APICode: "TR:SB:OneDealer:OD", Username: "dealer-api", Password: "right-password"}
	up := e.httpsUpstream(odil)
	var fleet []*running
	for range 3 {
		st, err := redisstore.New(redisstore.Options{Address: srv.Addr, EncryptionKey: []byte("odil-fleet-encryption-key-0123456789"),
			KeyPrefix: "odil-fleet:", MinBackoff: time.Millisecond, MaxBackoff: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		e.injEnv = injectors.Env{Cache: tokencache.New(tokencache.Options{Store: st, MinBackoff: time.Millisecond, MaxBackoff: time.Second})}
		fleet = append(fleet, e.start(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, host: odil.authproxy.test, upstream: "https://odil.authproxy.test:%[1]s"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {odil.authproxy.test: 127.0.0.1}}
injectors:
  odil:
    kind: odil
    base_url: "https://odil.authproxy.test:%[1]s/"
    username: {value: dealer-api}
    password: {value: right-password}
    sas: {key_name: {value: odil-key}, key: {value: %[2]q}}
    external: {owner_user_id: user-17, owner_company_id: company-4}
routes:
  - {name: odil-api, match: {path: "/api/*"}, injector: odil}
`, port(t, up.URL), secretToken), nil, nil))
	}
	clients := []*http.Client{h1Client(), h2cClient()}
	get := func(i int) (*http.Response, error) {
		return clients[i%2].Get("http://" + fleet[i%3].addr("app") + fmt.Sprintf("/api/od/vehicles/%d", i))
	}
	roundRobin := func(n int) {
		t.Helper()
		var prev sim.ODILSeen
		for i := range n {
			resp, err := get(i)
			if err != nil {
				t.Fatal(err)
			}
			seen := decodeODIL(t, resp)
			if i > 0 && seen.Session != prev.Renewed {
				t.Fatalf("call %d (proxy %d) carried a superseded session, not the one call %d's answer renewed", i, i%3, i-1)
			}
			prev = seen
		}
	}
	roundRobin(30)
	if n := odil.Creates(); n != 1 {
		t.Errorf("%d sessions created for 3 proxies, want 1", n)
	}

	odil.ExpireAll()
	before := odil.Creates()
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for i := range 50 {
		wg.Go(func() {
			st := 0
			if resp, err := get(i); err == nil {
				resp.Body.Close()
				st = resp.StatusCode
			}
			mu.Lock()
			statuses[st]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if statuses[200] != 50 {
		t.Errorf("50 callers over 3 proxies after the session expired: %v, want 50 × 200", statuses)
	}
	if n := odil.Creates() - before; n != 1 {
		t.Errorf("%d sessions created after the expiry by 3 proxies, want 1", n)
	}
	roundRobin(15) // and the fleet rolls on together
}
