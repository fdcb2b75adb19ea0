package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/metrics"
	"github.com/authproxy/authproxy/proxy"
)

// reloader applies the config file to the running server on SIGHUP and,
// with reload.watch, when the file or a secret file changes. A new config
// is loaded, validated and built whole before anything changes; an
// injector whose block and secrets did not change stays the running
// instance, with its tokens, sessions and streams.
type reloader struct {
	path string
	srv  *proxy.Server
	env  injectors.Env // shares the running injectors' cache and transport
	m    *metrics.Metrics
	log  *slog.Logger

	mu     sync.Mutex
	injs   map[string]injectors.Injector
	prints map[string]string // injectors.Fingerprints: block and credentials
	blocks map[string]string // injectors.BlockFingerprints: block alone
}

func newReloader(path string, cfg *config.Config, injs map[string]injectors.Injector, srv *proxy.Server, env injectors.Env, m *metrics.Metrics, log *slog.Logger) *reloader {
	return &reloader{path: path, srv: srv, env: env, m: m, log: log, injs: injs,
		prints: injectors.Fingerprints(cfg, os.LookupEnv), blocks: injectors.BlockFingerprints(cfg)}
}

// reload loads the file and applies it, or logs why not (each problem
// with its YAML path) and keeps the running configuration.
func (rl *reloader) reload(why string) {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	cfg, err := config.Load(rl.path)
	var injs map[string]injectors.Injector
	if err == nil {
		injs, err = injectors.BuildAll(cfg, rl.env)
	}
	if err == nil {
		prints, blocks := injectors.Fingerprints(cfg, os.LookupEnv), injectors.BlockFingerprints(cfg)
		rotated := map[string]bool{}
		for name := range injs {
			old, ok := rl.injs[name]
			switch {
			case ok && rl.prints[name] == prints[name]:
				injs[name] = old // unchanged: keeps its tokens, sessions and streams
			case ok && rl.blocks[name] == blocks[name]:
				rotated[name] = true // new credentials: its tokens serve until they fetch
			}
		}
		if err = rl.srv.ReloadRotated(cfg, injs, rotated); err == nil {
			rl.injs, rl.prints, rl.blocks = injs, prints, blocks
		}
	}
	rl.m.Reload(err)
	rl.srv.NoteReload(why, err)
	if err != nil {
		for _, p := range config.Flatten(err) {
			rl.log.Error("reload rejected; the running configuration goes on serving", "trigger", why, "problem", p)
		}
		return
	}
	rl.log.Info("reload applied", "trigger", why)
}

// matters reports whether a change to name is one to the config or a
// secret file: one of them, or a Kubernetes volume's ..data link (whose
// swap changes every file of the volume at once).
func (rl *reloader) matters(name string, relevant map[string]bool) bool {
	abs, err := filepath.Abs(name)
	if err != nil {
		return false
	}
	return relevant[abs] || filepath.Base(abs) == "..data"
}

// watch reloads when the config file or a secret file of the running
// configuration changes, until ctx ends. It watches their directories, so
// that Kubernetes' swap of a mounted volume's ..data link is seen, and
// waits for changes to settle (300 ms) before it reloads.
func (rl *reloader) watch(ctx context.Context) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		rl.log.Error("cannot watch the config and secret files; reload with SIGHUP", "err", err)
		return
	}
	defer w.Close()
	watched := map[string]bool{}  // directories
	relevant := map[string]bool{} // the files whose changes count
	add := func() {
		files := []string{rl.path}
		if cfg, err := config.Load(rl.path); err == nil {
			files = append(files, injectors.SecretFiles(cfg)...)
			for _, cl := range cfg.Clients { // a client's password file
				if cl.Basic != nil && cl.Basic.Password.File != "" {
					files = append(files, cl.Basic.Password.File)
				}
				if cl.JWT != nil { // a rotated JWKS (the cluster's keys)
					files = append(files, cl.JWT.JWKSFile)
				}
			}
		}
		for _, f := range files {
			if abs, err := filepath.Abs(f); err == nil {
				relevant[abs] = true
			}
			dir := filepath.Dir(f)
			if !watched[dir] {
				if err := w.Add(dir); err != nil {
					rl.log.Warn("cannot watch a directory; changes there need SIGHUP", "dir", dir, "err", err)
					continue
				}
				watched[dir] = true
			}
		}
	}
	add()
	var settle *time.Timer
	fire := make(chan struct{}, 1)
	for {
		select {
		case <-ctx.Done():
			if settle != nil {
				settle.Stop()
			}
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if ev.Op == fsnotify.Chmod || !rl.matters(ev.Name, relevant) || injectors.WrittenByProxy(ev.Name) {
				continue // other files in the same directories (a log file, say), or the proxy's own (a generated key)
			}
			if settle == nil {
				settle = time.AfterFunc(300*time.Millisecond, func() {
					select {
					case fire <- struct{}{}:
					default:
					}
				})
			} else {
				settle.Reset(300 * time.Millisecond)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			rl.log.Warn("file watch error", "err", err)
		case <-fire:
			rl.reload("a watched file changed")
			add()
		}
	}
}
