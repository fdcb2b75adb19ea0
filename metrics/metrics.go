// Package metrics holds the proxy's Prometheus metrics (prefix authproxy_).
// Labels are bounded: listener, route, injector and listener-kind names
// from the configuration, protocols, status classes and outcome words;
// never a token, scope, VIN, session, host or path. A nil *Metrics is
// valid and records nothing.
package metrics

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/tokencache"
)

// Metrics is the proxy's registry and its instruments.
type Metrics struct {
	reg *prometheus.Registry

	requests         *prometheus.CounterVec
	duration         *prometheus.HistogramVec
	upstreamFailures *prometheus.CounterVec
	injections       *prometheus.CounterVec
	fetches          *prometheus.CounterVec
	fetchDuration    *prometheus.HistogramVec
	lookups          *prometheus.CounterVec
	evictions        *prometheus.CounterVec
	connections      *prometheus.GaugeVec
	connects         *prometheus.CounterVec
	tlsFailures      *prometheus.CounterVec
	caExpiry         prometheus.Gauge
	caOnce           sync.Once
	refreshFailures  *prometheus.CounterVec
	events           *prometheus.CounterVec
	goaways          *prometheus.CounterVec
	refused          *prometheus.CounterVec
	reloads          *prometheus.CounterVec
	lastReload       prometheus.Gauge

	sessMu   sync.Mutex
	sessions map[string]injectors.Reporter // by injector

	// The series of the calls made for every request, resolved once per
	// set of labels: a vector's lookup validates and hashes each label
	// value and takes a lock. The sets are as many as the series.
	requestSeries   sync.Map // requestKey → *requestSeries
	injectionSeries sync.Map // injectionKey → prometheus.Counter
}

type requestKey struct {
	listener, route, protocol, client string
	class                             int // status / 100; 0: reset
}

type requestSeries struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

type injectionKey struct {
	injector, outcome string
}

