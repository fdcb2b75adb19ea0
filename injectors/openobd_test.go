package injectors

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/openobd/pb"
	"github.com/authproxy/authproxy/tokencache"
	"github.com/authproxy/authproxy/transport"
)

func TestOpenOBDConfigErrors(t *testing.T) {
	tr, _ := transport.New(config.Upstream{})
	_, err := NewOpenOBD("obd", OpenOBDConfig{Endpoint: "grpc.openobd.com", ClientID: secretValue("id"), MaxSessions: -1},
		Env{Cache: tokencache.New(tokencache.Options{}), Transport: tr})
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	for _, want := range []string{"endpoint: required as host:port", "client_secret: a secret needs exactly one", "cluster_id: required (001 Europe, 002 USA)", "max_sessions: must not be negative"} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in:\n%s", want, msg)
		}
	}
}

func TestNormalizeHostPort(t *testing.T) {
	for in, want := range map[string]string{"GRPC.openobd.com": "grpc.openobd.com:443", "s1.example:8443": "s1.example:8443", "[::1]:9": "[::1]:9", "": ""} {
		if got := normalizeHostPort(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

// A session state the proxy does not know keeps the session live and is
// logged once; the states known to end a session end it.
func TestOpenOBDUnknownSessionStatesAreLiveAndLoggedOnce(t *testing.T) {
	var logs strings.Builder
	o, err := NewOpenOBD("obd", OpenOBDConfig{Endpoint: "grpc.openobd.com:443", ClientID: secretValue("id"),
		ClientSecret: secretValue("secret"), ClusterID: "001"},
		Env{Cache: tokencache.New(tokencache.Options{}), Transport: &transport.Set{},
			Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		o.learn(&pb.SessionInfo{Id: "s1", State: "paused", GrpcEndpoint: "session1.openobd.com:443"}, false, "")
	}
	s, _ := o.sessions.Get("s1")
	if err := s.liveErr(); err != nil {
		t.Errorf("an unknown state ended the session: %v", err)
	}
	if n := strings.Count(logs.String(), "openOBD session state not known"); n != 1 || !strings.Contains(logs.String(), "state=paused") {
		t.Errorf("logged %d times:\n%s", n, logs.String())
	}
	o.learn(&pb.SessionInfo{Id: "s1", State: "interrupted", GrpcEndpoint: "session1.openobd.com:443"}, false, "")
	if err := s.liveErr(); err == nil {
		t.Error("interrupted did not end the session")
	}
}

// The proxy shows an openOBD route's responses to the injector only for
// the calls it learns from (Observes); every call whose response
// TapMessages or ObserveResponse acts on must be among them, and a plain
// session call must not (it would be kept for a retry for nothing).
func TestOpenOBDObservesOnlyTheCallsItLearnsFrom(t *testing.T) {
	o, err := NewOpenOBD("obd", OpenOBDConfig{Endpoint: "grpc.openobd.com:443", ClientID: secretValue("id"),
		ClientSecret: secretValue("secret"), ClusterID: "001"},
		Env{Cache: tokencache.New(tokencache.Options{}), Transport: &transport.Set{}})
	if err != nil {
		t.Fatal(err)
	}
	var _ SelectiveObserver = o
	for path, want := range map[string]bool{
		obdController + "getSessionControllerToken": true,
		obdController + "startSessionOnTicket":      true,
		obdController + "startSessionOnConnector":   true,
		obdController + "getSession":                true,
		obdController + "getSessionList":            true,
		obdController + "interruptSession":          true,
		obdController + "createTicket":              true, // UNAUTHENTICATED drops the controller token
		obdSessionSvc + "authenticate":              true,
		obdSessionSvc + "finish":                    true,
		obdSessionSvc + "openControlStream":         false,
		obdSessionSvc + "getSessionState":           false,
		"/openOBD.v1.canService/sendFrame":          false,
		"/openOBD.v1.sessionControllerX/getSession": false,
	} {
		r, _ := http.NewRequest(http.MethodPost, "https://grpc.openobd.com"+path, nil)
		req := &Request{Request: r}
		if got := o.Observes(req); got != want {
			t.Errorf("Observes(%s) = %v, want %v", path, got, want)
		}
		if tap := o.TapMessages(req, 200, http.Header{}); tap != nil && !o.Observes(req) {
			t.Errorf("%s: TapMessages reads the response, but Observes is false", path)
		}
	}
}
