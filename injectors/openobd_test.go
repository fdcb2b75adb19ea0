package injectors

import (
	"strings"
	"testing"

	"github.com/authproxy/authproxy/config"
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
