package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/authproxy/authproxy/sim"
)

// testTLS makes a PKI in dir with a server certificate for names, and
// returns it with serve, which starts an HTTPS server (HTTP/2 offered) for
// a handler and returns its port.
func testTLS(t *testing.T, dir string, names ...string) (*sim.PKI, func(http.Handler) string) {
	t.Helper()
	pki, err := sim.NewPKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := pki.ServerTLS(names...)
	if err != nil {
		t.Fatal(err)
	}
	return pki, func(h http.Handler) string {
		s := httptest.NewUnstartedServer(h)
		s.TLS, s.EnableHTTP2 = tlsCfg, true
		s.StartTLS()
		t.Cleanup(s.Close)
		_, port, _ := net.SplitHostPort(s.Listener.Addr().String())
		return port
	}
}
