// Command harness runs authproxy's benchmark on loopback, against the direct
// path and nginx, alternating the contenders round by round and reporting
// medians. See bench/README.md; bench/run.sh installs the tools and runs it.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var (
	duration = flag.Duration("duration", 5*time.Second, "length of each load")
	rounds   = flag.Int("rounds", 3, "rounds; each contender runs once per round, the median is reported")
	out      = flag.String("out", "", "also write the report to this markdown file")
	work     = flag.String("work", "", "working directory (default: a temporary one)")
	only     = flag.String("scenarios", "", "comma-separated scenario keys to run (default: all): "+strings.Join(scenarioKeys, ", "))
	tracing  = flag.Bool("tracing", false, "run every authproxy with tracing on (sample_ratio 1), exporting to an OTLP/HTTP sink of the harness's own on 127.0.0.1:18199")
)

var scenarioKeys = []string{"h1-1", "h1-64", "h2", "grpc", "grpc-go", "grpc-bidi", "fwd-h1", "fwd-h2", "odil", "openobd", "memory"}

// want reports whether the scenario with this key is to run.
func want(key string) bool {
	return *only == "" || slices.Contains(strings.Split(*only, ","), key)
}

// contender is one way of reaching the upstream.
type contender struct {
	name  string
	procs string // GOMAXPROCS or nginx workers; "" for direct
	h1    string // URL for wrk
	h2    string // URL for h2load ("" = not in that scenario)
	grpc  string // host:port for ghz ("" = not in that scenario)
	pids  func() []int
	proc  string   // the process measured (contenders may share one); "" = name|procs
	extra []string // request headers the client must send (direct only)

	// For bench/load: a forward proxy (CONNECT) and the CA its
	// interception certificates come from; a gRPC target and how to reach it.
	proxyURL, proxyCA string
	grpcGo            string   // host:port for bench/load -mode grpc ("" = not in that scenario)
	grpcGoArgs        []string // extra bench/load flags
	grpcGoEnv         []string // extra environment (HTTPS_PROXY)
	// The simulated upstreams: an ODIL API URL for h2load (with extra),
	// and an openOBD target for bench/load -mode openobd with its flags.
	odil, obd string
	obdArgs   []string
	// fresh starts a new process with the same config and GOMAXPROCS on
	// other ports and returns this contender pointed at it, and what stops
	// it (memory: idle connections, measured where no other listener has
	// left heap behind); nil for nginx, measured in its loaded process.
	fresh func() (contender, func())
	// floor marks the bare TCP relay: a reference for what the hops
	// alone cost, left out of the memory table.
	floor bool
	// only limits the contender to the scenarios with these keys (none:
	// every scenario it has a target for).
	only []string
}

func (c contender) process() string {
	if c.proc != "" {
		return c.proc
	}
	return c.name + "|" + c.procs
}

type result struct {
	rps, p50, p99, cpuUS float64 // cpuUS < 0: not measured
	peakRSS              int64   // KiB, the largest of the samples taken during the load
}

