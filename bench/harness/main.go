// Command harness runs authproxy's benchmark on loopback, against the direct
// path and nginx, alternating the contenders round by round and reporting
// medians. See bench/README.md; bench/run.sh installs the tools and runs it.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"net"
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
)

// contender is one way of reaching the upstream.
type contender struct {
	name  string
	procs string // GOMAXPROCS or nginx workers; "" for direct
	h1    string // URL for wrk
	h2    string // URL for h2load ("" = not in that scenario)
	pids  func() []int
	extra []string // request headers the client must send (direct only)
}

type result struct {
	rps, p50, p99, cpuUS float64 // cpuUS < 0: not measured
}

func main() {
	flag.Parse()
	log.SetFlags(0)
	dir := *work
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "authproxy-bench"); err != nil {
			log.Fatal(err)
		}
	}
	for _, tool := range []string{"wrk", "h2load", "nginx"} {
		if _, err := exec.LookPath(tool); err != nil {
			log.Fatalf("%s is not installed: run bench/run.sh, which installs it", tool)
		}
	}
	bin := func(name, pkg string) string {
		p := filepath.Join(dir, name)
		run("go", "build", "-o", p, pkg)
		return p
	}
	authproxy := bin("authproxy", "./cmd/authproxy")
	upstreamBin := bin("upstream", "./bench/upstream")
	caFile := filepath.Join(dir, "upstream-ca.pem")
	for _, port := range []int{18080, 18443, 18100, 18101, 18102, 18210, 18211, 18220, 18221} {
		if listening(fmt.Sprintf("127.0.0.1:%d", port)) {
			log.Fatalf("127.0.0.1:%d is already in use (a previous run still alive?); the harness needs ports 18080, 18443, 18100-18102, 18210-18221", port)
		}
	}
	up := start(dir, "upstream", nil, upstreamBin, "-plain", "127.0.0.1:18080", "-tls", "127.0.0.1:18443", "-ca", caFile)
	defer stop(up)
	waitPort("127.0.0.1:18443")

	var contenders []contender
	contenders = append(contenders, contender{name: "direct (TLS)", h1: "https://127.0.0.1:18443/", h2: "https://127.0.0.1:18443/",
		pids: func() []int { return nil }, extra: []string{"Authorization: Bearer bench-token"}})
	port := 18100
	for _, kind := range []string{"static", "oauth2"} {
		for _, procs := range []string{"1", "2"} {
			if kind == "oauth2" && procs == "1" {
				continue
			}
			cfg := filepath.Join(dir, fmt.Sprintf("authproxy-%s-%s.yaml", kind, procs))
			writeConfig(cfg, kind, port, caFile)
			p := start(dir, "authproxy-"+kind+"-"+procs, []string{"GOMAXPROCS=" + procs}, authproxy, "run", "-config", cfg)
			defer stop(p)
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			waitPort(addr)
			pid := p.Process.Pid
			contenders = append(contenders, contender{name: "authproxy sidecar, " + kind, procs: procs,
				h1: "http://" + addr + "/", h2: "http://" + addr + "/", pids: func() []int { return []int{pid} }})
			port++
		}
	}
	for _, workers := range []string{"1", "2"} {
		h1, h2 := 18200+mustAtoi(workers)*10, 18201+mustAtoi(workers)*10
		conf := writeNginx(dir, workers, h1, h2, caFile)
		p := start(dir, "nginx-"+workers, nil, "nginx", "-c", conf, "-g", "daemon off;")
		defer stop(p) // SIGTERM: nginx's master then stops its workers
		waitPort(fmt.Sprintf("127.0.0.1:%d", h1))
		master := p.Process.Pid
		contenders = append(contenders, contender{name: "nginx", procs: workers,
			h1: fmt.Sprintf("http://127.0.0.1:%d/", h1), h2: fmt.Sprintf("http://127.0.0.1:%d/", h2),
			pids: func() []int { return append([]int{master}, children(master)...) }})
	}

	type scenario struct {
		title string
		run   func(c contender) result
	}
	scenarios := []scenario{
		{"HTTP/1.1 keep-alive, 1 connection (wrk)", func(c contender) result { return wrk(c, 1) }},
		{"HTTP/1.1 keep-alive, 64 connections (wrk)", func(c contender) result { return wrk(c, 64) }},
		{"HTTP/2, 4 connections × 16 streams (h2load; sidecar and nginx take h2c)", func(c contender) result { return h2load(c, dir) }},
	}
	results := map[string]map[string][]result{}
	for r := 0; r < *rounds; r++ {
		for _, s := range scenarios {
			order := slices.Clone(contenders)
			if r%2 == 1 {
				slices.Reverse(order) // alternate the order between rounds
			}
			for _, c := range order {
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
	fmt.Print(b.String())
	if *out != "" {
		if err := os.WriteFile(*out, []byte(b.String()), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

// measure runs one load and the proxy's CPU time during it.
func measure(c contender, load func(contender) result) result {
	before := cpuTicks(c.pids())
	res := load(c)
	after := cpuTicks(c.pids())
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
		log.Fatalf("%s answered errors:\n%s", c.name, text)
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
		log.Fatalf("%s answered errors:\n%s", c.name, text)
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

func writeConfig(path, kind string, port int, caFile string) {
	injector := `tok: {kind: static, headers: {Authorization: {value: "Bearer bench-token"}}}`
	if kind == "oauth2" {
		injector = `tok: {kind: oauth2, token_url: "https://127.0.0.1:18443/token", client_id: {value: bench}, client_secret: {value: bench-secret}}`
	}
	cfg := fmt.Sprintf(`log: {level: warn}
listeners:
  - {name: app, kind: sidecar, address: "127.0.0.1:%d", upstream: "https://127.0.0.1:18443"}
upstream: {ca_file: %q}
injectors:
  %s
routes:
  - {name: all, match: {path: /*}, injector: tok}
`, port, caFile, injector)
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		log.Fatal(err)
	}
}

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
		log.Fatal(err)
	}
	return conf
}

func start(dir, name string, env []string, prog string, args ...string) *exec.Cmd {
	cmd := exec.Command(prog, args...)
	cmd.Env = append(os.Environ(), env...)
	f, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		log.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		log.Fatalf("starting %s: %v", name, err)
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
	log.Fatalf("nothing listens on %s", addr)
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
		log.Fatalf("%s %v: %v", prog, args, err)
	}
}

func output(prog string, args ...string) string {
	b, err := exec.Command(prog, args...).CombinedOutput()
	if err != nil {
		log.Fatalf("%s %v: %v\n%s", prog, args, err, b)
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
