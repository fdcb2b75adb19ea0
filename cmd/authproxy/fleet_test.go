package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/authproxy/authproxy/internal/redistest"
	"github.com/authproxy/authproxy/internal/syncbuf"
	"github.com/authproxy/authproxy/openobd/pb"
	"github.com/authproxy/authproxy/sim"
)

const (
	fleetKey    = "fleet-encryption-key-0123456789-abcdef"
	fleetSecret = "fleet-client-secret-7d1c"
)

// fleet is N authproxy processes sharing one redis-server, in front of a
// simulated token endpoint and an API that wants its tokens.
type fleet struct {
	t     *testing.T
	redis *redistest.Server
	ts    *sim.TokenServer
	cfg   string
	procs []*proxyProc
}

type proxyProc struct {
	cmd   *exec.Cmd
	app   string // the sidecar's address
	admin string
	logs  *syncbuf.Buffer
}

func newFleet(t *testing.T, n int, expiresIn int, fetchTimeout string, opts ...func(*sim.TokenServer)) *fleet {
	t.Helper()
	dir := t.TempDir()
	f := &fleet{t: t, redis: redistest.Start(t)}
	pki, serve := testTLS(t, dir, "auth.fleet.test", "api.fleet.test")
	f.ts = &sim.TokenServer{ClientID: "fleet-app", ClientSecret: fleetSecret, Auth: "basic", ExpiresIn: expiresIn}
	for _, o := range opts {
		o(f.ts)
	}
	authPort, apiPort := serve(f.ts), serve(f.ts.RequireToken(&sim.Echo{}))
	f.cfg = filepath.Join(dir, "fleet.yaml")
	os.WriteFile(f.cfg, []byte(fmt.Sprintf(`
admin: {address: "127.0.0.1:0"}
listeners:
  - {name: app, kind: sidecar, address: "127.0.0.1:0", upstream: "https://api.fleet.test:%s"}
upstream: {ca_file: %q, resolve: {api.fleet.test: 127.0.0.1, auth.fleet.test: 127.0.0.1}}
token_cache:
  refresh_fraction: 0.5
  min_margin: 1s
  fetch_timeout: %s
  shared:
    address: %q
    key_prefix: "fleet-test:"
    encryption_key: {env: FLEET_KEY}
injectors:
  api:
    kind: oauth2
    token_url: "https://auth.fleet.test:%s/token"
    client_id: {value: fleet-app}
    client_secret: {env: FLEET_SECRET}
    scopes: [read, "mount:{mount}"]
routes:
  - {name: mounts, match: {path: "/mounts/{mount}/*"}, injector: api}
`, apiPort, pki.CAFile, fetchTimeout, f.redis.Addr, authPort)), 0o600)
	for range n {
		f.procs = append(f.procs, f.start())
	}
	return f
}

// start runs one proxy process and waits for its listeners.
func (f *fleet) start() *proxyProc {
	t := f.t
	t.Helper()
	cmd := exec.Command(binary, "run", "-config", f.cfg)
	cmd.Env = []string{"FLEET_KEY=" + fleetKey, "FLEET_SECRET=" + fleetSecret, "PATH=" + os.Getenv("PATH")}
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	p := &proxyProc{cmd: cmd, logs: &syncbuf.Buffer{}}
	appRE := regexp.MustCompile(`listener=app kind=sidecar address=(\S+)`)
	adminRE := regexp.MustCompile(`listener=admin address=(\S+)`)
	sc := bufio.NewScanner(stderr)
	for (p.app == "" || p.admin == "") && sc.Scan() {
		p.logs.WriteString(sc.Text() + "\n")
		if m := appRE.FindStringSubmatch(sc.Text()); m != nil {
			p.app = m[1]
		}
		if m := adminRE.FindStringSubmatch(sc.Text()); m != nil {
			p.admin = m[1]
		}
	}
	if p.app == "" || p.admin == "" {
		t.Fatalf("a proxy did not report its addresses:\n%s", p.logs.String())
	}
	go io.Copy(p.logs, stderr)
	return p
}

var fleetClient = &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second}