func main() {
	flag.Parse()
	log.SetFlags(0)
	dir := *work
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "authproxy-bench"); err != nil {
			die("%v", err)
		}
	}
	for _, tool := range []string{"wrk", "h2load", "nginx", "mitmdump", "ghz"} {
		if _, err := exec.LookPath(tool); err != nil {
			die("%s is not installed: run bench/run.sh, which installs it", tool)
		}
	}
	bin := func(name, pkg string) string {
		p := filepath.Join(dir, name)
		run("go", "build", "-o", p, pkg)
		return p
	}
	authproxy := bin("authproxy", "./cmd/authproxy")
	upstreamBin := bin("upstream", "./bench/upstream")
	loadBin = bin("load", "./bench/load")
	relayBin := bin("tcprelay", "./bench/tcprelay")
	gomitmBin := bin("gomitm", "./bench/gomitm")
	caFile := filepath.Join(dir, "upstream-ca.pem")
	for _, port := range []int{18080, 18443, 18444, 18445, 18446, 18150, 18151, 18152, 18160, 18161, 18162, 18103, 18123, 18153, 18163, 18173, 18183, 18170, 18171, 18172, 18180, 18181, 18182, 18100, 18101, 18102, 18120, 18121, 18122, 18210, 18211, 18220, 18221, 18190, 18191, 18192, 18193, 18194, 18300} {
		if listening(fmt.Sprintf("127.0.0.1:%d", port)) {
			die("127.0.0.1:%d is already in use (a previous run still alive?); the harness needs ports 18080, 18443-18446, 18100-18103, 18120-18123, 18150-18153, 18160-18163, 18170-18173, 18180-18183, 18190-18194, 18210-18221, 18300", port)
		}
	}
	odilSession := filepath.Join(dir, "odil-session")
	up := start(dir, "upstream", nil, upstreamBin, "-plain", "127.0.0.1:18080", "-tls", "127.0.0.1:18443", "-grpc", "127.0.0.1:18444", "-ca", caFile,
		"-odil", "127.0.0.1:18445", "-odil-session", odilSession, "-openobd", "127.0.0.1:18446")
	atExit(func() { stop(up) })
	waitPort("127.0.0.1:18443")
	waitPort("127.0.0.1:18445")
	waitPort("127.0.0.1:18446")
	session, err := os.ReadFile(odilSession)
	if err != nil {
		die("%v", err)
	}

	if *tracing {
		startOTLPSink("127.0.0.1:18199")
	}
	var contenders []contender
	const freshBase = 18103 // the memory test's fresh processes
	contenders = append(contenders, contender{name: "direct (TLS)", h1: "https://127.0.0.1:18443/", h2: "https://127.0.0.1:18443/", grpc: "127.0.0.1:18444",
		pids: func() []int { return nil }, extra: []string{"Authorization: Bearer bench-token"},
		grpcGo: "127.0.0.1:18444", grpcGoArgs: []string{"-ca", caFile, "-authorization", "Bearer bench-token"},
		odil: "https://127.0.0.1:18445/api/bench", obd: "127.0.0.1:18446", obdArgs: []string{"-ca", caFile, "-obd-secret", "bench-secret"}})
	var forwards []contender
	port := 18100
	for _, kind := range []string{"static", "oauth2"} {
		for _, procs := range []string{"1", "2"} {
			if kind == "oauth2" && procs == "1" {
				continue
			}
			cfg := filepath.Join(dir, fmt.Sprintf("authproxy-%s-%s.yaml", kind, procs))
			proxyCA := filepath.Join(dir, fmt.Sprintf("authproxy-ca-%s-%s.pem", kind, procs))
			writeConfig(cfg, kind, port, caFile, proxyCA)
			p := start(dir, "authproxy-"+kind+"-"+procs, []string{"GOMAXPROCS=" + procs}, authproxy, "run", "-config", cfg)
			atExit(func() { stop(p) })
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			waitPort(addr)
			pid := p.Process.Pid
			// freshAt gives a contender that, for the memory test, starts a
			// process of its own with this config on the fresh ports.
			freshAt := func(mk func(base int) contender) contender {
				c := mk(port)
				c.fresh = func() (contender, func()) {
					fcfg := filepath.Join(dir, fmt.Sprintf("authproxy-%s-%s-fresh.yaml", kind, procs))
					writeConfig(fcfg, kind, freshBase, caFile, proxyCA)
					fp := start(dir, "authproxy-"+kind+"-"+procs+"-fresh", []string{"GOMAXPROCS=" + procs}, authproxy, "run", "-config", fcfg)
					for _, off := range []int{0, 20, 50} {
						waitPort(fmt.Sprintf("127.0.0.1:%d", freshBase+off))
					}
					fpid := fp.Process.Pid
					fc := mk(freshBase)
					fc.pids = func() []int { return []int{fpid} }
					return fc, func() { stop(fp) }
				}
				return c
			}
			c := freshAt(func(base int) contender {
				a := fmt.Sprintf("127.0.0.1:%d", base)
				return contender{name: "authproxy sidecar, " + kind, procs: procs, proc: "authproxy-" + kind + "-" + procs,
					h1: "http://" + a + "/", h2: "http://" + a + "/", pids: func() []int { return []int{pid} }}
			})
			if kind == "static" {
				c.grpc = fmt.Sprintf("127.0.0.1:%d", port+50)
				c.grpcGo, c.grpcGoArgs = c.grpc, []string{"-insecure"}
				c.odil = fmt.Sprintf("http://127.0.0.1:%d/api/bench", port+60)
				c.obd, c.obdArgs = fmt.Sprintf("127.0.0.1:%d", port+70), []string{"-insecure"}
				// The same process serves a forward listener too; only one
				// load runs at a time, so its CPU counts for one contender.
				fwd := fmt.Sprintf("http://127.0.0.1:%d", port+20)
				waitPort(fmt.Sprintf("127.0.0.1:%d", port+20))
				forwards = append(forwards, contender{name: "authproxy forward, static", procs: procs, pids: c.pids, proc: c.proc,
					proxyURL: fwd, proxyCA: proxyCA,
					grpcGo: "upstream.bench.test:18444", grpcGoArgs: []string{"-ca", caFile + "," + proxyCA},
					grpcGoEnv: []string{"HTTPS_PROXY=" + fwd}})
				// The same, where the route names its clients and the
				// client sends a proxy password with every CONNECT.
				waitPort(fmt.Sprintf("127.0.0.1:%d", port+30))
				forwards = append(forwards, contender{name: "authproxy forward, static, basic auth", procs: procs, pids: c.pids, proc: c.proc,
					only: []string{"fwd-h1", "fwd-h2"}, proxyURL: fmt.Sprintf("http://bench:bench-proxy-pw@127.0.0.1:%d", port+30), proxyCA: proxyCA})
			}
			contenders = append(contenders, c)
			port++
		}
	}
	for _, workers := range []string{"1", "2"} {
		h1, h2 := 18200+mustAtoi(workers)*10, 18201+mustAtoi(workers)*10
		conf := writeNginx(dir, workers, h1, h2, caFile)
		p := start(dir, "nginx-"+workers, nil, "nginx", "-c", conf, "-g", "daemon off;")
		atExit(func() { stop(p) }) // SIGTERM: nginx's master then stops its workers
		waitPort(fmt.Sprintf("127.0.0.1:%d", h1))
		master := p.Process.Pid
		contenders = append(contenders, contender{name: "nginx", procs: workers,
			h1: fmt.Sprintf("http://127.0.0.1:%d/", h1), h2: fmt.Sprintf("http://127.0.0.1:%d/", h2),
			pids: func() []int { return append([]int{master}, children(master)...) }})
	}
	// The floor: bytes passed between client and upstream, TLS end to end,
	// nothing read; the same client flags as direct.
	relay := start(dir, "tcprelay", []string{"GOMAXPROCS=2"}, relayBin,
		"-listen", "127.0.0.1:18190=127.0.0.1:18443", "-listen", "127.0.0.1:18191=127.0.0.1:18444", "-connect", "127.0.0.1:18192")
	atExit(func() { stop(relay) })
	waitPort("127.0.0.1:18192")
	relayPID := relay.Process.Pid
	contenders = append(contenders, contender{name: "bare TCP relay (floor)", procs: "2", floor: true,
		h1: "https://127.0.0.1:18190/", h2: "https://127.0.0.1:18190/", extra: []string{"Authorization: Bearer bench-token"},
		pids:     func() []int { return []int{relayPID} },
		proxyURL: "http://127.0.0.1:18192", proxyCA: caFile,
		grpcGo: "127.0.0.1:18191", grpcGoArgs: []string{"-ca", caFile, "-authorization", "Bearer bench-token"}})
	// The reference for interception: Go's standard library alone
	// (net/http's server, ReverseProxy, http.Transport, crypto/tls),
	// through CONNECT only.
	for i, procs := range []string{"1", "2"} {
		addr := fmt.Sprintf("127.0.0.1:%d", 18193+i)
		caOut := filepath.Join(dir, "gomitm-ca-"+procs+".pem")
		p := start(dir, "gomitm-"+procs, []string{"GOMAXPROCS=" + procs}, gomitmBin, "-listen", addr, "-ca-out", caOut, "-upstream-ca", caFile)
		atExit(func() { stop(p) })
		waitPort(addr)
		pid := p.Process.Pid
		forwards = append(forwards, contender{name: "Go net/http interception (reference)", procs: procs, only: []string{"fwd-h1", "fwd-h2"},
			pids: func() []int { return []int{pid} }, proxyURL: "http://" + addr, proxyCA: caOut})
	}
	contenders = append(contenders, forwards...)
	contenders = append(contenders, startMitmproxy(dir, caFile))

	type scenario struct {
		key     string
		title   string
		run     func(c contender) result
		applies func(c contender) bool
	}
	runs := func(s scenario, c contender) bool {
		return (len(c.only) == 0 || slices.Contains(c.only, s.key)) && s.applies(c)
	}
	isDirect := func(c contender) bool { return c.procs == "" }
	hasH1 := func(c contender) bool { return c.h1 != "" }
	hasH2 := func(c contender) bool { return c.h2 != "" }
	hasGRPC := func(c contender) bool { return c.grpc != "" }
	hasGRPCGo := func(c contender) bool { return c.grpcGo != "" }
	forwarding := func(c contender) bool { return c.proxyURL != "" || isDirect(c) }
	var scenarios []scenario
	for _, s := range []scenario{
		{"h1-1", "HTTP/1.1 keep-alive, 1 connection (wrk)", func(c contender) result { return wrk(c, 1) }, hasH1},
		{"h1-64", "HTTP/1.1 keep-alive, 64 connections (wrk)", func(c contender) result { return wrk(c, 64) }, hasH1},
		{"h2", "HTTP/2, 4 connections × 16 streams (h2load; sidecar and nginx take h2c)", func(c contender) result { return h2load(c, dir) }, hasH2},
		{"grpc", "gRPC unary, 2 connections × 16 concurrent calls (ghz; the sidecar takes h2c)", func(c contender) result { return ghz(c, caFile) }, hasGRPC},
		{"grpc-go", "gRPC unary, 2 connections × 32 calls in flight (bench/load with grpc-go; sidecar: h2c; forward: HTTPS_PROXY and interception)",
			func(c contender) result { return grpcLoad(c, "grpc", "-conns", "2", "-c", "32") }, hasGRPCGo},
		{"grpc-bidi", "gRPC bidi streaming, round trips of 64-byte messages on 1 long-lived stream (bench/load with grpc-go; sidecar: h2c; forward: HTTPS_PROXY and interception)",
			func(c contender) result { return grpcLoad(c, "grpc-bidi", "-conns", "1", "-c", "1") }, hasGRPCGo},
		{"fwd-h1", "HTTPS through a forward proxy, 8 CONNECT tunnels × HTTP/1.1 keep-alive (bench/load; the proxy intercepts and sets Authorization)",
			func(c contender) result { return forwardLoad(c, caFile, "-conns", "8") }, forwarding},
		{"fwd-h2", "HTTPS through a forward proxy, 2 CONNECT tunnels × 32 HTTP/2 streams in flight (bench/load)",
			func(c contender) result { return forwardLoad(c, caFile, "-h2", "-conns", "2", "-c", "32") }, forwarding},
		{"odil", "ODIL simulator: HTTP/2, 4 connections × 16 streams, the session renewed by every response (h2load; the sidecar takes h2c)",
			func(c contender) result {
				if isDirect(c) {
					c.extra = []string{"Session: " + string(session)}
				}
				c.h2 = c.odil
				return h2load(c, dir)
			}, func(c contender) bool { return c.odil != "" }},
		{"openobd", "openOBD simulator: gRPC unary session calls, 2 connections × 32 in flight, the session token rotated every second over the token stream (bench/load; the sidecar takes h2c)",
			func(c contender) result {
				return runLoad(c, nil, append([]string{"-mode", "openobd", "-target", c.obd, "-conns", "2", "-c", "32"}, c.obdArgs...)...)
			}, func(c contender) bool { return c.obd != "" }},
	} {
		if want(s.key) {
			scenarios = append(scenarios, s)
		}
	}
	// Resident memory of each proxy after start-up, before any load.
	idleRSS := map[string]int64{}
	time.Sleep(time.Second)
	for _, c := range contenders {
		if c.procs != "" {
			idleRSS[c.process()] = rss(c.pids())
		}
	}
	results := map[string]map[string][]result{}
	for r := 0; r < *rounds; r++ {
		for _, s := range scenarios {
			order := slices.Clone(contenders)
			if r%2 == 1 {
				slices.Reverse(order) // alternate the order between rounds
			}
			for _, c := range order {
				if !runs(s, c) {
					continue
				}
				key := c.name + "|" + c.procs
				if results[s.title] == nil {
					results[s.title] = map[string][]result{}
				}
				res := measure(c, s.run)
				log.Printf("round %d  %-50s %-34s %10.0f req/s  p50 %.3f ms  p99 %.3f ms  cpu %.1f µs/req", r+1, s.title, key, res.rps, res.p50, res.p99, res.cpuUS)
				results[s.title][key] = append(results[s.title][key], res)
			}
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "Measured %s on %s (%d cores as seen by Go), %d rounds of %s per contender, medians.\n\n",
		time.Now().UTC().Format("2006-01-02"), cpuModel(), runtime.NumCPU(), *rounds, *duration)
	for _, s := range scenarios {
		fmt.Fprintf(&b, "### %s\n\n| contender | procs | req/s | p50 ms | p99 ms | proxy CPU µs/req | req/s vs direct |\n|---|---|---|---|---|---|---|\n", s.title)
		direct := median(results[s.title]["direct (TLS)|"], func(r result) float64 { return r.rps })
		for _, c := range contenders {
			if !runs(s, c) {
				continue
			}
			rs := results[s.title][c.name+"|"+c.procs]
			rps := median(rs, func(r result) float64 { return r.rps })
			cpu := "—"
			if c.procs != "" {
				cpu = fmt.Sprintf("%.1f", median(rs, func(r result) float64 { return r.cpuUS }))
			}
			fmt.Fprintf(&b, "| %s | %s | %.0f | %.3f | %.3f | %s | %.2f× |\n", c.name, or(c.procs, "—"), rps,
				median(rs, func(r result) float64 { return r.p50 }), median(rs, func(r result) float64 { return r.p99 }), cpu, rps/direct)
		}
		b.WriteString("\n")
	}
	if want("memory") {
		peaks := map[string]int64{} // by process
		for _, byKey := range results {
			for _, c := range contenders {
				for _, r := range byKey[c.name+"|"+c.procs] {
					peaks[c.process()] = max(peaks[c.process()], r.peakRSS)
				}
			}
		}
		b.WriteString(memory(contenders, idleRSS, peaks))
	}
	fmt.Print(b.String())
	if *out != "" {
		if err := os.WriteFile(*out, []byte(b.String()), 0o644); err != nil {
			die("%v", err)
		}
	}
	runExits()
}

