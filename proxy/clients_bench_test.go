package proxy

import (
	"encoding/base64"
	"log/slog"
	"testing"
	"time"

	"github.com/authproxy/authproxy/config"
)

// The cost of recognising a caller at steady state: a Basic password
// (SHA-256 and a constant-time compare), and a JWT already verified (its
// SHA-256 and a cache lookup).
func BenchmarkIdentifyCaller(b *testing.B) {
	pw := "pw-billing-1"
	cfg := &config.Config{File: config.File{Clients: map[string]config.Client{
		"billing": {Basic: &config.BasicClient{Username: "billing", Password: config.SecretSource{Value: &pw}}},
		"office":  {Sources: []string{"10.0.0.0/8"}},
	}}}
	cr, err := newClientRules(cfg, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	rt := &routeRT{name: "r", clients: map[string]bool{"billing": true}}
	att := newAttempts(slog.New(slog.DiscardHandler))
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte("billing:"+pw))
	b.Run("basic", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := cr.check(rt, auth, "127.0.0.1:40000", nil, att); err != nil {
				b.Fatal(err)
			}
		}
	})
	// A JWT already verified: what every request after the first costs.
	tok := "eyJhbGciOiJSUzI1NiIsImtpZCI6InIxIn0.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6cmVwb3J0czphcHAifQ.c2ln"
	cr.jwt.clients = append(cr.jwt.clients, jwtClient{name: "reports"})
	cr.jwt.verified.Add(sha256Sum(tok), verifiedJWT{name: "reports", exp: time.Now().Add(time.Hour)})
	rt.clients["reports"] = true
	b.Run("jwt-cached", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := cr.check(rt, "Bearer "+tok, "127.0.0.1:40000", nil, att); err != nil {
				b.Fatal(err)
			}
		}
	})
	// A client certificate's identities, looked up at each request.
	cr.tls["uri:spiffe://cluster.local/ns/garage/sa/app"] = "garage"
	rt.clients["garage"] = true
	names := []string{"dns:app.garage.svc", "uri:spiffe://cluster.local/ns/garage/sa/app"}
	b.Run("tls", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := cr.check(rt, "", "127.0.0.1:40000", names, att); err != nil {
				b.Fatal(err)
			}
		}
	})
}
