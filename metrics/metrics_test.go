package metrics

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/authproxy/authproxy/injectors"
)

// Upstream failures and injector results are named by a fixed word, from
// the errors the dialers and injectors really return.
func TestReasonsAndOutcomes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	_, refused := net.Dial("tcp", closed)
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	_, timeout := (&net.Dialer{}).DialContext(ctx, "tcp", closed)
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("upstream: %w", refused), "refused"},
		{fmt.Errorf("upstream: %w", timeout), "timeout"},
		{fmt.Errorf("upstream: %w", &x509.UnknownAuthorityError{}), "tls"},
		{fmt.Errorf("upstream: %w", http2.StreamError{StreamID: 1, Code: http2.ErrCodeInternal}), "reset"},
		{errors.New("127.0.0.1:1 did not negotiate HTTP/2 (ALPN \"http/1.1\")"), "no_http2"},
		{errors.New("something else"), "other"},
	} {
		if got := UpstreamReason(tc.err); got != tc.want {
			t.Errorf("UpstreamReason(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, "ok"},
		{fmt.Errorf("%w: invalid_client", injectors.ErrCredentialRejected), "rejected"},
		{fmt.Errorf("%w: down", injectors.ErrCredentialUnavailable), "unavailable"},
		{fmt.Errorf("%w: {mount}", injectors.ErrBadRequest), "bad_request"},
		{fmt.Errorf("%w: which session", injectors.ErrFailedPrecondition), "precondition"},
		{context.DeadlineExceeded, "timeout"},
		{errors.New("odd"), "error"},
	} {
		if got := Outcome(tc.err); got != tc.want {
			t.Errorf("Outcome(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
	var m *Metrics // nil records nothing, and never panics
	m.Request("l", "r", "h2", "anyone", 200, time.Millisecond)
	m.UpstreamFailure("l", "r", "other")
	m.Injection("i", nil)
	m.Looked("i", true)
	m.Fetched("i", time.Millisecond, true, errors.New("x"))
	m.Evicted("i")
	m.Conn("l", "h2", 1)
	m.Connect("l", "refused")
	m.Event("i", "rotation")
	m.GoAway("l", "client", "sent", "NO_ERROR")
	m.Refused("l", "max_streams")
	m.Reload(nil)
	m.WatchCache(nil)
	m.WatchSessions("i", nil)
}

// Requests and injections are counted under their own labels, each status
// class and outcome apart, whether their series was resolved before or
// not, and from many goroutines at once.
func TestRequestAndInjectionSeries(t *testing.T) {
	m := New("test")
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				m.Request("sidecar", "api", "h2", "anyone", 200, time.Millisecond)
				m.Request("sidecar", "api", "h2", "anyone", 204, time.Millisecond)
				m.Request("sidecar", "api", "http/1.1", "anyone", 503, time.Millisecond)
				m.Request("fwd", "api", "h2", "anyone", 0, time.Millisecond)
				m.Injection("static", nil)
				m.Injection("static", injectors.ErrCredentialRejected)
			}
		}()
	}
	wg.Wait()
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		for _, mt := range f.GetMetric() {
			key := f.GetName()
			for _, l := range mt.GetLabel() {
				key += " " + l.GetName() + "=" + l.GetValue()
			}
			switch {
			case mt.GetCounter() != nil:
				got[key] = mt.GetCounter().GetValue()
			case mt.GetHistogram() != nil:
				got[key] = float64(mt.GetHistogram().GetSampleCount())
			}
		}
	}
	for key, want := range map[string]float64{
		"authproxy_requests_total client=anyone listener=sidecar protocol=h2 route=api status_class=2xx":       400,
		"authproxy_requests_total client=anyone listener=sidecar protocol=http/1.1 route=api status_class=5xx": 200,
		"authproxy_requests_total client=anyone listener=fwd protocol=h2 route=api status_class=reset":         200,
		"authproxy_request_duration_seconds listener=sidecar protocol=h2":                                      400,
		"authproxy_request_duration_seconds listener=sidecar protocol=http/1.1":                                200,
		"authproxy_request_duration_seconds listener=fwd protocol=h2":                                          200,
		"authproxy_injections_total injector=static outcome=ok":                                                200,
		"authproxy_injections_total injector=static outcome=rejected":                                          200,
	} {
		if got[key] != want {
			t.Errorf("%s = %v, want %v", key, got[key], want)
		}
	}
}

// The per-request calls on the data plane's hot path: a request answered
// and an injection.
func BenchmarkRequestAndInjection(b *testing.B) {
	m := New("test")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		m.Request("sidecar", "api", "h2", "anyone", 200, time.Millisecond)
		m.Injection("static", nil)
	}
}
