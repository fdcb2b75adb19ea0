package proxy_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/sim"
)

// writeZitadelKey writes a key file as Zitadel issues it and returns its
// path and public key.
func writeZitadelKey(t *testing.T, dir, typ, id string) (string, *rsa.PublicKey) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
	f := map[string]string{"type": typ, "keyId": "key-" + typ, "key": string(pemKey)}
	if typ == "serviceaccount" {
		f["userId"] = id
	} else {
		f["clientId"] = id
	}
	b, _ := json.Marshal(f)
	file := filepath.Join(dir, typ+".json")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return file, &k.PublicKey
}

// OBH Mobility with the key Zitadel recommends: a service-account key file,
// the JWT-bearer grant, one token per mount. A client assertion on
// client_credentials, which Zitadel never reads, fails with an error that
// names the grant to use.
func TestOBHWithAZitadelKeyFile(t *testing.T) {
	e := newEnv(t)
	saFile, saPub := writeZitadelKey(t, e.dir, "serviceaccount", "service-user-1")
	appFile, _ := writeZitadelKey(t, e.dir, "application", "app-client-1")
	ts := &sim.TokenServer{Mode: "zitadel", UserID: "service-user-1", KeyID: "key-serviceaccount", PublicKey: saPub}
	auth := e.httpsUpstream(ts)
	ts.Issuer = "https://auth.authproxy.test:" + port(t, auth.URL)
	api := e.httpsUpstream(ts.RequireToken(&sim.Echo{}))
	p := e.start(fmt.Sprintf(`
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, host: api.authproxy.test, upstream: "https://api.authproxy.test:%[1]s"}
upstream: {ca_file: "{{UPSTREAM_CA}}", resolve: {api.authproxy.test: 127.0.0.1, auth.authproxy.test: 127.0.0.1}}
injectors:
  obh:
    kind: oauth2
    preset: obh
    token_url: "%[2]s/oauth/v2/token"
    assertion_audience: "%[2]s"
    key_file: {file: %[3]q}
    scopes: [openid, sub, "urn:zitadel:iam:org:project:id:42:aud", "role:restricted", "mount:{mount}"]
  obh-app-key:
    kind: oauth2
    preset: obh
    token_url: "%[2]s/oauth/v2/token"
    key_file: {file: %[4]q}
    scopes: [openid, "urn:zitadel:iam:org:project:id:42:aud"]
routes:
  - {name: mounts, match: {path: "/mounts/{mount}/*"}, injector: obh}
  - {name: app-key, match: {path: "/app/*"}, injector: obh-app-key}
`, port(t, api.URL), ts.Issuer, saFile, appFile), nil, nil)
	for i := range 3 {
		for _, m := range []string{"m1", "m2", "m3"} {
			if st, body := statusBody(t, "http://"+p.addr("app")+"/mounts/"+m+"/lock"); st != 200 {
				t.Fatalf("round %d, mount %s: %d %s", i, m, st, body)
			}
		}
	}
	scopes := ts.Scopes()
	if len(scopes) != 3 || scopes["openid sub urn:zitadel:iam:org:project:id:42:aud role:restricted mount:m2"] != 1 {
		t.Errorf("tokens per scope set: %v, want one per mount", scopes)
	}
	st, body := statusBody(t, "http://"+p.addr("app")+"/app/x")
	if st != 502 || !strings.Contains(body, "credential rejected by its issuer (invalid_client)") {
		t.Errorf("an application key on client_credentials: %d %q, want 502 naming invalid_client", st, body)
	}
	if !strings.Contains(p.logs.String(), "auth_style: jwt_bearer") {
		t.Errorf("the log does not name the grant to use:\n%.2000s", p.logs.String())
	}
}

func statusBody(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := h1Client().Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
