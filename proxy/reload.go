package proxy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/route"
)

// ErrNeedsRestart is Reload's error for a configuration that changes more
// than injectors and routes.
var ErrNeedsRestart = errors.New("needs a restart")

// Reload applies a new configuration's listeners, injectors and routes to
// the running server, or nothing: cfg must differ from the running one
// only in those and in log.level, log.access and log.access_sample
// (upstream, timeouts, CA, token cache, retry, log.format and admin need a
// restart), and is checked whole first. An unchanged listener keeps
// its socket and connections; a new one is bound and served; a removed
// one stops accepting and drains within timeouts.shutdown; a changed one
// is both (on the same address, connections arriving between the two are
// refused).
// Requests in flight finish with the routes and injectors they started
// with. An injector of injs that is the running instance (the caller reuses
// those whose block and secrets did not change) keeps its tokens,
// sessions and background work; one that is new starts fresh (the cache
// forgets its name's tokens), and the instance it replaces stops its
// background work once the drain bound has passed.
func (s *Server) Reload(cfg *config.Config, injs map[string]injectors.Injector) error {
	return s.ReloadRotated(cfg, injs, nil)
}

// ReloadRotated is Reload where the injectors rotated names had only their
// credentials changed (a client secret, a key file; not their block):
// their tokens are kept (tokencache.Cache.Renew) and served until the new
// instance has fetched with the new credentials or they expire, so that a
// secret rotated before the issuer accepts it drops nothing at once.
func (s *Server) ReloadRotated(cfg *config.Config, injs map[string]injectors.Injector, rotated map[string]bool) error {
	s.reload.Lock()
	defer s.reload.Unlock()
	if changed := staticChanges(s.cfg, cfg); len(changed) > 0 {
		return fmt.Errorf("%w: %s changed (a reload applies listeners, injectors, routes, log.level, log.access and log.access_sample)", ErrNeedsRestart, strings.Join(changed, ", "))
	}
	tables, routes, err := buildTables(cfg, injs, s.core, s.opts.SkipSecrets)
	if err != nil {
		return err
	}
	clients, err := newClientRules(cfg, s.opts.SkipSecrets, s.core.jwks)
	if err != nil {
		return err
	}
	if err := s.reloadListeners(cfg, tables); err != nil {
		return err
	}
	old := s.injs
	var kept, fresh, retired []string
	for _, name := range slices.Sorted(maps.Keys(injs)) {
		if old[name] == injs[name] {
			kept = append(kept, name)
		} else {
			fresh = append(fresh, name)
		}
	}
	s.core.clients.Store(clients) // the callers first, then the routes that name them
	s.core.jwks.keepOnly(clients.jwt.sources())
	s.mu.Lock()
	for _, l := range s.listeners {
		t := tables[l.name]
		if l.sc != nil {
			l.sc.table.Store(t)
		}
		if l.fwd != nil {
			l.fwd.table.Store(t)
		}
	}
	s.mu.Unlock()
	// The retired instances' tokens, once no new request can reach them
	// (before the swap, a request still matched to a retired instance
	// would refresh a kept token with the old credentials).
	for _, name := range slices.Sorted(maps.Keys(old)) {
		if injs[name] != old[name] {
			retired = append(retired, name)
			switch {
			case s.cache == nil:
			case rotated[name] && injs[name] != nil:
				kept := s.cache.Renew(name)
				s.log.Warn("injector credentials changed: its tokens are kept until the new credentials fetch one, or they expire",
					"injector", name, "tokens_kept", kept)
			default:
				s.cache.Forget(name)
			}
		}
	}
	// Background work: the new instances' starts now; the retired ones'
	// ends once requests still using them have had the drain bound.
	inUse := map[injectors.Runner]bool{}
	for _, inj := range injs {
		if r, ok := inj.(injectors.Runner); ok {
			inUse[r] = true
			s.startRunner(r)
		}
	}
	for _, name := range retired {
		if r, ok := old[name].(injectors.Runner); ok && !inUse[r] {
			time.AfterFunc(s.shutdown, func() { s.stopRunner(r) })
		}
	}
	var warm []warmer
	for _, name := range injectors.WarmNames(cfg) {
		if w, ok := injs[name].(injectors.Warmer); ok {
			warm = append(warm, warmer{name: name, w: w})
			if old[name] != injs[name] {
				s.startWarm(warmer{name: name, w: w})
			}
		}
	}
	status := newStatusSource(cfg, injs, s.cache)
	status.routes = routes
	for _, name := range fresh {
		if r, ok := injs[name].(injectors.Reporter); ok {
			s.metrics.WatchSessions(name, r)
		}
	}
	s.rmu.Lock()
	s.warm, s.status = warm, status
	s.configState.Fingerprint, s.configState.LoadedAt = cfg.Fingerprint, time.Now().UTC().Format(time.RFC3339)
	s.rmu.Unlock()
	s.cfg, s.injs = cfg, injs
	level, _ := config.ParseLogLevel(cfg.Log.Level)
	s.logging.setBase(level)
	s.core.access.Store(newAccessLog(cfg.Log))
	s.core.observed.Store(s.core.metrics != nil || cfg.Log.Access || cfg.Admin != nil || s.core.tracer != nil)
	s.log.Info("configuration reloaded", "injectors_kept", strings.Join(kept, ","), "injectors_new", strings.Join(fresh, ","),
		"injectors_retired", strings.Join(retired, ","), "routes", len(routes),
		"log_level", levelName(level), "log_access", cfg.Log.Access, "log_access_sample", newAccessLog(cfg.Log).sample)
	return nil
}

