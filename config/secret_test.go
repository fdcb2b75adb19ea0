package config_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/config"
)

func TestSecretNeverPrints(t *testing.T) {
	const value = "hunter2-very-secret"
	s := config.NewSecret(value)
	holder := struct {
		Name string
		Key  config.Secret
		Ptr  *config.Secret
	}{"x", s, &s}

	var logs bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&logs, nil))
	logger.Info("msg", "secret", s, "holder", holder)
	slog.New(slog.NewTextHandler(&logs, nil)).Info("msg", "secret", s, "ptr", &s)
	js, err := json.Marshal(holder)
	if err != nil {
		t.Fatal(err)
	}
	outputs := map[string]string{
		"%v": fmt.Sprintf("%v", s), "%s": fmt.Sprintf("%s", s), "%q": fmt.Sprintf("%q", s),
		"%+v": fmt.Sprintf("%+v", holder), "%#v": fmt.Sprintf("%#v", holder), "%x": fmt.Sprintf("%x", s),
		"%d": fmt.Sprintf("%d", s), "String": s.String(), "GoString": s.GoString(),
		"error": fmt.Errorf("wrapped: %v", s).Error(), "json": string(js), "slog": logs.String(),
	}
	for how, out := range outputs {
		if strings.Contains(out, value) {
			t.Errorf("%s prints the secret: %s", how, out)
		}
		if !strings.Contains(out, config.Redacted) {
			t.Errorf("%s does not show %s: %s", how, config.Redacted, out)
		}
	}
	if s.Reveal() != value {
		t.Errorf("Reveal() = %q", s.Reveal())
	}
}

func TestSecretSources(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AUTHPROXY_TEST_SECRET", "from-env")
	v := "inline"
	for _, tc := range []struct {
		name string
		src  config.SecretSource
		want string
	}{
		{"value", config.SecretSource{Value: &v}, "inline"},
		{"env", config.SecretSource{Env: "AUTHPROXY_TEST_SECRET"}, "from-env"},
		{"file drops one trailing newline", config.SecretSource{File: file}, "from-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := tc.src.Resolve(nil)
			if err != nil || s.Reveal() != tc.want {
				t.Errorf("got %q, %v", s.Reveal(), err)
			}
		})
	}
	// Errors name the source, never the value.
	t.Setenv("AUTHPROXY_TEST_SECRET", "")
	_, err := config.SecretSource{Env: "AUTHPROXY_TEST_SECRET"}.Resolve(nil)
	if err == nil || !strings.Contains(err.Error(), "AUTHPROXY_TEST_SECRET is empty") {
		t.Errorf("empty env: %v", err)
	}
	_, err = config.SecretSource{Value: &v, File: file}.Resolve(nil)
	if err == nil || strings.Contains(err.Error(), v) {
		t.Errorf("two sources: %v", err)
	}
}

func TestPrefixAndJoin(t *testing.T) {
	err := config.Prefix("injectors.a", errors.Join(
		config.Errorf("headers.X", "bad"), config.Errorf("", "top"), config.Errorf("[2]", "idx"), errors.New("plain")))
	var got []string
	for _, e := range config.Flatten(err) {
		got = append(got, e.Error())
	}
	want := []string{"injectors.a.headers.X: bad", "injectors.a: top", "injectors.a[2]: idx", "injectors.a: plain"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got %q, want %q", got, want)
	}
	if p := config.Join("routes[1]", "match", "host"); p != "routes[1].match.host" {
		t.Errorf("Join = %q", p)
	}
	if p := config.Join("headers", "Bad Name"); p != `headers["Bad Name"]` {
		t.Errorf("Join = %q", p)
	}
}
