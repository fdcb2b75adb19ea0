package proxy

import (
	"io"
	"net/http"
	"net/http/pprof"
	"time"
)

// The admin listener (config admin): /healthz answers while the process
// serves; /readyz once every listener is bound, until shutdown starts;
// /debug/pprof/ only with admin.pprof. Its pages show no credential and
// no request.

// adminHandler is the admin listener's mux.
func (s *Server) adminHandler(withPProf bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		plain(w, http.StatusOK, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if why := s.readiness(); why != "" {
			plain(w, http.StatusServiceUnavailable, "not ready: "+why+"\n")
			return
		}
		plain(w, http.StatusOK, "ready\n")
	})
	if s.metrics != nil {
		mux.Handle("GET /metrics", s.metrics.Handler())
	}
	mux.HandleFunc("GET /status", s.serveStatus)
	mux.HandleFunc("GET /logging", s.serveLogging)
	mux.HandleFunc("PUT /logging", s.serveLogging)
	mux.HandleFunc("DELETE /logging", s.serveLogging)
	if withPProf {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		plain(w, http.StatusNotFound, "authproxy admin: /healthz, /readyz, /metrics, /status, /logging"+map[bool]string{true: ", /debug/pprof/"}[withPProf]+"\n")
	})
	// No answer of this listener is for a cache to keep: metrics and
	// profiles are of a moment, the rest is live state.
	var allowed map[string]bool // admin.clients; nil: everyone
	if a := s.cfg.Admin; a != nil && a.Clients != nil {
		allowed = map[string]bool{}
		for _, c := range a.Clients {
			allowed[c] = true
		}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if allowed != nil && r.URL.Path != "/healthz" && r.URL.Path != "/readyz" && !s.adminAllowed(w, r, allowed) {
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// adminAllowed checks an admin request's caller (its Authorization:
// Basic, or Bearer with a JWT client) against admin.clients, and answers
// 401 or 403 when it may not.
func (s *Server) adminAllowed(w http.ResponseWriter, r *http.Request, allowed map[string]bool) bool {
	att := s.core.attempts
	if att.throttled(r.RemoteAddr) {
		plain(w, http.StatusTooManyRequests, "authproxy admin: too many failed authentications from this address; try later\n")
		return false
	}
	c := s.core.clients.Load().identify(r.Header.Get("Authorization"), r.RemoteAddr, nil)
	switch {
	case c.name != "" && allowed[c.name], allowed["anyone"] && !c.bad:
		return true
	case c.name == "":
		if c.bad {
			att.failed(r.RemoteAddr, c.claimed, "admin")
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="authproxy admin"`)
		plain(w, http.StatusUnauthorized, "authproxy admin: authentication required\n")
	default:
		plain(w, http.StatusForbidden, "authproxy admin: this client may not use the admin listener\n")
	}
	return false
}

func plain(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// newAdminServer is the admin listener's http.Server.
func (s *Server) newAdminServer(withPProf bool, readHeader time.Duration) *http.Server {
	return &http.Server{
		Handler:           s.adminHandler(withPProf),
		MaxHeaderBytes:    maxHeaderBytes,
		ReadHeaderTimeout: readHeader,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          stdLogger(s.log.With("listener", "admin")),
	}
}
