package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const routeTestConfig = `
clients:
  billing: {basic: {username: billing, password: {env: NOT_READ_BY_ROUTE}}}
  reports: {basic: {username: reports, password: {env: NOT_READ_BY_ROUTE}}}
listeners:
  - {name: gw, kind: forward, address: 0.0.0.0:3128, allow_remote_clients: true}
  - {name: app, kind: sidecar, address: 127.0.0.1:15001, host: api.example.com, upstream: https://api.example.com}
ca: {cert_file: ca.crt, key_file: ca.key}
injectors:
  tok: {kind: static, headers: {Authorization: {value: x}}}
routes:
  - {name: mounts, listeners: [gw], match: {host: api.example.com, path: "/mounts/{mount}/*"}, injector: tok, clients: [billing]}
  - {name: api-all, listeners: [gw], match: {host: api.example.com}, injector: tok, clients: [billing, reports]}
  - {name: other, listeners: [gw], match: {host: other.example.com, methods: [GET]}, injector: tok, clients: [anyone]}
  - {name: side, listeners: [app], match: {path: /v1/*}, injector: tok}
`

// authproxy route answers "why did my request get 403/404" from the
// configuration alone (no secret is read): the route matched, its path
// values, whether the caller may use it (and the status it would get),
// and why each other route of the listener did not match.
func TestRouteCommandExplainsADecision(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(cfg, []byte(routeTestConfig), 0o644)
	for _, c := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"-client", "billing", cfg, "GET", "https://api.example.com/mounts/m1/x"}, 0, []string{
			`route "api-all" (routes[1]): matches too, but mounts is more specific`,
			`route "other" (routes[2]): host api.example.com:443 does not match other.example.com`,
			`matches route "mounts" (routes[0]), injector "tok", path values mount=m1`,
			"caller billing: allowed (clients: billing)"}},
		{[]string{cfg, "-client", "reports", "GET", "https://api.example.com/mounts/m1/x"}, 1, []string{
			"caller reports: refused with 403 (gRPC PERMISSION_DENIED): the route is for clients billing"}},
		{[]string{cfg, "GET", "https://api.example.com/other"}, 1, []string{
			`route "mounts" (routes[0]): path /other does not match /mounts/{mount}/*`,
			"caller anyone: refused with 407 (gRPC UNAUTHENTICATED): the route is for clients billing, reports"}},
		{[]string{cfg, "POST", "https://other.example.com/y"}, 1, []string{
			`route "other" (routes[2]): method POST is not one of GET`,
			"no route matches: the listener answers 404 (unmatched: deny)"}},
		{[]string{cfg, "GET", "https://other.example.com/y"}, 0, []string{"caller anyone: allowed (clients: anyone)"}},
		{[]string{"-listener", "app", cfg, "GET", "http://127.0.0.1:15001/v1/x"}, 0, []string{
			`matches route "side" (routes[3])`, "caller anyone: allowed (the route names no clients: every caller)"}},
		{[]string{cfg, "GET", "https://api.example.com/mounts/m1/../../admin"}, 1, []string{"refused: the path"}},
	} {
		out, errOut, code := runBinary(t, nil, append([]string{"route"}, c.args...)...)
		if code != c.code {
			t.Errorf("route %v: exit %d, want %d\n%s%s", c.args, code, c.code, out, errOut)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("route %v: the answer lacks %q:\n%s", c.args, w, out)
			}
		}
	}
	if _, errOut, code := runBinary(t, nil, "route", "-client", "nobody", cfg, "GET", "https://api.example.com/"); code != 2 || !strings.Contains(errOut, `no client "nobody"`) {
		t.Errorf("an unknown client: %d %q", code, errOut)
	}
}
