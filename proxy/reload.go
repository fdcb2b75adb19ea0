package proxy

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/injectors"
)

// ErrNeedsRestart is Reload's error for a configuration that changes more
// than injectors and routes.
var ErrNeedsRestart = errors.New("needs a restart")

// Reload applies a new configuration's injectors and routes to the running
// server, or nothing: cfg must differ from the running one only in its
// injectors and routes (listeners, upstream, timeouts, CA, token cache,
// retry, log and admin need a restart), and is checked whole first.
// Requests in flight finish with the routes and injectors they started
// with. An injector of injs that is the running instance (the caller reuses
// those whose block and secrets did not change) keeps its tokens,
// sessions and background work; one that is new starts fresh (the cache
// forgets its name's tokens), and the instance it replaces stops its
// background work once the drain bound has passed.
func (s *Server) Reload(cfg *config.Config, injs map[string]injectors.Injector) error {
	s.reload.Lock()
	defer s.reload.Unlock()
	if changed := staticChanges(s.cfg, cfg); len(changed) > 0 {
		return fmt.Errorf("%w: %s changed (only injectors and routes are reloaded)", ErrNeedsRestart, strings.Join(changed, ", "))
	}
	tables, routes, err := buildTables(cfg, injs)
	if err != nil {
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
	for _, name := range slices.Sorted(maps.Keys(old)) {
		if injs[name] != old[name] {
			retired = append(retired, name)
			if s.cache != nil {
				s.cache.Forget(name)
			}
		}
	}
	for _, l := range s.listeners {
		t := tables[l.name]
		if l.sc != nil {
			l.sc.table.Store(t)
		}
		if l.fwd != nil {
			l.fwd.table.Store(t)
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
	s.rmu.Unlock()
	s.cfg, s.injs = cfg, injs
	s.log.Info("configuration reloaded", "injectors_kept", strings.Join(kept, ","), "injectors_new", strings.Join(fresh, ","),
		"injectors_retired", strings.Join(retired, ","), "routes", len(routes))
	return nil
}

// staticChanges names the parts of the configuration, other than
// injectors and routes, that differ.
func staticChanges(a, b *config.Config) []string {
	var out []string
	for _, f := range []struct {
		name string
		a, b any
	}{
		{"log", a.Log, b.Log}, {"admin", a.Admin, b.Admin}, {"listeners", a.Listeners, b.Listeners},
		{"ca", a.CA, b.CA}, {"upstream", a.Upstream, b.Upstream}, {"timeouts", a.Timeouts, b.Timeouts},
		{"token_cache", a.TokenCache, b.TokenCache}, {"retry", a.Retry, b.Retry},
	} {
		if !reflect.DeepEqual(f.a, f.b) {
			out = append(out, f.name)
		}
	}
	return out
}
