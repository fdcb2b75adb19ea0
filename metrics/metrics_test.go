package metrics

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
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
	m.Request("l", "r", "h2", 200, time.Millisecond)
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
