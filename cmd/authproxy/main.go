// Command authproxy is a proxy that adds credentials to outgoing requests,
// so applications never hold or refresh secrets themselves.
//
//	authproxy demo [-once]            run every system offline, on simulators
//	authproxy run -config FILE        run the proxy
//	authproxy check -config FILE      validate the config, print every problem
//	authproxy ca init -config FILE    create the interception CA
//	authproxy ca export -config FILE  print the CA certificate for clients to trust
//	authproxy version
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/authproxy/authproxy/tracing"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"syscall"
	"time"

	"github.com/authproxy/authproxy/ca"
	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/metrics"
	"github.com/authproxy/authproxy/proxy"
	"github.com/authproxy/authproxy/tokencache"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = ""

const usage = `usage:
  authproxy demo [-once]              run all five systems offline on simulated upstreams
  authproxy run FILE                  run the proxy
  authproxy check [-skip-secrets] FILE
                                      validate the config and print every problem
                                      (-skip-secrets: without reading secrets or the CA, for CI)
  authproxy ca init|export FILE       create the interception CA / print its certificate
  authproxy health [-live] [-addr HOST:PORT]
                                      exit 0 when the admin listener says ready (-live: alive)
  authproxy route [-listener NAME] [-client NAME] FILE METHOD URL
                                      the route a request would match, and whether that caller may use it
  authproxy schema                    print the configuration's JSON Schema (for editors)
  authproxy version                   print the version (also --version)

FILE may also be given as -config FILE, and defaults to $AUTHPROXY_CONFIG;
every command takes -h.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	if slices.Contains(helpArgs, args[0]) {
		fmt.Fprint(stdout, usage)
		return 0
	}
	switch args[0] {
	case "demo":
		return cmdDemo(args[1:], stdout, stderr)
	case "run":
		return cmdRun(args[1:], stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "ca":
		return cmdCA(args[1:], stdout, stderr)
	case "health":
		return cmdHealth(args[1:], stdout, stderr)
	case "route":
		return cmdRoute(args[1:], stdout, stderr)
	case "schema":
		if len(args) > 1 {
			fmt.Fprint(stderr, "usage: authproxy schema > authproxy.schema.json\n")
			return 2
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(config.Schema(injectors.KindTypes())); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		return 0
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "authproxy", versionString())
		return 0
	default:
		if near := config.Suggest(args[0], commands); near != "" {
			fmt.Fprintf(stderr, "authproxy: unknown command %q: did you mean %s?\n%s", args[0], near, usage)
			return 2
		}
		fmt.Fprintf(stderr, "authproxy: unknown command %q\n%s", args[0], usage)
		return 2
	}
}

func versionString() string {
	bi, ok := debug.ReadBuildInfo()
	return versionOf(version, bi, ok)
}

// versionOf is the version to report: the one -ldflags "-X main.version"
// set, else the module version the build recorded (go install
// github.com/authproxy/authproxy/cmd/authproxy@v1.2.3 records v1.2.3; a
// build in a checkout records "(devel)" or a pseudo-version), else "dev".
func versionOf(linked string, bi *debug.BuildInfo, ok bool) string {
	if linked != "" {
		return linked
	}
	if ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// commands are the subcommands run knows.
var commands = []string{"demo", "run", "check", "route", "ca", "health", "schema", "version"}

// helpArgs ask for usage, which is no error (exit 0).
var helpArgs = []string{"-h", "-help", "--help", "help"}

// parseFlags parses args into fs. It returns -1 to go on, or the exit code
// when the command is to end now: 0 after -h (fs has printed the usage), 2
// on a bad flag.
func parseFlags(fs *flag.FlagSet, args []string) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	return -1
}

// configFlag parses a command's -config (default $AUTHPROXY_CONFIG). It
// returns the path, or the exit code when the command is to end now
// (0 after -h).
func configFlag(name string, args []string, stderr io.Writer, more ...func(*flag.FlagSet)) (string, int) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", os.Getenv("AUTHPROXY_CONFIG"), "configuration file (YAML); default $AUTHPROXY_CONFIG")
	for _, f := range more {
		f(fs)
	}
	if code := parseFlags(fs, args); code >= 0 {
		return "", code
	}
	// The file may be given as an argument (authproxy check FILE), with
	// flags before or after it.
	if fs.NArg() > 0 {
		file := fs.Arg(0)
		explicit := false
		fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
		if code := parseFlags(fs, fs.Args()[1:]); code >= 0 {
			return "", code
		}
		if fs.NArg() > 0 || explicit && *path != file {
			fmt.Fprintf(stderr, "usage: authproxy %s [flags] FILE (or -config FILE, or $AUTHPROXY_CONFIG): give one file\n", name)
			return "", 2
		}
		*path = file
	}
	if *path == "" {
		fmt.Fprintf(stderr, "usage: authproxy %s [flags] FILE (or -config FILE, or $AUTHPROXY_CONFIG)\n", name)
		return "", 2
	}
	return *path, -1
}

// load reads the config and builds the injectors, reporting every problem.
// The injectors log to the config's log on stderr.
func load(path string, stderr io.Writer) (*config.Config, map[string]injectors.Injector, error) {
	cfg, injs, _, _, _, err := loadWith(path, stderr, false, false)
	return cfg, injs, err
}

// lint is load without reading a secret (check -skip-secrets): each
// secret source is checked for its shape only.
func lint(path string, stderr io.Writer) (*config.Config, map[string]injectors.Injector, error) {
	cfg, injs, _, _, _, err := loadWith(path, stderr, false, true)
	return cfg, injs, err
}

// loadWith is load; with metrics, and an admin listener configured, the
// token cache reports to a new *metrics.Metrics. It returns the metrics
// and the injectors' environment (the one token cache of the process, for
// /status and reloads). With skipSecrets it reads no secret
// (injectors.Env.SkipSecrets).
func loadWith(path string, stderr io.Writer, withMetrics, skipSecrets bool) (*config.Config, map[string]injectors.Injector, *metrics.Metrics, injectors.Env, *tracing.Tracer, error) {
	cfg, err := config.Load(path)
	if cfg == nil {
		return nil, nil, nil, injectors.Env{}, nil, err
	}
	env := injectors.Env{Log: newLogger(cfg.Log, stderr), SkipSecrets: skipSecrets}
	var m *metrics.Metrics
	if withMetrics && cfg.Admin != nil {
		m = metrics.New(versionString())
		env.Events = m
	}
	var tracer *tracing.Tracer
	if withMetrics && err == nil {
		if tracer, err = tracing.New(cfg.Tracing, versionString()); err != nil {
			return nil, nil, nil, injectors.Env{}, nil, err
		}
	}
	opts := injectors.CacheOptions(cfg.TokenCache, nil)
	opts.Log = env.Log
	switch {
	case m != nil && tracer != nil:
		opts.Observer = observers{m, tracer}
	case m != nil:
		opts.Observer = m
	case tracer != nil:
		opts.Observer = observers{tracer}
	}
	store, serr := injectors.NewStore(cfg, env)
	if serr != nil {
		return nil, nil, nil, injectors.Env{}, nil, errors.Join(err, serr)
	}
	if store != nil {
		opts.Store = store
		env.Shared = store
		m.WatchStore(store)
	}
	env.Cache = tokencache.New(opts) // one for the process: reloads keep it
	m.WatchCache(env.Cache)
	injs, ierr := injectors.BuildAll(cfg, env)
	if err = errors.Join(err, ierr); err != nil {
		return nil, nil, nil, injectors.Env{}, nil, err
	}
	return cfg, injs, m, env, tracer, nil
}

// observers tells the token cache's events to each of them: the metrics
// count fetches, the tracer makes a span of each.
type observers []interface {
	Fetched(name string, d time.Duration, refresh bool, err error)
}

func (o observers) Looked(name string, hit bool) {
	for _, x := range o {
		if l, ok := x.(interface{ Looked(string, bool) }); ok {
			l.Looked(name, hit)
		}
	}
}

func (o observers) Fetched(name string, d time.Duration, refresh bool, err error) {
	for _, x := range o {
		x.Fetched(name, d, refresh, err)
	}
}

func (o observers) Evicted(name string) {
	for _, x := range o {
		if e, ok := x.(interface{ Evicted(string) }); ok {
			e.Evicted(name)
		}
	}
}

func printProblems(stderr io.Writer, path string, err error) {
	problems := config.Flatten(err)
	fmt.Fprintf(stderr, "%s: %d problem(s):\n", path, len(problems))
	for _, p := range problems {
		fmt.Fprintf(stderr, "  %v\n", p)
	}
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	var skipSecrets bool
	var format string
	path, code := configFlag("check", args, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&skipSecrets, "skip-secrets", false, "read no secret (values from env or file), not the CA, and no client's or TLS listener's file: check the config's shape, for CI")
		fs.StringVar(&format, "format", "text", "text, or json: one JSON object on stdout (file, ok, summary, problems with path and message, warnings)")
	})
	if code >= 0 {
		return code
	}
	if format != "text" && format != "json" {
		fmt.Fprintf(stderr, "authproxy check: -format is text or json, not %q\n", format)
		return 2
	}
	res := checkConfig(path, skipSecrets, stderr)
	if format == "json" {
		type problem struct {
			Path    string `json:"path"`
			Message string `json:"message"`
		}
		out := struct {
			File     string    `json:"file"`
			OK       bool      `json:"ok"`
			Summary  string    `json:"summary,omitempty"`
			Problems []problem `json:"problems"`
			Warnings []string  `json:"warnings"`
		}{File: path, OK: res.problems == nil, Summary: res.summary, Problems: []problem{}, Warnings: append([]string{}, res.warnings...)}
		for _, p := range config.Flatten(res.problems) {
			var ce *config.Error
			if errors.As(p, &ce) {
				out.Problems = append(out.Problems, problem{Path: ce.Path, Message: ce.Msg})
			} else {
				out.Problems = append(out.Problems, problem{Message: p.Error()})
			}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
	} else {
		for _, w := range res.warnings {
			fmt.Fprintf(stderr, "%s: warning: %s\n", path, w)
		}
		if res.problems != nil {
			printProblems(stderr, path, res.problems)
		} else {
			fmt.Fprintf(stdout, "%s: %s\n", path, res.summary)
		}
	}
	if res.problems != nil {
		return 1
	}
	return 0
}

// checked is what check found: problems (nil: none), warnings, and a
// summary of a good config.
type checked struct {
	problems error
	warnings []string
	summary  string
}

// checkConfig runs check's checks; the injectors' log goes to logw.
func checkConfig(path string, skipSecrets bool, logw io.Writer) (res checked) {
	loader, note := load, ""
	if skipSecrets {
		loader, note = lint, "; secrets and the CA not read (-skip-secrets)"
	}
	cfg, injs, err := loader(path, logw)
	if err != nil {
		return checked{problems: err}
	}
	generate := cfg.CA != nil && cfg.CA.Generate && !exists(cfg.CA.CertFile) && !exists(cfg.CA.KeyFile)
	if generate && !skipSecrets { // run will create them: can it?
		for key, file := range map[string]string{"ca.cert_file": cfg.CA.CertFile, "ca.key_file": cfg.CA.KeyFile} {
			if cerr := ca.CanCreate(file); cerr != nil {
				err = errors.Join(err, config.Errorf(key, "ca.generate cannot create %s as this user (uid %d): %v", file, os.Getuid(), cerr))
			}
		}
		if err != nil {
			return checked{problems: err}
		}
	}
	if cfg.CA != nil && (generate || skipSecrets) {
		// Check the rest against a throwaway CA; run creates the real one.
		tmp, terr := os.MkdirTemp("", "authproxy-check")
		if terr != nil {
			return checked{problems: terr}
		}
		defer os.RemoveAll(tmp)
		caCfg := *cfg.CA
		caCfg.CertFile, caCfg.KeyFile = filepath.Join(tmp, "ca.crt"), filepath.Join(tmp, "ca.key")
		caCfg.Generate = true
		cfg.CA = &caCfg
		if _, err = generateCA(cfg); err != nil {
			return checked{problems: config.Errorf("ca", "%v", err)}
		}
		if !skipSecrets {
			note = "; the CA does not exist yet and will be created by run (ca.generate)"
		}
	}
	srv, err := proxy.New(cfg, injs, proxy.Options{SkipSecrets: skipSecrets})
	if err != nil {
		return checked{problems: err}
	}
	if notAfter, ok := srv.CANotAfter(); ok && time.Until(notAfter) < proxy.CAExpiryWarning {
		res.warnings = append(res.warnings, proxy.CAExpiresSoon(notAfter))
	}
	res.summary = fmt.Sprintf("OK (%d listeners, %d routes, %d injectors)%s", len(cfg.Listeners), len(cfg.Routes), len(injs), note)
	return res
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func cmdRun(args []string, stderr io.Writer) int {
	path, code := configFlag("run", args, stderr)
	if code >= 0 {
		return code
	}
	cfg, injs, m, env, tracer, err := loadWith(path, stderr, true, false)
	if err != nil {
		printProblems(stderr, path, err)
		return 1
	}
	defer func() { // the spans still buffered leave, within a bound
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tracer.Shutdown(ctx)
	}()
	logger := newLogger(cfg.Log, stderr)
	if created, err := generateCA(cfg); err != nil {
		fmt.Fprintf(stderr, "%s: ca: %v\n", path, err)
		return 1
	} else if created {
		logger.Info("created a new interception CA (ca.generate); clients must trust it", "cert_file", cfg.CA.CertFile)
	}
	srv, err := proxy.New(cfg, injs, proxy.Options{Logger: logger, Metrics: m, Cache: env.Cache, LogLevel: logLevel, Version: versionString(), Tracer: tracer})
	if err != nil {
		printProblems(stderr, path, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second signal now ends the process at once
	}()
	// SIGHUP reloads the configuration and secrets; so do changes to the
	// files (reload.watch).
	rl := newReloader(path, cfg, injs, srv, env, m, logger)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-hup:
				rl.reload("SIGHUP")
			case <-ctx.Done():
				return
			}
		}
	}()
	if cfg.Reload.Watching() {
		go rl.watch(ctx)
	}
	logger.Info("authproxy starting", "version", versionString(), "config", path)
	if err := srv.Run(ctx); err != nil {
		logger.Error("authproxy stopped", "err", err)
		return 1
	}
	return 0
}

// generateCA creates the CA files when ca.generate is set and both are
// missing. It refuses to replace one file of a pair.
func generateCA(cfg *config.Config) (bool, error) {
	if cfg.CA == nil || !cfg.CA.Generate {
		return false, nil
	}
	certOK, keyOK := exists(cfg.CA.CertFile), exists(cfg.CA.KeyFile)
	switch {
	case certOK && keyOK:
		return false, nil
	case certOK || keyOK:
		return false, fmt.Errorf("only one of %s and %s exists; remove it or restore the other", cfg.CA.CertFile, cfg.CA.KeyFile)
	}
	return true, ca.Create(cfg.CA.CertFile, cfg.CA.KeyFile, "authproxy local CA", false) // directories too
}

// logLevel is the level of every logger of the process: log.level, which
// a reload changes, or an override through the admin listener's /logging.
var logLevel = new(slog.LevelVar)

// newLogger is a logger in c's format at the process's level, which it
// sets to c's.
func newLogger(c config.Log, w io.Writer) *slog.Logger {
	level, _ := config.ParseLogLevel(c.Level) // validated by config.Load
	logLevel.Set(level)
	opts := &slog.HandlerOptions{Level: logLevel}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func cmdCA(args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 && slices.Contains(helpArgs, args[0]) {
		fmt.Fprint(stderr, "usage: authproxy ca init|export FILE (or -config FILE, or -cert FILE -key FILE)\n")
		return 0
	}
	if len(args) == 0 || (args[0] != "init" && args[0] != "export") {
		fmt.Fprint(stderr, "usage: authproxy ca init|export FILE (or -config FILE, or -cert FILE -key FILE)\n")
		return 2
	}
	sub := args[0]
	fs := flag.NewFlagSet("ca "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", os.Getenv("AUTHPROXY_CONFIG"), "configuration file naming ca.cert_file and ca.key_file; default $AUTHPROXY_CONFIG")
	certFile := fs.String("cert", "", "CA certificate file (instead of -config)")
	keyFile := fs.String("key", "", "CA key file (instead of -config)")
	force := fs.Bool("force", false, "ca init: replace existing files")
	if code := parseFlags(fs, args[1:]); code >= 0 {
		return code
	}
	if *certFile != "" || *keyFile != "" {
		*path = "" // explicit files win over $AUTHPROXY_CONFIG
	}
	if fs.NArg() > 0 { // authproxy ca init FILE
		file := fs.Arg(0)
		if code := parseFlags(fs, fs.Args()[1:]); code >= 0 {
			return code
		}
		if fs.NArg() > 0 {
			fmt.Fprint(stderr, "usage: authproxy ca init|export [flags] FILE: give one file\n")
			return 2
		}
		*path = file
	}
	if *path != "" {
		cfg, err := config.Load(*path)
		if cfg == nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		if cfg.CA == nil || cfg.CA.CertFile == "" || cfg.CA.KeyFile == "" {
			fmt.Fprintf(stderr, "%s: ca: set ca.cert_file and ca.key_file\n", *path)
			return 1
		}
		*certFile, *keyFile = cfg.CA.CertFile, cfg.CA.KeyFile
	}
	if *certFile == "" || *keyFile == "" {
		fmt.Fprintf(stderr, "usage: authproxy ca %s -config FILE (or -cert FILE -key FILE)\n", sub)
		return 2
	}
	if sub == "init" {
		if err := ca.Create(*certFile, *keyFile, "authproxy local CA", *force); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		fmt.Fprintf(stdout, "created %s and %s (key mode 0600)\ntrust it in clients with: authproxy ca export ... > authproxy-ca.pem\n", *certFile, *keyFile)
		return 0
	}
	authority, err := ca.Load(*certFile, *keyFile, ca.Options{})
	if err != nil {
		fmt.Fprintln(stderr, proxy.CAError(&config.CA{CertFile: *certFile, KeyFile: *keyFile}, err))
		return 1
	}
	_, _ = stdout.Write(authority.CertPEM())
	return 0
}

// cmdHealth asks the admin listener's /readyz (with -live, /healthz) and
// exits 0 when it says ready (alive): a HEALTHCHECK for the distroless
// image, which has no shell or curl, and the exec probes of a sidecar
// whose admin listener is on loopback. -addr defaults to admin.address of -config ($AUTHPROXY_CONFIG),
// else 127.0.0.1:15000.
func cmdHealth(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "", "the admin listener's host:port (default: admin.address of the config, else 127.0.0.1:15000)")
	path := fs.String("config", os.Getenv("AUTHPROXY_CONFIG"), "configuration file whose admin.address to ask; default $AUTHPROXY_CONFIG")
	live := fs.Bool("live", false, "ask /healthz (the process serves: a liveness probe) instead of /readyz")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if *addr == "" && *path != "" {
		if cfg, _ := config.Load(*path); cfg != nil && cfg.Admin != nil {
			*addr = cfg.Admin.Address
		}
	}
	if *addr == "" {
		*addr = "127.0.0.1:15000"
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 5 * time.Second}
	probe := "/readyz"
	if *live {
		probe = "/healthz"
	}
	resp, err := client.Get("http://" + *addr + probe)
	if err != nil {
		fmt.Fprintf(stderr, "authproxy health: %v\n", err)
		return 1
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	fmt.Fprint(stdout, string(body))
	if resp.StatusCode != http.StatusOK {
		return 1
	}
	return 0
}
