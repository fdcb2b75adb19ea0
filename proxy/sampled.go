package proxy

import (
	"context"
	"log/slog"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// sampledLog bounds a log line that hostile or broken clients can cause at
// will (a failed handshake, a refused request): a burst of them, then one
// a second. A line that gets through says how many were left out since
// the one before (suppressed=N); counters count them all.
type sampledLog struct {
	lim     *rate.Limiter
	dropped atomic.Int64
}

func newSampledLog() *sampledLog { return &sampledLog{lim: rate.NewLimiter(1, 10)} }

func (s *sampledLog) log(l *slog.Logger, level slog.Level, msg string, args ...any) {
	if !l.Enabled(context.Background(), level) {
		return
	}
	if !s.lim.Allow() {
		s.dropped.Add(1)
		return
	}
	if n := s.dropped.Swap(0); n > 0 {
		args = append(args, "suppressed", n)
	}
	l.Log(context.Background(), level, msg, args...)
}