// get sends a GET for mount through proxy p and returns the status.
func (p *proxyProc) get(mount string) (int, error) {
	resp, err := fleetClient.Get("http://" + p.app + "/mounts/" + mount + "/state")
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// admin GETs a path of p's admin listener.
func (p *proxyProc) adminGet(t *testing.T, path string) string {
	t.Helper()
	resp, err := fleetClient.Get("http://" + p.admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func (p *proxyProc) storeState(t *testing.T) string {
	var v struct {
		TokenStore string `json:"token_store"`
	}
	json.Unmarshal([]byte(p.adminGet(t, "/status?format=json")), &v)
	return v.TokenStore
}

// burst sends n concurrent requests spread over the fleet's processes and
// returns the count per status (0: a transport error).
func (f *fleet) burst(n int, mount func(i int) string) map[int]int {
	var wg sync.WaitGroup
	var mu sync.Mutex
	out := map[int]int{}
	for i := range n {
		wg.Go(func() {
			st, _ := f.procs[i%len(f.procs)].get(mount(i))
			mu.Lock()
			out[st]++
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// Three proxy processes on one store behave as one: a cold burst costs
// one token request, steady load one refresh per refresh interval in all,
// the store holds nothing in the clear, and when it stops every request
// still succeeds (each proxy fetching for itself, saying so on /status and
// /metrics) until it is back.
//
// Counts, not times: the cold burst's token lives an hour, so however long
// a starved machine takes to serve the burst no refresh falls inside it;
// the steady load's token lives 8 s and is refreshed at half its life, so a
// refresh may run 4 s late before a lookup misses.
func TestFleetOfProcessesSharesTokens(t *testing.T) {
	f := newFleet(t, 3, 8, "10s", func(ts *sim.TokenServer) {
		ts.ScopeLife = map[string]int{"read mount:cold": 3600}
	})
	f.ts.SetDelay(300 * time.Millisecond)
	if got := f.burst(300, func(int) string { return "cold" }); got[200] != 300 {
		t.Fatalf("cold burst: %v, want 300 × 200", got)
	}
	if n := f.ts.Calls(); n != 1 {
		t.Errorf("300 concurrent cold requests over 3 proxies cost %d token requests, want 1", n)
	}
	f.ts.SetDelay(0)

	// Steady load over 10 s with an 8 s token refreshed at half its life:
	// about 2 refreshes in all, not 2 per proxy; no lookup misses.
	for _, p := range f.procs { // each proxy has m1 before the count starts
		if st, err := p.get("m1"); st != 200 {
			t.Fatalf("m1: %d %v", st, err)
		}
	}
	before := f.ts.Calls()
	missesBefore := f.misses(t)
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if got := f.burst(6, func(int) string { return "m1" }); got[200] != 6 {
			t.Fatalf("steady load: %v", got)
		}
	}
	if n := f.ts.Calls() - before; n < 2 || n > 4 {
		t.Errorf("%d token requests over 10 s of an 8 s token refreshed every 4 s on 3 proxies, want about 2 for the fleet (6 would be one each)", n)
	}
	if m := f.misses(t) - missesBefore; m > 0 {
		t.Errorf("%d lookups under steady load found no valid token (a request waited)", m)
	}

	// What the store holds: no token, secret, scope or injector name.
	f.checkStoreIsSealed(t)

	// The store stops in the middle of a load that keeps asking for new
	// mounts (fetches) and old ones: no request fails.
	loadDone := make(chan map[int]int)
	go func() {
		all := map[int]int{}
		for round := range 20 { // 20 rounds of 6: 120 requests, about 2 s
			for st, n := range f.burst(6, func(i int) string { return fmt.Sprintf("load-%d-%d", round/2, i%2) }) {
				all[st] += n
			}
			time.Sleep(100 * time.Millisecond)
		}
		loadDone <- all
	}()
	time.Sleep(500 * time.Millisecond)
	f.redis.Stop()
	if got := <-loadDone; got[200] != 120 {
		t.Errorf("with the store stopped mid-load: %v, want 120 × 200", got)
	}
	if got := f.burst(60, func(i int) string { return fmt.Sprintf("down-%d", i%6) }); got[200] != 60 {
		t.Errorf("with the store down: %v, want 60 × 200", got)
	}
	for i, p := range f.procs {
		if s := p.storeState(t); s != "degraded" {
			t.Errorf("proxy %d: /status says the token store is %q with the store down", i, s)
		}
		if m := p.adminGet(t, "/metrics"); !strings.Contains(m, "authproxy_token_store_up 0") {
			t.Errorf("proxy %d: /metrics lacks authproxy_token_store_up 0", i)
		}
		if !strings.Contains(p.logs.String(), "shared token store unreachable") {
			t.Errorf("proxy %d did not log the store's loss", i)
		}
	}
	f.redis.Restart()
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range f.procs {
		for p.storeState(t) != "shared" && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
	}
	for i, p := range f.procs {
		if s := p.storeState(t); s != "shared" {
			t.Errorf("proxy %d: the store is back and /status says %q", i, s)
		}
	}
	// Shared again: a new mount through all three costs one request.
	// (Counted for this scope alone: the tokens of the mounts used before
	// are being refreshed meanwhile.)
	if got := f.burst(30, func(int) string { return "back" }); got[200] != 30 {
		t.Errorf("after the store's return: %v", got)
	}
	if n := f.ts.Scopes()["read mount:back"]; n != 1 {
		for i, p := range f.procs {
			t.Logf("proxy %d said the store was lost %d times", i, strings.Count(p.logs.String(), "shared token store unreachable"))
		}
		t.Errorf("a new mount through 3 proxies after the store's return cost %d token requests, want 1", n)
	}
}

// misses sums the fleet's token cache misses.
func (f *fleet) misses(t *testing.T) int {
	re := regexp.MustCompile(`authproxy_token_cache_lookups_total\{injector="api",result="miss"\} (\d+)`)
	n := 0
	for _, p := range f.procs {
		if m := re.FindStringSubmatch(p.adminGet(t, "/metrics")); m != nil {
			v, _ := strconv.Atoi(m[1])
			n += v
		}
	}
	return n
}

// checkStoreIsSealed reads every key and field of the store and looks for
// anything a token, the client secret, the encryption key, a scope or the
// injector's name would show, raw or in base64.
func (f *fleet) checkStoreIsSealed(t *testing.T) {
	t.Helper()
	f.checkStoreHolds(t, append(f.ts.Issued(), fleetSecret, fleetKey, "mount:m1", "mount:cold", "read mount", "fleet-app", "api\x00"))
}

// checkStoreHolds fails if any of needles is in the store, raw or in
// base64, as redis-cli shows every key and value.
func (f *fleet) checkStoreHolds(t *testing.T, needles []string) {
	t.Helper()
	dump := f.redis.Dump()
	for _, s := range needles {
		for _, form := range []string{s, base64.StdEncoding.EncodeToString([]byte(s)), base64.RawStdEncoding.EncodeToString([]byte(s))} {
			if strings.Contains(dump, form) {
				t.Errorf("the store holds %q in the clear (or in base64)", s)
			}
		}
	}
}

// The proxy holding a key's lock is killed (SIGKILL) in the middle of its
// fetch: another takes the lock when its lease runs out and fetches, and
// the requests waiting on the survivors succeed.
func TestFleetLockHolderKilledMidFetch(t *testing.T) {
	f := newFleet(t, 3, 3600, "9s")
	f.ts.SetDelay(1500 * time.Millisecond)
	results := make(chan int, 3)
	for _, p := range f.procs {
		go func() {
			st, _ := p.get("m1")
			results <- st
		}()
	}
	// Find the holder by the pid its lock names.
	c := f.redis.Client()
	defer c.Close()
	var holder int
	for end := time.Now().Add(5 * time.Second); holder == 0 && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		keys, _ := c.Keys(context.Background(), "fleet-test:l:*").Result()
		if len(keys) == 1 {
			v, _ := c.Get(context.Background(), keys[0]).Result()
			holder, _ = strconv.Atoi(strings.SplitN(v, "-", 2)[0])
		}
	}
	var killed *proxyProc
	for _, p := range f.procs {
		if p.cmd.Process.Pid == holder {
			killed = p
		}
	}
	if killed == nil {
		t.Fatalf("no proxy holds the lock (pid %d)", holder)
	}
	if err := killed.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	statuses := map[int]int{}
	for range 3 {
		statuses[<-results]++
	}
	if statuses[200] != 2 || statuses[0] != 1 {
		t.Errorf("requests: %v, want the 2 on the survivors to succeed (and the killed proxy's to fail)", statuses)
	}
	if n := f.ts.Calls(); n != 2 {
		t.Errorf("%d token requests, want 2: the killed holder's and its successor's", n)
	}
}

// An openOBD session started through proxy A is used through B and C with
// the latest token across rotations; the proxy holding its token stream
// (A, which authenticated it) is killed (SIGKILL): another takes the
// stream over and calls through the other two keep succeeding.
func TestFleetSharesOpenOBDSessions(t *testing.T) {
	dir := t.TempDir()
	f := &fleet{t: t, redis: redistest.Start(t)}
	pki, err := sim.NewPKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, _ := pki.ServerTLS("grpc.openobd.test", "s1.openobd.test")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, obdPort, _ := net.SplitHostPort(ln.Addr().String())
	obd := &sim.OpenOBD{ClientID: "garage-app", ClientSecret: fleetSecret, ClusterID: "001",
		RotateEvery: 300 * time.Millisecond, Grace: 2 * time.Second, Endpoints: []string{"s1.openobd.test:" + obdPort}}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
	obd.Register(gs)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	f.cfg = filepath.Join(dir, "obd.yaml")
	os.WriteFile(f.cfg, []byte(fmt.Sprintf(`
admin: {address: "127.0.0.1:0"}
listeners:
  - {name: app, kind: sidecar, address: "127.0.0.1:0", host: grpc.openobd.test, upstream: "https://grpc.openobd.test:%[1]s"}
upstream: {ca_file: %[2]q, resolve: {grpc.openobd.test: 127.0.0.1, s1.openobd.test: 127.0.0.1}}
token_cache:
  shared: {address: %[3]q, key_prefix: "obd-fleet:", encryption_key: {env: FLEET_KEY}}
injectors:
  obd:
    kind: openobd
    endpoint: "grpc.openobd.test:%[1]s"
    client_id: {value: garage-app}
    client_secret: {env: FLEET_SECRET}
    cluster_id: "001"
routes:
  - {name: openobd, match: {host: "*.openobd.test", path: /*}, injector: obd}
`, obdPort, pki.CAFile, f.redis.Addr)), 0o600)
	for range 3 {
		f.procs = append(f.procs, f.start())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dial := func(p *proxyProc, authority string) *grpc.ClientConn {
		opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithNoProxy()}
		if authority != "" {
			opts = append(opts, grpc.WithAuthority(authority))
		}
		c, err := grpc.NewClient(p.app, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	info, err := pb.NewSessionControllerClient(dial(f.procs[0], "")).StartSessionOnTicket(ctx, &pb.TicketId{Value: "fleet-ticket"})
	if err != nil {
		t.Fatal(err)
	}
	// Each proxy's application dials it with the session's endpoint as
	// :authority, as an unmodified client behind a sidecar would.
	var cans []pb.CanClient
	for _, p := range f.procs {
		cans = append(cans, pb.NewCanClient(dial(p, info.GrpcEndpoint)))
	}
	roundTrip := func(i int, msg string) error { return sim.ISOTPRoundTrip(ctx, cans[i], msg) }
	// The first session call goes through A: A authenticates the session
	// and holds its token stream.
	if err := roundTrip(0, "through A"); err != nil {
		t.Fatalf("through A: %v", err)
	}
	// B and C use it with the latest token across 3 rotations.
	calls := func(who []int, rotations int64) {
		t.Helper()
		from := obd.Rotations()
		for n := 0; obd.Rotations() < from+rotations; n++ {
			if n > 400 {
				t.Fatalf("%d rotations in %d calls", obd.Rotations()-from, n)
			}
			i := who[n%len(who)]
			if err := roundTrip(i, fmt.Sprintf("call %d", n)); err != nil {
				t.Fatalf("call %d through proxy %d, after %d rotations: %v", n, i, obd.Rotations()-from, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	calls([]int{1, 2}, 3)
	// The store holds the session sealed: no id, endpoint or token.
	f.checkStoreHolds(t, []string{info.Id, info.GrpcEndpoint, info.AuthenticationToken, fleetSecret, fleetKey})
	if n := obd.Authentications(); n != 1 {
		t.Errorf("%d authentications of the session, want 1 (by A, for the fleet)", n)
	}

	// Kill the proxy that holds the stream (by the pid its lease names).
	c := f.redis.Client()
	defer c.Close()
	keys, _ := c.Keys(ctx, "obd-fleet:l:*").Result()
	if len(keys) != 1 {
		t.Fatalf("stream leases: %v, want 1", keys)
	}
	v, _ := c.Get(ctx, keys[0]).Result()
	holder, _ := strconv.Atoi(strings.SplitN(v, "-", 2)[0])
	var survivors []int
	killed := false
	for i, p := range f.procs {
		if p.cmd.Process.Pid != holder {
			survivors = append(survivors, i)
			continue
		}
		if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killed = true
	}
	if !killed {
		t.Fatalf("no proxy holds the stream's lease (pid %d)", holder)
	}
	// (A took the lease when it authenticated, unless B or C, adopting the
	// session meanwhile, was quicker: the holder is killed either way.)
	// The two others keep calling while one of them takes the stream
	// over, and across 3 rotations of its stream.
	calls(survivors, 3)
	if n := obd.OpenTokenStreams(); n != 1 {
		t.Errorf("%d token streams open after the takeover, want 1", n)
	}
}
