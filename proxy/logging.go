package proxy

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/authproxy/authproxy/config"
)

// Bounds of PUT /logging's for.
const (
	defaultLogOverride = 10 * time.Minute
	maxLogOverride     = 24 * time.Hour
)

// logControl is the process's log level: log.level from the running
// configuration (a reload changes it), or an operator's override through
// the admin listener, which reverts by itself when its time is up.
type logControl struct {
	lv  *slog.LevelVar // nil: the logger's level is not the proxy's to change
	log *slog.Logger

	mu       sync.Mutex
	base     slog.Level // log.level
	override *slog.Level
	until    time.Time
	timer    *time.Timer
}

func (l *logControl) setBase(level slog.Level) {
	if l.lv == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.base = level
	if l.override == nil {
		l.lv.Set(level)
	}
}

// setFor sets the level to level for d, then back to log.level.
func (l *logControl) setFor(level slog.Level, d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.timer != nil {
		l.timer.Stop()
	}
	l.override, l.until = &level, time.Now().Add(d)
	l.lv.Set(level)
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.timer != t { // replaced meanwhile
			return
		}
		l.clearLocked()
		l.log.Warn("log level back to log.level: the override's time is up", "level", levelName(l.base))
	})
	l.timer = t
}

// reset ends an override now.
func (l *logControl) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.timer != nil {
		l.timer.Stop()
	}
	l.clearLocked()
}

func (l *logControl) clearLocked() {
	l.override, l.until, l.timer = nil, time.Time{}, nil
	l.lv.Set(l.base)
}

// logState is GET /logging's answer.
type logState struct {
	Level       string  `json:"level"`        // in force now
	ConfigLevel string  `json:"config_level"` // log.level
	Override    *string `json:"override"`     // null: none
	// OverrideSecondsLeft is how long the override has to run.
	OverrideSecondsLeft *float64 `json:"override_seconds_left"`
	Until               *string  `json:"until"` // RFC 3339
}

func (l *logControl) state() logState {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := logState{Level: levelName(l.lv.Level()), ConfigLevel: levelName(l.base)}
	if l.override != nil {
		o, left, until := levelName(*l.override), time.Until(l.until).Seconds(), l.until.UTC().Format(time.RFC3339)
		st.Override, st.OverrideSecondsLeft, st.Until = &o, &left, &until
	}
	return st
}

func levelName(l slog.Level) string { return strings.ToLower(l.String()) }

// serveLogging is the admin listener's /logging: GET shows the level; PUT
// ?level=debug&for=10m sets it for a while (for: default 10m, at most
// 24h); DELETE ends an override at once. A browser page elsewhere cannot
// send PUT or DELETE here: neither is a simple cross-origin request and
// the admin listener answers no CORS preflight.
func (s *Server) serveLogging(w http.ResponseWriter, r *http.Request) {
	l := s.logging
	if l.lv == nil {
		plain(w, http.StatusNotImplemented, "authproxy admin: this process's log level cannot be changed\n")
		return
	}
	switch r.Method {
	case http.MethodPut:
		q := r.URL.Query()
		level, err := config.ParseLogLevel(q.Get("level"))
		if err != nil || q.Get("level") == "" {
			plain(w, http.StatusBadRequest, "authproxy admin: level must be debug, info, warn or error\n")
			return
		}
		d := defaultLogOverride
		if f := q.Get("for"); f != "" {
			if d, err = time.ParseDuration(f); err != nil || d <= 0 || d > maxLogOverride {
				plain(w, http.StatusBadRequest, fmt.Sprintf("authproxy admin: for must be a duration from 1s to %v, as 10m or 1h\n", maxLogOverride))
				return
			}
		}
		l.setFor(level, d)
		s.log.Warn("log level changed through the admin listener", "level", levelName(level), "for", d.String(), "client", r.RemoteAddr)
	case http.MethodDelete:
		l.reset()
		s.log.Warn("log level override ended through the admin listener", "level", levelName(l.lv.Level()), "client", r.RemoteAddr)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(l.state())
}

// accessLog is log.access and log.access_sample, swapped whole by a
// reload.
type accessLog struct {
	on     bool
	sample float64 // (0, 1]
}

func newAccessLog(c config.Log) *accessLog {
	a := &accessLog{on: c.Access, sample: c.AccessSample}
	if a.sample == 0 {
		a.sample = 1
	}
	return a
}