var exits []func()

// atExit registers a cleanup; they run last-in first-out, on success and
// on die alike, so no contender outlives the harness.
func atExit(f func()) { exits = append(exits, f) }

func runExits() {
	for i := len(exits) - 1; i >= 0; i-- {
		exits[i]()
	}
	exits = nil
}

// die stops everything the harness started, then exits with the message.
func die(format string, args ...any) {
	runExits()
	log.Fatalf(format, args...)
}

// measure runs one load and the proxy's CPU time during it.
func measure(c contender, load func(contender) result) result {
	before := cpuTicks(c.pids())
	stop, peak := make(chan struct{}), make(chan int64)
	go func() { // RSS every 250 ms while the load runs
		var max int64
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				if r := rss(c.pids()); r > max {
					max = r
				}
			case <-stop:
				peak <- max
				return
			}
		}
	}()
	res := load(c)
	after := cpuTicks(c.pids())
	close(stop)
	res.peakRSS = <-peak
	res.cpuUS = -1
	if c.procs != "" && res.rps > 0 {
		requests := res.rps * duration.Seconds()
		res.cpuUS = float64(after-before) * 1e6 / clkTck / requests
	}
	return res
}

var wrkRPS = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
var wrkPct = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$`)

func wrk(c contender, conns int) result {
	args := []string{"-t", strconv.Itoa(min(2, conns)), "-c", strconv.Itoa(conns), "-d", duration.String(), "--latency"}
	for _, h := range c.extra {
		args = append(args, "-H", h)
	}
	text := output("wrk", append(args, c.h1)...)
	if strings.Contains(text, "Non-2xx") {
		die("%s answered errors:\n%s", c.name, text)
	}
	var r result
	if m := wrkRPS.FindStringSubmatch(text); m != nil {
		r.rps, _ = strconv.ParseFloat(m[1], 64)
	}
	for _, m := range wrkPct.FindAllStringSubmatch(text, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		v *= map[string]float64{"us": 0.001, "ms": 1, "s": 1000}[m[3]]
		if m[1] == "50" {
			r.p50 = v
		} else {
			r.p99 = v
		}
	}
	return r
}

var h2RPS = regexp.MustCompile(`finished in [\d.]+\w*, ([\d.]+) req/s`)
var h2OK = regexp.MustCompile(`status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx`)

func h2load(c contender, dir string) result {
	logFile := filepath.Join(dir, "h2load.log")
	os.Remove(logFile)
	args := []string{"-D", strconv.Itoa(int(duration.Seconds())), "-c", "4", "-m", "16", "-t", "1", "--log-file", logFile}
	for _, h := range c.extra {
		args = append(args, "-H", h)
	}
	text := output("h2load", append(args, c.h2)...)
	if m := h2OK.FindStringSubmatch(text); m == nil || m[3] != "0" || m[4] != "0" {
		die("%s answered errors:\n%s", c.name, text)
	}
	var r result
	if m := h2RPS.FindStringSubmatch(text); m != nil {
		r.rps, _ = strconv.ParseFloat(m[1], 64)
	}
	var lat []float64
	f, err := os.Open(logFile)
	if err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) == 3 {
				us, _ := strconv.ParseFloat(fields[2], 64)
				lat = append(lat, us/1000)
			}
		}
		f.Close()
	}
	slices.Sort(lat)
	if len(lat) > 0 {
		r.p50, r.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	return r
}

func ghz(c contender, caFile string) result {
	args := []string{"--call", "grpc.testing.TestService/UnaryCall", "-d", `{"payload":{"body":"aGVsbG8="}}`,
		"-z", duration.String(), "-c", "16", "--connections", "2", "--format", "json"}
	if c.procs == "" {
		args = append(args, "--cacert", caFile, "--cname", "upstream.bench.test", "-m", `{"authorization":"Bearer bench-token"}`)
	} else {
		args = append(args, "--insecure")
	}
	text := output("ghz", append(args, c.grpc)...)
	var rep struct {
		Count   int64
		Rps     float64
		Latency []struct {
			Percentage int
			Latency    float64 // ns
		} `json:"latencyDistribution"`
		Status map[string]int64 `json:"statusCodeDistribution"`
	}
	if err := json.Unmarshal([]byte(text), &rep); err != nil {
		die("ghz output: %v\n%s", err, text)
	}
	// The calls in flight when -z ends (at most the 16 concurrent ones) can
	// come back UNAVAILABLE or CANCELED; more than that is a real error.
	var failed int64
	for code, n := range rep.Status {
		if code != "OK" {
			failed += n
		}
	}
	if rep.Status["OK"] == 0 || failed > 16 {
		die("%s answered gRPC errors: %v", c.name, rep.Status)
	}
	if failed > 0 {
		log.Printf("%s: %d of %d calls cut off at the end of the load: %v", c.name, failed, failed+rep.Status["OK"], rep.Status)
	}
	r := result{rps: rep.Rps}
	for _, l := range rep.Latency {
		switch l.Percentage {
		case 50:
			r.p50 = l.Latency / 1e6
		case 99:
			r.p99 = l.Latency / 1e6
		}
	}
	return r
}

// memory reports each proxy's resident memory after the load, and with
// 1,000 idle HTTP/2 (h2c) client connections open.
func memory(contenders []contender, idleRSS, peakRSS map[string]int64) string {
	var b strings.Builder
	b.WriteString("### Memory\n\n| contender | procs | RSS idle before the loads, MiB | peak RSS during the loads, MiB | RSS after the loads, MiB | RSS with 1,000 idle HTTP/2 connections (h2c)¹, MiB | per idle connection, KiB |\n|---|---|---|---|---|---|---|\n")
	afterLoads := map[string]int64{} // by process, before any idle connections of this test
	for _, c := range contenders {
		if c.procs != "" {
			if _, ok := afterLoads[c.process()]; !ok {
				afterLoads[c.process()] = rss(c.pids())
			}
		}
	}
	for _, c := range contenders {
		if c.procs == "" || c.h2 == "" || c.floor {
			continue // direct; the forward listeners share the sidecars' processes; the floor holds nothing
		}
		key := c.process()
		stopFresh := func() {}
		if c.fresh != nil {
			c, stopFresh = c.fresh()
			time.Sleep(time.Second)
		}
		before := rss(c.pids())
		var closers []func()
		for i := 0; i < 1000; i++ {
			closeConn, err := idleConn(c)
			if err != nil {
				die("%s: idle connection %d: %v", c.name, i, err)
			}
			closers = append(closers, closeConn)
		}
		time.Sleep(time.Second)
		with := rss(c.pids())
		for _, closeConn := range closers {
			closeConn()
		}
		stopFresh()
		fmt.Fprintf(&b, "| %s | %s | %.1f | %.1f | %.1f | %.1f | %.1f |\n", c.name, c.procs, float64(idleRSS[key])/1024,
			float64(peakRSS[key])/1024, float64(afterLoads[key])/1024, float64(with)/1024, float64(with-before)/1000)
	}
	b.WriteString("\n¹ authproxy: in a fresh process with the same config and GOMAXPROCS, so that no other listener's connections have left heap behind; nginx: in its loaded process.\n\n")
	return b.String()
}

// idleConn opens one h2c client connection to the contender and leaves it
// idle after one request. It returns what closes it.
func idleConn(c contender) (func(), error) {
	tr := &http.Transport{Proxy: nil, Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(c.h2)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return tr.CloseIdleConnections, nil
}

// rss sums VmRSS (KiB) of the processes.
func rss(pids []int) int64 {
	var total int64
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				total += n
			}
		}
	}
	return total
}

const clkTck = 100 // USER_HZ on Linux

// cpuTicks sums utime+stime of the processes (all their threads).
func cpuTicks(pids []int) int64 {
	var total int64
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(data)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		ut, _ := strconv.ParseInt(fields[11], 10, 64)
		st, _ := strconv.ParseInt(fields[12], 10, 64)
		total += ut + st
	}
	return total
}

func children(pid int) []int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(data)) {
		n, _ := strconv.Atoi(f)
		out = append(out, n)
	}
	return out
}

func writeConfig(path, kind string, port int, caFile, proxyCA string) {
	injector := `tok: {kind: static, headers: {Authorization: {value: "Bearer bench-token"}}}`
	if kind == "oauth2" {
		injector = `tok: {kind: oauth2, token_url: "https://127.0.0.1:18443/token", client_id: {value: bench}, client_secret: {value: bench-secret}}`
	}
	traced := ""
	if *tracing {
		traced = "tracing: {otlp_endpoint: \"http://127.0.0.1:18199\", sample_ratio: 1}\n"
	}
	cfg := fmt.Sprintf(`log: {level: warn}