// New builds the registry, with Go's and the process's collectors and
// authproxy_build_info.
func New(version string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "authproxy_build_info", Help: "The proxy's version and Go version (always 1)."}, []string{"version", "go_version"})
	build.WithLabelValues(version, runtime.Version()).Set(1)
	f(build)
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "authproxy_requests_total",
		Help: "Requests (HTTP/2 streams) answered, by listener, route (\"\" when none matched), protocol, client (a configured client's name; anyone: no identity; unknown: credentials that match no client) and status class (\"reset\" for a stream reset before an answer)."},
		[]string{"listener", "route", "protocol", "client", "status_class"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "authproxy_request_duration_seconds",
		Help: "Time from a request's head to the end of its answer, by listener and protocol.", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)},
		[]string{"listener", "protocol"})
	m.upstreamFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "authproxy_upstream_failures_total",
		Help: "Requests the proxy answered itself because the upstream could not be reached or failed before answering, by listener, route and reason (refused, timeout, tls, reset, no_http2, other)."},
		[]string{"listener", "route", "reason"})
	m.injections = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "authproxy_injections_total",
		Help: "Credentials added (ok) or not (rejected, unavailable, timeout, bad_request, precondition, error), by injector."},
		[]string{"injector", "outcome"})
	m.fetches = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "authproxy_token_fetches_total",
		Help: "Token, session and controller-token requests to issuers, by injector and outcome (ok, rejected, unavailable, timeout)."},
		[]string{"injector", "outcome"})
	m.fetchDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "authproxy_token_fetch_duration_seconds",
		Help: "Time an issuer took to answer, by injector.", Buckets: prometheus.ExponentialBuckets(0.005, 3, 8)}, []string{"injector"})
	m.lookups = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "authproxy_token_cache_lookups_total",
		Help: "Token cache lookups, by injector and result (hit: a valid token was there; miss: it had to be fetched, or could not be)."},
		[]string{"injector", "result"})
	m.evictions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "authproxy_token_cache_evictions_total",
		Help: "Tokens dropped from the bounded cache to make room, by injector."}, []string{"injector"})
	m.connections = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "authproxy_connections_open",
		Help: "Client connections open, by listener and protocol (http1, h2)."}, []string{"listener", "protocol"})
	m.connects = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "authproxy_connect_total",
		Help: "CONNECTs on forward listeners, by listener and decision (intercepted: the client's TLS handshake with the proxy succeeded; handshake_failed: it did not, the client does not trust the CA or gave up; tunnelled; refused)."}, []string{"listener", "decision"})
	m.tlsFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "authproxy_listener_tls_handshake_failures_total",
		Help: "Client TLS handshakes that failed on listeners with tls (no client certificate, one the listener refuses, or a client that does not trust the listener's certificate), by listener."}, []string{"listener"})
	m.caExpiry = prometheus.NewGauge(prometheus.GaugeOpts{Name: "authproxy_ca_expiry_timestamp_seconds",
		Help: "When the interception CA's certificate expires (Unix time); absent without a CA."})
	m.refreshFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "authproxy_token_refresh_failures_total",
		Help: "Background refreshes of still-valid tokens that failed (the valid token is served meanwhile), by injector."}, []string{"injector"})
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "authproxy_injector_events_total",
		Help: "What injectors do besides fetching, by injector and event: rotation and reconnect (openOBD token streams), renewal and session_expired (ODIL's rolling session)."},
		[]string{"injector", "event"})
	m.goaways = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "authproxy_http2_goaways_total",
		Help: "HTTP/2 GOAWAY frames, by listener, side (client, upstream), direction (sent, received) and error code."},
		[]string{"listener", "side", "direction", "code"})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "authproxy_http2_refused_streams_total",
		Help: "HTTP/2 streams refused with REFUSED_STREAM, by listener and reason (max_streams, going_away, upstream_goaway)."},
		[]string{"listener", "reason"})
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "authproxy_config_reloads_total",
		Help: "Configuration reloads, by outcome (ok; rejected: invalid, or a change that needs a restart)."}, []string{"outcome"})
	m.lastReload = prometheus.NewGauge(prometheus.GaugeOpts{Name: "authproxy_config_last_reload_success_timestamp_seconds",
		Help: "When the configuration last loaded: at start, then at each good reload (Unix time)."})
	m.lastReload.SetToCurrentTime()
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.upstreamFailures, m.injections, m.fetches, m.fetchDuration,
		m.lookups, m.evictions, m.connections, m.connects, m.tlsFailures, m.refreshFailures, m.events, m.goaways, m.refused, m.reloads, m.lastReload} {
		f(c)
	}
	return m
}

// Handler serves the exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// SharedStore is what the metrics read of the shared token store.
type SharedStore interface {
	Up() bool
	Rejected() int64
}

// WatchStore exports the shared token store's state (token_cache.shared):
// authproxy_token_store_up is 1 while tokens are shared, 0 while the
// proxy is degraded to its own cache, and
// authproxy_token_store_rejected_records_total counts the records and
// locks it ignored as not the fleet's.
func (m *Metrics) WatchStore(st SharedStore) {
	if m == nil || st == nil {
		return
	}
	up := st.Up
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "authproxy_token_store_rejected_records_total",
		Help: "Records and locks of the shared token store that this proxy ignored: sealed with another key, damaged, forged, or holding a back-off or lease beyond its own bounds."},
		func() float64 { return float64(st.Rejected()) }))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "authproxy_token_store_up",
		Help: "1 while tokens are shared through token_cache.shared, 0 while the store is unreachable and the proxy uses its own cache."},
		func() float64 {
			if up() {
				return 1
			}
			return 0
		}))
}

// WatchCache adds the cache's size and, per injector, the seconds until
// its soonest token expires, read at each scrape.
func (m *Metrics) WatchCache(c *tokencache.Cache) {
	if m == nil || c == nil {
		return
	}
	m.reg.MustRegister(cacheCollector{c})
}

type cacheCollector struct{ c *tokencache.Cache }

var (
	entriesDesc = prometheus.NewDesc("authproxy_token_cache_entries", "Keys in the token cache.", nil, nil)
	expiryDesc  = prometheus.NewDesc("authproxy_token_expiry_seconds", "Seconds until the soonest valid token of an injector expires.", []string{"injector"}, nil)
)

