package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/authproxy/authproxy/demo"
	"github.com/authproxy/authproxy/proxy"
)

// demoStarted sees the demo's simulators before the proxy starts (tests).
var demoStarted = func(*demo.World) {}

// cmdDemo runs the proxy on the demo's embedded config against simulated
// upstreams on loopback, and drives sample clients through it: the first
// five minutes with authproxy, without the internet or any file outside a
// temporary directory.
func cmdDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	once := fs.Bool("once", false, "one pass: exit 0 if every system worked, 1 otherwise")
	interval := fs.Duration("interval", time.Second, "time between passes")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: authproxy demo [-once] [-interval D]")
		return 2
	}
	dir, err := os.MkdirTemp("", "authproxy-demo-")
	if err != nil {
		fmt.Fprintln(stderr, "authproxy demo:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	world, err := demo.Start(dir)
	if err != nil {
		fmt.Fprintln(stderr, "authproxy demo: starting the simulators:", err)
		return 1
	}
	defer world.Close()
	demoStarted(world)

	// The proxy itself: loaded, built and run as `authproxy run` does.
	path := world.ConfigPath
	cfg, injs, m, env, _, err := loadWith(path, stderr, true, false)
	if err != nil {
		printProblems(stderr, path, err)
		return 1
	}
	if _, err := generateCA(cfg); err != nil {
		fmt.Fprintf(stderr, "%s: ca: %v\n", path, err)
		return 1
	}
	srv, err := proxy.New(cfg, injs, proxy.Options{Logger: newLogger(cfg.Log, stderr), Metrics: m, Cache: env.Cache, LogLevel: logLevel, Version: versionString()})
	if err != nil {
		printProblems(stderr, path, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	runCtx, endRun := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- srv.Run(runCtx) }()
	defer func() {
		endRun()
		<-ran
	}()
	select {
	case <-srv.Ready():
	case err := <-ran:
		ran <- err
		fmt.Fprintln(stderr, "authproxy demo: the proxy stopped:", err)
		return 1
	}
	p := demo.Proxy{
		Sidecars: map[string]string{},
		Forward:  srv.Addr("forward").String(),
		Admin:    srv.AdminAddr().String(),
		CACert:   cfg.CA.CertFile,
	}
	for _, l := range cfg.Listeners {
		p.Sidecars[l.Name] = srv.Addr(l.Name).String()
	}
	live := false
	if f, ok := stdout.(*os.File); ok && !*once {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			live = true
		}
	}
	if err := world.Drive(ctx, p, demo.Options{Once: *once, Interval: *interval, Live: live}, stdout); err != nil {
		fmt.Fprintln(stderr, "authproxy demo: failed:", err)
		return 1
	}
	return 0
}