// NoteReload records the outcome of a reload tried for trigger (err nil:
// applied), for the status page. err is shown: it must quote no secret,
// as config and injector errors do not.
func (s *Server) NoteReload(trigger string, err error) {
	r := &statusReload{At: time.Now().UTC().Format(time.RFC3339), Trigger: trigger, Outcome: "applied"}
	if err != nil {
		r.Outcome = "rejected"
		var msgs []string
		for _, p := range config.Flatten(err) {
			msgs = append(msgs, p.Error())
		}
		r.Error = strings.Join(msgs, "; ")
	}
	s.rmu.Lock()
	s.configState.LastReload = r
	s.rmu.Unlock()
}

// reloadListeners applies cfg's listeners: it binds the new ones, drains
// the removed ones, and keeps the rest. Nothing changes if a new one
// cannot be built or bound.
func (s *Server) reloadListeners(cfg *config.Config, tables map[string]*route.Table[*routeRT]) error {
	s.mu.Lock()
	current := slices.Clone(s.listeners)
	s.mu.Unlock()
	byName := map[string]*listener{}
	for _, l := range current {
		byName[l.name] = l
	}
	var kept, added, removed []*listener
	wanted := map[string]bool{}
	for _, c := range cfg.Listeners {
		wanted[c.Name] = true
		if old, ok := byName[c.Name]; ok && reflect.DeepEqual(old.conf, c) {
			kept = append(kept, old)
			continue
		}
		nl, err := s.buildListener(cfg, c, tables[c.Name])
		if err != nil {
			return err
		}
		added = append(added, nl)
		if old, ok := byName[c.Name]; ok {
			removed = append(removed, old)
		}
	}
	for _, l := range current {
		if !wanted[l.name] {
			removed = append(removed, l)
		}
	}
	if len(added) == 0 && len(removed) == 0 {
		return nil
	}
	// Bind the new listeners whose address no leaving one holds; should
	// one fail, nothing has changed.
	held := func(addr string) bool {
		for _, r := range removed {
			if r.address == addr {
				return true
			}
		}
		return false
	}
	var later []*listener
	for _, nl := range added {
		if held(nl.address) {
			later = append(later, nl)
			continue
		}
		ln, err := net.Listen("tcp", nl.address)
		if err != nil {
			for _, b := range added {
				if b.ln != nil {
					_ = b.ln.Close()
				}
			}
			return config.Errorf("listeners", "listener %q: %v", nl.name, err)
		}
		nl.ln = ln
	}
	// The leaving listeners stop accepting now (their sockets close at
	// once) and drain in the background.
	for _, r := range removed {
		ctx, cancel := context.WithTimeout(context.Background(), s.shutdown)
		go func() { defer cancel(); s.drainListener(ctx, r) }()
	}
	var failed error
	for _, nl := range later { // on an address a leaving listener held
		var ln net.Listener
		var err error
		for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if ln, err = net.Listen("tcp", nl.address); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			failed = errors.Join(failed, config.Errorf("listeners", "listener %q: %v (its old socket was closed to bind it again)", nl.name, err))
			continue
		}
		nl.ln = ln
	}
	next := slices.Clone(kept)
	for _, nl := range added {
		if nl.ln != nil {
			next = append(next, nl)
		}
	}
	s.mu.Lock()
	s.listeners = next
	s.setOwn(next)
	for _, nl := range added {
		if nl.ln == nil {
			continue
		}
		s.addrs[nl.name] = nl.ln.Addr()
		if nl.sc != nil {
			nl.sc.addr = nl.ln.Addr().String()
		}
		nl.wrap()
	}
	for _, r := range removed {
		if !wanted[r.name] {
			delete(s.addrs, r.name)
		}
	}
	s.mu.Unlock()
	for _, nl := range added {
		if nl.ln != nil {
			s.serveListener(nl)
		}
	}
	for _, r := range removed {
		s.log.Info("listener stopped by a reload; draining", "listener", r.name)
	}
	return failed
}

// staticChanges names the parts of the configuration, other than
// injectors and routes, that differ.
func staticChanges(a, b *config.Config) []string {
	var out []string
	for _, f := range []struct {
		name string
		a, b any
	}{
		{"log.format", a.Log.Format, b.Log.Format}, {"admin", a.Admin, b.Admin},
		{"ca", a.CA, b.CA}, {"upstream", a.Upstream, b.Upstream}, {"timeouts", a.Timeouts, b.Timeouts},
		{"token_cache", a.TokenCache, b.TokenCache}, {"retry", a.Retry, b.Retry}, {"tracing", a.Tracing, b.Tracing},
	} {
		if !reflect.DeepEqual(f.a, f.b) {
			out = append(out, f.name)
		}
	}
	return out
}
