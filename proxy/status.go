package proxy

import (
	"encoding/json"
	"html/template"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/tokencache"
)

// The admin listener's /status: what a person reads to see the proxy's
// state (HTML, refreshing itself) or a program (?format=json): the
// credentials each injector holds — their keys (scope sets, VIN and
// context, API codes), states and lifetimes, never a token or a secret —
// openOBD sessions with their token streams, routes with their request
// counts, and the listeners.

type statusView struct {
	Generated     string  `json:"generated"`
	Version       string  `json:"version"`
	Started       string  `json:"started"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	// Ready is /readyz's verdict; NotReadyReason says why not.
	Ready          bool         `json:"ready"`
	NotReadyReason string       `json:"not_ready_reason,omitempty"`
	Config         statusConfig `json:"config"`
	// TokenStore is token_cache.shared's state: "shared", or "degraded"
	// while the store is unreachable ("" without one).
	TokenStore string             `json:"token_store,omitempty"`
	Listeners  []statusListener   `json:"listeners"`
	Routes     []statusRoute      `json:"routes"`
	Clients    []statusClient     `json:"clients"`
	Injectors  []statusInjectorJS `json:"injectors"`
}

// statusClient is one caller label (a configured client, anyone,
// unknown) with the requests it sent since start: answered by the
// upstream or the proxy, and refused for its identity (401/403/407/429
// the proxy gave).
type statusClient struct {
	Name     string `json:"name"`
	Requests int64  `json:"requests"`
	Refused  int64  `json:"refused"`
}

// statusConfig is the running configuration and the last reload.
type statusConfig struct {
	Fingerprint string `json:"fingerprint"` // config.Config.Fingerprint
	LoadedAt    string `json:"loaded_at"`   // at start or by the last applied reload
	// LastReload is the last reload tried (null: none since start).
	LastReload *statusReload `json:"last_reload"`
}

type statusReload struct {
	At      string `json:"at"`
	Trigger string `json:"trigger"` // SIGHUP, a watched file changed
	Outcome string `json:"outcome"` // applied, rejected
	// Error is why it was rejected: the problems with their YAML paths,
	// which quote no secret.
	Error string `json:"error,omitempty"`
}

type statusListener struct {
	Name    string `json:"name"`
	Kind    string `json:"kind"`
	Address string `json:"address"`
}

type statusRoute struct {
	Name     string   `json:"name"`
	Injector string   `json:"injector"`
	Clients  []string `json:"clients"` // routes[].clients; null: every caller
	Requests int64    `json:"requests"`
}

type statusInjectorJS struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
	// Warm: its credentials are fetched before the proxy is ready (warm:
	// true), or held from the start (static headers).
	Warm        bool                      `json:"warm"`
	Credentials []statusCredential        `json:"credentials"`
	Sessions    []injectors.SessionReport `json:"sessions,omitempty"`
}

// statusCredential is one key of an injector. Durations are seconds; one
// that does not apply is absent.
type statusCredential struct {
	Key   string `json:"key"`
	State string `json:"state"` // valid, refreshing, serving stale, failing, expired
	// ExpiresInSeconds: until the token held expires (absent: none held,
	// or it has no expiry, as an ODIL session kept alive by use).
	ExpiresInSeconds *float64 `json:"expires_in_seconds,omitempty"`
	// NextRefreshSeconds: until its background refresh (absent: none is
	// due, as for a token with no expiry).
	NextRefreshSeconds *float64 `json:"next_refresh_seconds,omitempty"`
	// AgeSeconds: since the token held was fetched (an ODIL session's age).
	AgeSeconds *float64 `json:"age_seconds,omitempty"`
	// NextAttemptSeconds: after failures, until a fetch is tried again.
	NextAttemptSeconds *float64 `json:"next_attempt_seconds,omitempty"`
	Left               float64  `json:"lifetime_left"` // fraction of the lifetime left, 0 to 1
	Fetches            int      `json:"fetches"`
	Failures           int      `json:"failures"`
	Renewals           int      `json:"renewals"`
	LastError          string   `json:"last_error,omitempty"`
}

// statusSource is what the page reads, fixed when the server is built.
type statusSource struct {
	cache     *tokencache.Cache // nil: no credentials shown
	kinds     map[string]string // injector name -> kind
	warm      map[string]bool
	reporters map[string]injectors.Reporter
	routes    []*routeRT
}

func newStatusSource(cfg *config.Config, injs map[string]injectors.Injector, cache *tokencache.Cache) *statusSource {
	src := &statusSource{cache: cache, kinds: map[string]string{}, warm: map[string]bool{}, reporters: map[string]injectors.Reporter{}}
	for name, n := range cfg.Injectors {
		var head struct {
			Kind string `yaml:"kind"`
		}
		_ = (&n).Decode(&head)
		src.kinds[name] = head.Kind
		if r, ok := injs[name].(injectors.Reporter); ok {
			src.reporters[name] = r
		}
	}
	for _, name := range injectors.WarmNames(cfg) {
		src.warm[name] = true
	}
	return src
}

func (s *Server) statusView() statusView {
	now := time.Now()
	why := s.readiness()
	v := statusView{Generated: now.UTC().Format(time.RFC3339), Version: s.opts.Version, Started: s.started.UTC().Format(time.RFC3339),
		UptimeSeconds: now.Sub(s.started).Round(time.Second).Seconds(), Ready: why == "", NotReadyReason: why}
	if v.Version == "" {
		v.Version = "dev"
	}
	s.rmu.RLock()
	v.Config = s.configState
	if s.configState.LastReload != nil {
		r := *s.configState.LastReload
		v.Config.LastReload = &r
	}
	s.rmu.RUnlock()
	if s.cache != nil {
		if configured, up := s.cache.StoreState(); configured {
			v.TokenStore = "shared"
			if !up {
				v.TokenStore = "degraded"
			}
		}
	}
	s.mu.Lock()
	for _, l := range s.listeners {
		addr := l.address
		if a, ok := s.addrs[l.name]; ok {
			addr = a.String()
		}
		v.Listeners = append(v.Listeners, statusListener{Name: l.name, Kind: l.kind, Address: addr})
	}
	s.mu.Unlock()
	s.rmu.RLock()
	src := s.status
	s.rmu.RUnlock()
	at := map[string]int{} // a route served by several listeners is one row
	for _, rt := range src.routes {
		i, ok := at[rt.name]
		if !ok {
			i = len(v.Routes)
			at[rt.name] = i
			v.Routes = append(v.Routes, statusRoute{Name: rt.name, Injector: rt.injectorName, Clients: sortedKeys(rt.clients)})
		}
		v.Routes[i].Requests += rt.requests.Load()
	}
	s.core.clientCounts.Range(func(name, count any) bool {
		c := count.(*clientCount)
		v.Clients = append(v.Clients, statusClient{Name: name.(string), Requests: c.requests.Load(), Refused: c.refused.Load()})
		return true
	})
	slices.SortFunc(v.Clients, func(a, b statusClient) int { return strings.Compare(a.Name, b.Name) })
	byName := map[string][]tokencache.Entry{}
	if src.cache != nil {
		for _, e := range src.cache.Entries() {
			byName[e.Name] = append(byName[e.Name], e)
		}
	}
	names := make([]string, 0, len(src.kinds))
	for name := range src.kinds {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		in := statusInjectorJS{Name: name, Kind: src.kinds[name], Warm: src.warm[name] || src.kinds[name] == "static", Credentials: []statusCredential{}}
		for _, e := range byName[name] {
			in.Credentials = append(in.Credentials, credentialOf(e, now))
		}
		if r, ok := src.reporters[name]; ok {
			in.Sessions = r.Sessions()
		}
		v.Injectors = append(v.Injectors, in)
	}
	return v
}

func credentialOf(e tokencache.Entry, now time.Time) statusCredential {
	c := statusCredential{Key: e.Key, Fetches: e.Fetches, Failures: e.Failures, Renewals: e.Renewals, LastError: e.LastErr}
	switch {
	case e.Valid && e.Refreshing:
		c.State = "refreshing"
	case e.Valid && e.Failures > 0:
		c.State = "serving stale"
	case e.Valid:
		c.State = "valid"
	case e.Failures > 0:
		c.State = "failing"
	default:
		c.State = "expired"
	}
	secs := func(d time.Duration) *float64 { f := d.Round(time.Second).Seconds(); return &f }
	if e.Valid && !e.Expiry.IsZero() {
		c.ExpiresInSeconds = secs(e.Expiry.Sub(now))
		if life := e.Expiry.Sub(e.FetchedAt); life > 0 {
			c.Left = min(1, max(0, float64(e.Expiry.Sub(now))/float64(life)))
		}
		// A refresh is due only for a token that expires, and before it
		// does.
		if !e.RefreshAt.IsZero() && e.RefreshAt.After(now) && e.RefreshAt.Before(e.Expiry) {
			c.NextRefreshSeconds = secs(e.RefreshAt.Sub(now))
		}
	} else if e.Valid {
		c.Left = 1 // no expiry: a session kept alive by use
	}
	if e.Valid && !e.FetchedAt.IsZero() {
		c.AgeSeconds = secs(now.Sub(e.FetchedAt))
	}
	if e.Failures > 0 && e.RetryAt.After(now) {
		c.NextAttemptSeconds = secs(e.RetryAt.Sub(now))
	}
	return c
}

// readiness is /readyz's verdict: "" when ready, else why not.
func (s *Server) readiness() string {
	switch {
	case s.stopping.Load():
		return "shutting down"
	case !s.serving.Load():
		return "starting"
	case s.notWarm() != "":
		return "injector " + strconv.Quote(s.notWarm()) + " does not hold its credentials yet"
	}
	return ""
}

func (s *Server) serveStatus(w http.ResponseWriter, r *http.Request) {
	v := s.statusView()
	w.Header().Set("Cache-Control", "no-store")
	if r.URL.Query().Get("format") == "json" {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = statusHTML.Execute(w, v)
}

var statusHTML = template.Must(template.New("status").Funcs(template.FuncMap{
	"pct": func(f float64) int { return int(f*100 + 0.5) },
	"up":  func(f float64) *float64 { return &f },
	"level": func(f float64) string {
		switch {
		case f > 0.5:
			return "ok"
		case f > 0.2:
			return "low"
		}
		return "due"
	},
	// dur shows seconds as a duration ("" when absent).
	"dur": func(f *float64) string {
		if f == nil {
			return ""
		}
		return (time.Duration(*f) * time.Second).String()
	},
	"fmtTime": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return time.Since(t).Round(time.Second).String() + " ago"
	},
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<title>authproxy status</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .2em} h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;margin:.3em 0 1em} th,td{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
th{background:#f3f3f3;font-weight:600} .key{font-family:ui-monospace,monospace;font-size:.92em}
.bar{width:140px;height:10px;background:#eee;border-radius:5px;overflow:hidden;display:inline-block;vertical-align:middle}
.bar span{display:block;height:100%} .ok span{background:#3a9d4a} .low span{background:#e0a526} .due span{background:#d2452f}
.state-valid{color:#2d7d3a} .state-failing,.state-expired{color:#b3321f} .state-serving.stale,.state-refreshing{color:#a67400}
.ready{color:#2d7d3a;font-weight:600} .notready{color:#b3321f;font-weight:600} .muted{color:#777}
</style></head><body>
<h1>authproxy</h1>
<p>{{if .Ready}}<span class="ready">ready</span>{{else}}<span class="notready">not ready: {{.NotReadyReason}}</span>{{end}}
<span class="muted">· {{.Generated}} · refreshes every 5 s · <a href="?format=json">JSON</a></span></p>
<p class="muted">version {{.Version}} · up {{dur (up .UptimeSeconds)}} (since {{.Started}})</p>
<p>configuration <span class="key">{{.Config.Fingerprint}}</span> <span class="muted">loaded {{.Config.LoadedAt}}</span>
{{with .Config.LastReload}}· last reload {{.At}} ({{.Trigger}}): {{if eq .Outcome "applied"}}<span class="ready">applied</span>{{else}}<span class="notready">rejected</span> <span class="muted">— the configuration above goes on serving</span><br><span class="key">{{.Error}}</span>{{end}}{{else}}<span class="muted">· no reload since start</span>{{end}}</p>
{{if eq .TokenStore "shared"}}<p>token store: <span class="ready">shared</span> <span class="muted">(token_cache.shared: tokens fetched once for the fleet)</span></p>{{end}}
{{if eq .TokenStore "degraded"}}<p>token store: <span class="notready">degraded</span> <span class="muted">(token_cache.shared is unreachable: this proxy fetches its own tokens until it answers)</span></p>{{end}}
<h2>Injectors</h2>
{{range .Injectors}}
<h3>{{.Name}} <span class="muted">({{.Kind}}{{if .Warm}}, warm{{end}})</span></h3>
{{if .Credentials}}<table><tr><th>credential</th><th>state</th><th>lifetime left</th><th>expires in</th><th>next refresh</th><th>age</th><th>fetches</th><th>failures</th><th>next attempt</th><th>renewals</th><th>last error</th></tr>
{{range .Credentials}}<tr><td class="key">{{if .Key}}{{.Key}}{{else}}(default){{end}}</td><td class="state-{{.State}}">{{.State}}</td>
<td><span class="bar {{level .Left}}"><span style="width:{{pct .Left}}%"></span></span> {{pct .Left}}%</td>
<td>{{dur .ExpiresInSeconds}}</td><td>{{dur .NextRefreshSeconds}}</td><td>{{dur .AgeSeconds}}</td><td>{{.Fetches}}</td><td>{{.Failures}}</td><td>{{dur .NextAttemptSeconds}}</td><td>{{.Renewals}}</td><td>{{.LastError}}</td></tr>
{{end}}</table>{{else if eq .Kind "static"}}<p class="muted">fixed headers, held from the start</p>{{else}}<p class="muted">no credential held</p>{{end}}
{{if .Sessions}}<table><tr><th>session</th><th>state</th><th>endpoint</th><th>token stream</th><th>rotations</th><th>last rotation</th><th>reconnects</th><th>known since</th><th>ended</th></tr>
{{range .Sessions}}<tr><td class="key">{{.ID}}</td><td>{{.State}}</td><td class="key">{{.Endpoint}}</td><td>{{.Stream}}</td><td>{{.Rotations}}</td><td>{{fmtTime .LastRotation}}</td><td>{{.Reconnects}}</td><td>{{fmtTime .Since}}</td><td>{{.Ended}}</td></tr>
{{end}}</table>{{end}}
{{end}}
<h2>Routes</h2>
<table><tr><th>route</th><th>injector</th><th>clients</th><th>requests</th></tr>
{{range .Routes}}<tr><td>{{.Name}}</td><td>{{.Injector}}</td><td>{{if .Clients}}{{range $i, $c := .Clients}}{{if $i}}, {{end}}{{$c}}{{end}}{{else}}<span class="muted">every caller</span>{{end}}</td><td>{{.Requests}}</td></tr>{{end}}
</table>
{{if .Clients}}<h2>Clients</h2>
<table><tr><th>client</th><th>requests</th><th>refused for their identity</th></tr>
{{range .Clients}}<tr><td>{{.Name}}</td><td>{{.Requests}}</td><td>{{.Refused}}</td></tr>{{end}}
</table>{{end}}
<h2>Listeners</h2>
<table><tr><th>listener</th><th>kind</th><th>address</th></tr>
{{range .Listeners}}<tr><td>{{.Name}}</td><td>{{.Kind}}</td><td class="key">{{.Address}}</td></tr>{{end}}
</table>
</body></html>
`))

// sortedKeys are a set's members in order (nil for a nil set).
func sortedKeys(set map[string]bool) []string {
	if set == nil {
		return nil
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
