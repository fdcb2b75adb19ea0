package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/internal/syncbuf"
)

// misplaced is a secret written where it does not belong: as a plain
// string where a {value|env|file} source belongs, or as a URL's password.
const misplaced = `Mispl4ced"S3cret<&>+/=`

// kindConfigs are the config types of the injector kinds, by kind, for
// finding every secret-typed key.
var kindConfigs = map[string]reflect.Type{
	"static":  reflect.TypeFor[injectors.StaticConfig](),
	"oauth2":  reflect.TypeFor[injectors.OAuth2Config](),
	"odil":    reflect.TypeFor[injectors.ODILConfig](),
	"openobd": reflect.TypeFor[injectors.OpenOBDConfig](),
	"viss":    reflect.TypeFor[injectors.VISSConfig](),
}

// secretKeys lists the YAML paths (keys, a map's key as X-Key) of every
// secret source under t.
func secretKeys(t *testing.T, typ reflect.Type, prefix []string) [][]string {
	secret := reflect.TypeFor[config.SecretSource]()
	var out [][]string
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || name == "-" || strings.Contains(opts, "inline") {
			continue
		}
		path := append(append([]string{}, prefix...), name)
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft == secret:
			out = append(out, path)
		case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Struct:
			if inner := ft.Elem(); inner.NumField() > 0 && inner.Field(0).Type == secret {
				out = append(out, append(path, "X-Key"))
			}
		case ft.Kind() == reflect.Struct:
			out = append(out, secretKeys(t, ft, path)...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct && len(secretKeys(t, ft.Elem(), nil)) > 0:
			t.Fatalf("%v: a list of blocks holding secrets: teach this test to write one", path)
		}
	}
	return out
}

// nested writes value at path as YAML flow mappings.
func nested(path []string, value string) string {
	if len(path) == 0 {
		return value
	}
	return fmt.Sprintf("{%q: %s}", path[0], nested(path[1:], value))
}

// misplacedCase is one injector block (or token_cache block) with a
// misplaced secret, and what its error must say instead.
type misplacedCase struct {
	name       string
	injector   string // an injector block, as YAML
	tokenCache string // a token_cache block, as YAML
	listener   string // a listener's upstream
	route      string // a route's upstream
	want       string // what the error says
}

func misplacedCases(t *testing.T) []misplacedCase {
	var cases []misplacedCase
	howTo := "{value: ...}, {env: NAME} or {file: PATH}"
	for kind, typ := range kindConfigs {
		for _, path := range secretKeys(t, typ, nil) {
			cases = append(cases, misplacedCase{
				name:     kind + "." + strings.Join(path, "."),
				injector: fmt.Sprintf("{kind: %s, %q: %s}", kind, path[0], nested(path[1:], fmt.Sprintf("%q", misplaced))),
				want:     howTo,
			})
		}
	}
	for _, path := range secretKeys(t, reflect.TypeFor[config.SharedStore](), nil) {
		cases = append(cases, misplacedCase{
			name:       "token_cache.shared." + strings.Join(path, "."),
			tokenCache: fmt.Sprintf(`{shared: {address: "127.0.0.1:6379", %q: %s}}`, path[0], nested(path[1:], fmt.Sprintf("%q", misplaced))),
			want:       howTo,
		})
	}
	if len(cases) < 15 {
		t.Fatalf("found %d secret-typed keys; the walk is broken", len(cases))
	}
	// Every URL key, with a password in its user info (escaped as a URL
	// must carry it, and as written).
	pw := url.UserPassword("admin", misplaced).String()
	for _, u := range []struct{ name, injector, listener, route string }{
		{name: "listeners[].upstream", listener: "https://" + pw + "@api.example.com"},
		{name: "routes[].upstream", route: "https://" + pw + "@api.example.com"},
		{name: "oauth2.token_url", injector: `{kind: oauth2, token_url: "https://URL@auth.example.com/token", client_id: {value: a}, client_secret: {value: b}, scopes: [s]}`},
		{name: "odil.base_url", injector: `{kind: odil, base_url: "https://URL@odil.example.com", username: {value: u}, password: {value: p}, sas: {format: servicebus-b64key, key: {value: k}}}`},
		{name: "odil.session_url", injector: `{kind: odil, session_url: "https://URL@odil.example.com/session/create", username: {value: u}, password: {value: p}, sas: {format: servicebus-b64key, key: {value: k}}}`},
		{name: "viss.agts_url", injector: `{kind: viss, agts_url: "https://URL@agts.example.com", vin: V, context: "Independent+OEM+Cloud", proof: {value: p}}`},
		{name: "viss.ats_url", injector: `{kind: viss, agts_url: "https://agts.example.com", ats_url: "https://URL@ats.example.com", vin: V, context: "Independent+OEM+Cloud", proof: {value: p}}`},
		{name: "openobd.endpoint", injector: `{kind: openobd, endpoint: "URL@grpc.openobd.com:443", client_id: {value: a}, client_secret: {value: b}, cluster_id: "001"}`},
		{name: "oauth2.token_url unescaped", injector: fmt.Sprintf(`{kind: oauth2, token_url: %q, client_id: {value: a}, client_secret: {value: b}, scopes: [s]}`, "https://admin:"+misplaced+"@auth.example.com/token")},
	} {
		c := misplacedCase{name: u.name, listener: u.listener, route: u.route, want: "user info"}
		if u.injector != "" {
			c.injector = strings.ReplaceAll(u.injector, "URL", strings.ReplaceAll(pw, `"`, `\"`))
		}
		cases = append(cases, c)
	}
	return cases
}