func (cc cacheCollector) Describe(ch chan<- *prometheus.Desc) { ch <- entriesDesc; ch <- expiryDesc }

func (cc cacheCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(entriesDesc, prometheus.GaugeValue, float64(cc.c.Len()))
	now := time.Now()
	for name, at := range cc.c.Soonest() {
		ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue, at.Sub(now).Seconds(), name)
	}
}

// WatchSessions adds, read at each scrape, the sessions an injector
// holds (live and ended) and its token streams open; a later call for the
// same name (a reload's new instance) replaces the earlier.
func (m *Metrics) WatchSessions(injector string, r injectors.Reporter) {
	if m == nil {
		return
	}
	m.sessMu.Lock()
	defer m.sessMu.Unlock()
	if m.sessions == nil {
		m.sessions = map[string]injectors.Reporter{}
		m.reg.MustRegister(sessionCollector{m})
	}
	m.sessions[injector] = r
}

type sessionCollector struct{ m *Metrics }

var (
	sessionsDesc = prometheus.NewDesc("authproxy_openobd_sessions", "openOBD sessions the proxy knows, by injector and state (live, ended).", []string{"injector", "state"}, nil)
	streamsDesc  = prometheus.NewDesc("authproxy_openobd_token_streams_open", "openOBD session token streams open, by injector.", []string{"injector"}, nil)
)

func (sc sessionCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- sessionsDesc
	ch <- streamsDesc
}

func (sc sessionCollector) Collect(ch chan<- prometheus.Metric) {
	sc.m.sessMu.Lock()
	reporters := maps.Clone(sc.m.sessions)
	sc.m.sessMu.Unlock()
	for name, r := range reporters {
		var live, ended, open float64
		for _, s := range r.Sessions() {
			if s.Ended != "" {
				ended++
			} else {
				live++
			}
			if s.Stream == "open" {
				open++
			}
		}
		ch <- prometheus.MustNewConstMetric(sessionsDesc, prometheus.GaugeValue, live, name, "live")
		ch <- prometheus.MustNewConstMetric(sessionsDesc, prometheus.GaugeValue, ended, name, "ended")
		ch <- prometheus.MustNewConstMetric(streamsDesc, prometheus.GaugeValue, open, name)
	}
}

// Reload records a configuration reload: err nil is a good one.
func (m *Metrics) Reload(err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.reloads.WithLabelValues("rejected").Inc()
		return
	}
	m.reloads.WithLabelValues("ok").Inc()
	m.lastReload.SetToCurrentTime()
}

// Request records an answered request: status 0 is a stream reset before
// any answer.
func (m *Metrics) Request(listener, route, protocol, client string, status int, d time.Duration) {
	if m == nil {
		return
	}
	k := requestKey{listener: listener, route: route, protocol: protocol, client: client}
	if status > 0 {
		k.class = status / 100
	}
	v, ok := m.requestSeries.Load(k)
	if !ok {
		class := "reset"
		if k.class > 0 {
			class = strconv.Itoa(k.class) + "xx"
		}
		v, _ = m.requestSeries.LoadOrStore(k, &requestSeries{
			requests: m.requests.WithLabelValues(listener, route, protocol, client, class),
			duration: m.duration.WithLabelValues(listener, protocol),
		})
	}
	s := v.(*requestSeries)
	s.requests.Inc()
	s.duration.Observe(d.Seconds())
}

// UpstreamFailure records a request the upstream failed, and why (a word
// of UpstreamReason's).
func (m *Metrics) UpstreamFailure(listener, route, reason string) {
	if m == nil {
		return
	}
	m.upstreamFailures.WithLabelValues(listener, route, reason).Inc()
}

// UpstreamReason names why an upstream failed: refused (nothing listens),
// timeout, tls (the handshake or the certificate), reset (the stream or
// connection ended before an answer), no_http2, other.
func UpstreamReason(err error) string {
	var ne net.Error
	var ce *tls.CertificateVerificationError
	var ae tls.AlertError
	var re tls.RecordHeaderError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.As(err, &ce), errors.As(err, &ae), errors.As(err, &re), strings.Contains(err.Error(), "x509:"), strings.Contains(err.Error(), "tls:"):
		return "tls"
	case strings.Contains(err.Error(), "did not negotiate HTTP/2"):
		return "no_http2"
	case errors.Is(err, syscall.ECONNRESET), strings.Contains(err.Error(), "stream error"), strings.Contains(err.Error(), "connection closed"), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "reset"
	}
	return "other"
}