`+traced+`listeners:
  - {name: app, kind: sidecar, address: "127.0.0.1:%[1]d", upstream: "https://127.0.0.1:18443"}
  - {name: grpc, kind: sidecar, address: "127.0.0.1:%[2]d", upstream: "https://127.0.0.1:18444"}
  - {name: fwd, kind: forward, address: "127.0.0.1:%[3]d"}
  - {name: fwd-auth, kind: forward, address: "127.0.0.1:%[10]d"}
  - {name: odil, kind: sidecar, address: "127.0.0.1:%[8]d", upstream: "https://upstream.bench.test:18445"}
  - {name: obd, kind: sidecar, address: "127.0.0.1:%[9]d", upstream: "https://upstream.bench.test:18446"}
ca: {cert_file: %[5]q, key_file: %[6]q, generate: true}
upstream: {ca_file: %[4]q, resolve: {upstream.bench.test: 127.0.0.1}}
injectors:
  %[7]s
  odil: {kind: odil, base_url: "https://upstream.bench.test:18445/", api_code: "TR:SB:bench", username: {value: bench}, password: {value: bench-password}, sas: {key_name: {value: odil-key}, key: {value: bench-odil-key}}}
  obd: {kind: openobd, endpoint: "upstream.bench.test:18446", client_id: {value: bench}, client_secret: {value: bench-secret}, cluster_id: "001"}
