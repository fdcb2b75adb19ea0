package injectors

import (
	"net/http"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/authproxy/authproxy/config"
)

func TestStaticInjectsCanonicalHeaders(t *testing.T) {
	v := "k3y"
	env := map[string]string{"TOKEN": "t0ken"}
	s, err := NewStatic(StaticConfig{Headers: map[string]StaticHeader{
		"authorization": {SecretSource: config.SecretSource{Env: "TOKEN"}, Prefix: "Bearer "},
		"x-api-key":     {SecretSource: config.SecretSource{Value: &v}},
	}}, func(k string) (string, bool) { val, ok := env[k]; return val, ok })
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(s.Headers(), ","); got != "Authorization,X-Api-Key" {
		t.Errorf("Headers() = %s", got)
	}
	for i := 0; i < 2; i++ { // the shared value slices must survive reuse
		req, _ := http.NewRequest("GET", "https://example.com/", nil)
		if err := s.Inject(&Request{Request: req}); err != nil {
			t.Fatal(err)
		}
		if req.Header.Get("Authorization") != "Bearer t0ken" || req.Header.Get("X-Api-Key") != "k3y" {
			t.Errorf("headers: %v", req.Header)
		}
		req.Header.Add("X-Api-Key", "appended")
	}
}

func TestStaticErrorsNeverShowTheValue(t *testing.T) {
	bad := "line1\nline2-secret"
	_, err := NewStatic(StaticConfig{Headers: map[string]StaticHeader{
		"X-Bad": {SecretSource: config.SecretSource{Value: &bad}},
	}}, nil)
	if err == nil {
		t.Fatal("a value with a newline was accepted")
	}
	if strings.Contains(err.Error(), "secret") || !strings.Contains(err.Error(), "headers.X-Bad") {
		t.Errorf("error %q should name the header and not show the value", err)
	}
}

func TestBuildAllNamesPaths(t *testing.T) {
	var blocks map[string]yaml.Node
	if err := yaml.Unmarshal([]byte(`
ok: {kind: static, headers: {Authorization: {value: x}}}
empty: {kind: static}
`), &blocks); err != nil {
		t.Fatal(err)
	}
	injs, err := BuildAll(&config.Config{File: config.File{Injectors: blocks}}, Env{})
	if err == nil || err.Error() != "injectors.empty.headers: at least one header is required" {
		t.Errorf("err = %v", err)
	}
	if _, ok := injs["ok"]; !ok {
		t.Error("the valid injector was not built")
	}
}

// A field the request's transport writes itself (Host, framing,
// connection-specific fields) would be silently not sent: it is refused,
// in any case, with a message naming the key.
func TestStaticRefusesFieldsItCannotSend(t *testing.T) {
	v := "x"
	for _, name := range []string{"Host", "host", "Content-Length", "transfer-encoding", "TE", "Trailer", "Connection", "Keep-Alive", "Proxy-Connection", "Upgrade"} {
		_, err := NewStatic(StaticConfig{Headers: map[string]StaticHeader{name: {SecretSource: config.SecretSource{Value: &v}}}}, nil)
		if err == nil || !strings.Contains(err.Error(), "headers."+name+": ") || !strings.Contains(err.Error(), "cannot be set by an injector") {
			t.Errorf("%s: %v, want a refusal naming headers.%s", name, err, name)
		}
	}
}