// Injection records an injector's call: err nil is ok.
func (m *Metrics) Injection(injector string, err error) {
	if m == nil {
		return
	}
	k := injectionKey{injector: injector, outcome: Outcome(err)}
	v, ok := m.injectionSeries.Load(k)
	if !ok {
		v, _ = m.injectionSeries.LoadOrStore(k, m.injections.WithLabelValues(k.injector, k.outcome))
	}
	v.(prometheus.Counter).Inc()
}

// Outcome names an injector's or issuer's result.
func Outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, injectors.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, injectors.ErrCredentialRejected):
		return "rejected"
	case errors.Is(err, injectors.ErrCredentialUnavailable):
		return "unavailable"
	case errors.Is(err, injectors.ErrBadRequest):
		return "bad_request"
	case errors.Is(err, injectors.ErrFailedPrecondition):
		return "precondition"
	}
	return "error"
}

// Looked implements tokencache.Observer.
func (m *Metrics) Looked(name string, hit bool) {
	if m == nil {
		return
	}
	result := "miss"
	if hit {
		result = "hit"
	}
	m.lookups.WithLabelValues(name, result).Inc()
}

// Fetched implements tokencache.Observer.
func (m *Metrics) Fetched(name string, d time.Duration, refresh bool, err error) {
	if m == nil {
		return
	}
	if refresh && err != nil {
		m.refreshFailures.WithLabelValues(name).Inc()
	}
	outcome := Outcome(err)
	if outcome != "ok" && outcome != "rejected" && outcome != "timeout" {
		outcome = "unavailable"
	}
	m.fetches.WithLabelValues(name, outcome).Inc()
	m.fetchDuration.WithLabelValues(name).Observe(d.Seconds())
}

// Evicted implements tokencache.Observer.
func (m *Metrics) Evicted(name string) {
	if m == nil {
		return
	}
	m.evictions.WithLabelValues(name).Inc()
}

// Conn records a client connection opening (+1) or closing (-1).
func (m *Metrics) Conn(listener, protocol string, delta int) {
	if m == nil {
		return
	}
	m.connections.WithLabelValues(listener, protocol).Add(float64(delta))
}

// Connect records a forward listener's decision on a CONNECT.
// CAExpiry records when the interception CA expires; the gauge is
// registered only then, so a proxy without a CA does not show it.
func (m *Metrics) CAExpiry(notAfter time.Time) {
	if m == nil {
		return
	}
	m.caOnce.Do(func() { m.reg.MustRegister(m.caExpiry) })
	m.caExpiry.Set(float64(notAfter.Unix()))
}

// ListenerTLSFailed counts a client's failed TLS handshake on a listener
// with tls.
func (m *Metrics) ListenerTLSFailed(listener string) {
	if m == nil {
		return
	}
	m.tlsFailures.WithLabelValues(listener).Inc()
}

func (m *Metrics) Connect(listener, decision string) {
	if m == nil {
		return
	}
	m.connects.WithLabelValues(listener, decision).Inc()
}

// Event implements injectors.Events.
func (m *Metrics) Event(injector, event string) {
	if m == nil {
		return
	}
	m.events.WithLabelValues(injector, event).Inc()
}

// GoAway records an HTTP/2 GOAWAY on a listener's client or upstream side.
func (m *Metrics) GoAway(listener, side, direction, code string) {
	if m == nil {
		return
	}
	m.goaways.WithLabelValues(listener, side, direction, code).Inc()
}

// Refused records an HTTP/2 stream refused with REFUSED_STREAM.
func (m *Metrics) Refused(listener, reason string) {
	if m == nil {
		return
	}
	m.refused.WithLabelValues(listener, reason).Inc()
}

var (
	_ tokencache.Observer = (*Metrics)(nil)
	_ injectors.Events    = (*Metrics)(nil)
)