routes:
  - {name: all, listeners: [app, grpc], match: {path: /*}, injector: tok}
  - {name: odil, listeners: [odil], match: {path: /api/*}, injector: odil}
  - {name: obd, listeners: [obd], match: {path: /*}, injector: obd}
  - {name: fwd-https, listeners: [fwd], match: {host: "127.0.0.1:18443"}, injector: tok}
  - {name: fwd-grpc, listeners: [fwd], match: {host: "upstream.bench.test:18444"}, injector: tok}
  - {name: fwd-https-auth, listeners: [fwd-auth], match: {host: "127.0.0.1:18443"}, injector: tok, clients: [bench]}
clients:
  bench: {basic: {username: bench, password: {value: bench-proxy-pw}}}
`, port, port+50, port+20, caFile, proxyCA, proxyCA+".key", injector, port+60, port+70, port+30)
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		die("%v", err)
	}
}

// startOTLPSink answers every OTLP/HTTP export with success, having read
// it whole: a collector that costs the proxy what a real one's answer does
// and keeps nothing.
func startOTLPSink(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		die("otlp sink: %v", err)
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.WriteHeader(http.StatusOK)
	}))
}

// startMitmproxy runs mitmdump as a forward proxy that intercepts every
// CONNECT, verifies the upstream against its CA and sets Authorization.
func startMitmproxy(dir, caFile string) contender {
	confdir := filepath.Join(dir, "mitmproxy")
	p := start(dir, "mitmproxy", nil, "mitmdump", "-q", "--listen-host", "127.0.0.1", "--listen-port", "18300",
		"--set", "confdir="+confdir, "--set", "ssl_verify_upstream_trusted_ca="+caFile,
		"--modify-headers", "/~q/Authorization/Bearer bench-token")
	atExit(func() { stop(p) })
	waitPort("127.0.0.1:18300")
	pid := p.Process.Pid
	return contender{name: "mitmproxy (mitmdump)", procs: "1", pids: func() []int { return []int{pid} },
		proxyURL: "http://127.0.0.1:18300", proxyCA: filepath.Join(confdir, "mitmproxy-ca-cert.pem")}
}

// runLoad runs bench/load and checks that every answer was right.
func runLoad(c contender, env []string, args ...string) result {
	cmd := exec.Command(loadBin, append([]string{"-duration", duration.String()}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	text, err := cmd.Output()
	if err != nil {
		die("%s: bench/load %v: %v\n%s", c.name, args, err, text)
	}
	var rep struct {
		Requests, Errors int
		RPS              float64
		P50              float64 `json:"p50_ms"`
		P99              float64 `json:"p99_ms"`
		FirstError       string  `json:"first_error"`
	}
	if err := json.Unmarshal(text, &rep); err != nil {
		die("%s: bench/load output: %v\n%s", c.name, err, text)
	}
	if rep.Errors > 0 || rep.Requests == 0 {
		die("%s: %d of %d requests failed, the first: %s", c.name, rep.Errors, rep.Errors+rep.Requests, rep.FirstError)
	}
	return result{rps: rep.RPS, p50: rep.P50, p99: rep.P99}
}

// grpcLoad runs bench/load's gRPC mode against the contender's gRPC target.
func grpcLoad(c contender, mode string, shape ...string) result {
	args := append([]string{"-mode", mode, "-target", c.grpcGo}, shape...)
	return runLoad(c, c.grpcGoEnv, append(args, c.grpcGoArgs...)...)
}

// forwardLoad sends HTTPS requests through the contender's forward proxy
// (direct: to the upstream itself, with the credential).
func forwardLoad(c contender, caFile string, shape ...string) result {
	args := append([]string{"-mode", "https", "-url", "https://127.0.0.1:18443/"}, shape...)
	if c.proxyURL == "" {
		return runLoad(c, nil, append(args, "-ca", caFile, "-authorization", "Bearer bench-token")...)
	}
	args = append(args, "-proxy", c.proxyURL, "-ca", c.proxyCA)
	if c.floor { // a plain tunnel: TLS is end to end and the client sends its own credential
		args = append(args, "-authorization", "Bearer bench-token")
	}
	return runLoad(c, nil, args...)
}

var loadBin string

func writeNginx(dir, workers string, h1, h2 int, caFile string) string {
	conf := filepath.Join(dir, "nginx-"+workers+".conf")
	text := fmt.Sprintf(`worker_processes %[1]s;
pid %[2]s/nginx-%[1]s.pid;
error_log %[2]s/nginx-%[1]s.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[2]s/nginx-body-%[1]s;
  proxy_temp_path %[2]s/nginx-proxy-%[1]s;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:18443; keepalive 128; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:%[3]d;
    listen 127.0.0.1:%[4]d http2;
    location / {
      proxy_pass https://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer bench-token";
      proxy_ssl_trusted_certificate %[5]s;
      proxy_ssl_verify on;
      proxy_ssl_name upstream.bench.test;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }
  }
}
`, workers, dir, h1, h2, caFile)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		die("%v", err)
	}
	return conf
}

func start(dir, name string, env []string, prog string, args ...string) *exec.Cmd {
	cmd := exec.Command(prog, args...)
	cmd.Env = append(os.Environ(), env...)
	f, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		die("%v", err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		die("starting %s: %v", name, err)
	}
	return cmd
}

func listening(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

func waitPort(addr string) {
	for i := 0; i < 200; i++ {
		if listening(addr) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	die("nothing listens on %s", addr)
}

// stop ends a process with SIGTERM, then SIGKILL after 5 s.
func stop(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
	}
}

func run(prog string, args ...string) {
	cmd := exec.Command(prog, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		die("%s %v: %v", prog, args, err)
	}
}

func output(prog string, args ...string) string {
	b, err := exec.Command(prog, args...).CombinedOutput()
	if err != nil {
		die("%s %v: %v\n%s", prog, args, err, b)
	}
	return string(b)
}

func median(rs []result, f func(result) float64) float64 {
	if len(rs) == 0 {
		return 0
	}
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func cpuModel() string {
	data, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "model name") {
			return strings.TrimSpace(line[strings.Index(line, ":")+1:])
		}
	}
	return "unknown CPU"
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func mustAtoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}