// write writes c's config: a working one (a static injector behind a
// sidecar route) with c's mistake added.
func (c misplacedCase) write(t *testing.T, file, format string) {
	t.Helper()
	upstream := "https://api.example.com"
	if c.listener != "" {
		upstream = c.listener
	}
	text := fmt.Sprintf(`
log: {format: %s}
reload: {watch: false} # SIGHUP alone: one rejection per signal
listeners:
  - {name: app, kind: sidecar, address: "127.0.0.1:0", upstream: %q}
injectors:
  tok: {kind: static, headers: {Authorization: {value: t}}}
`, format, upstream)
	if c.injector != "" {
		text += "  bad: " + c.injector + "\n"
	}
	text += "routes:\n  - {name: api, match: {path: /v1/*}, injector: tok}\n"
	if c.route != "" {
		text += fmt.Sprintf("  - {name: other, match: {path: /v2/*}, injector: tok, upstream: %q}\n", c.route)
	}
	if c.tokenCache != "" {
		text += "token_cache: " + c.tokenCache + "\n"
	}
	// Whole, as a reload must read it.
	if err := os.WriteFile(file+".tmp", []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(file+".tmp", file); err != nil {
		t.Fatal(err)
	}
}

// shows reports the first encoding of the misplaced secret (or any 8 of
// its characters in a row) that out holds.
func shows(out string) string {
	for _, enc := range []string{misplaced, url.QueryEscape(misplaced), url.PathEscape(misplaced),
		base64.StdEncoding.EncodeToString([]byte(misplaced)), base64.RawURLEncoding.EncodeToString([]byte(misplaced))} {
		if strings.Contains(out, enc) {
			return enc
		}
	}
	for i := 0; i+8 <= len(misplaced); i++ {
		if piece := misplaced[i : i+8]; strings.Contains(out, piece) {
			return piece
		}
	}
	return ""
}

// runFor runs the binary with args for at most d (a run that starts is
// stopped then, and its code is -1).
func runFor(t *testing.T, d time.Duration, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		code = 0 // it ran: the config was accepted
	}
	return o.String(), e.String(), code
}

// A secret written as a plain string where its source belongs, for every
// secret-typed key of every injector kind and of token_cache.shared, and a
// password in the user info of every URL key, are refused by check, by
// run and by a reload (text and JSON logs) with a message that says how
// to write the secret and never shows it.
func TestMisplacedSecretsAreNeverShown(t *testing.T) {
	cases := misplacedCases(t)
	dir := t.TempDir()
	for _, c := range cases {
		file := filepath.Join(dir, "bad.yaml")
		c.write(t, file, "text")
		for _, args := range [][]string{{"check", "-config", file}, {"run", "-config", file}} {
			out, errOut, code := runFor(t, 30*time.Second, args...)
			if code == 0 {
				t.Errorf("%s: %s accepted it", c.name, args[0])
				continue
			}
			if s := shows(out + errOut); s != "" {
				t.Errorf("%s: %s shows %q:\n%s%s", c.name, args[0], s, out, errOut)
			}
			if !strings.Contains(errOut, c.want) {
				t.Errorf("%s: %s does not say %q:\n%s", c.name, args[0], c.want, errOut)
			}
		}
	}
	for _, format := range []string{"text", "json"} {
		t.Run("reload/"+format, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "c.yaml")
			misplacedCase{}.write(t, file, format)
			cmd := exec.Command(binary, "run", "-config", file)
			cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
			stderr, _ := cmd.StderrPipe()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			var logs syncbuf.Buffer
			lines := make(chan string, 1024)
			go func() {
				sc := bufio.NewScanner(stderr)
				sc.Buffer(nil, 1<<20)
				for sc.Scan() {
					logs.WriteString(sc.Text() + "\n")
					lines <- sc.Text()
				}
				close(lines)
			}()
			// until returns the lines up to and including the first that
			// holds what.
			until := func(what string) []string {
				t.Helper()
				var got []string
				timeout := time.After(60 * time.Second)
				for {
					select {
					case l, ok := <-lines:
						if !ok {
							t.Fatalf("the proxy ended before %q:\n%s", what, logs.String())
						}
						got = append(got, l)
						if strings.Contains(l, what) {
							return got
						}
					case <-timeout:
						t.Fatalf("no %q within 60 s:\n%s", what, logs.String())
					}
				}
			}
			hup := func() {
				if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
					t.Fatal(err)
				}
			}
			until("listening")
			for _, c := range cases {
				// The mistake, then the working config again: the lines
				// between are the mistake's rejection.
				c.write(t, file, format)
				hup()
				rejected := until("reload rejected")
				misplacedCase{}.write(t, file, format)
				hup()
				said := false
				for _, l := range append(rejected, until("reload applied")...) {
					if !strings.Contains(l, "reload rejected") {
						continue
					}
					if !strings.Contains(l, "level=ERROR") && !strings.Contains(l, `"level":"ERROR"`) {
						t.Errorf("%s: the rejection is not an ERROR line: %s", c.name, l)
					}
					said = said || strings.Contains(strings.ReplaceAll(l, `\"`, `"`), c.want)
				}
				if !said {
					t.Errorf("%s: no rejection says %q:\n%s", c.name, c.want, logs.String())
				}
			}
			if s := shows(logs.String()); s != "" {
				t.Errorf("the log shows %q:\n%s", s, logs.String())
			}
		})
	}
}
