package config_test

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/injectors"
)

var update = flag.Bool("update", false, "rewrite testdata/bad/*.errors from the current output (review the diff!)")

// loadAll does what `authproxy check` does: load the config and build the
// injectors, collecting every problem.
func loadAll(path string) error {
	cfg, err := config.Load(path)
	if cfg == nil {
		return err
	}
	_, ierr := injectors.BuildAll(cfg, injectors.Env{})
	_, serr := injectors.NewStore(cfg, injectors.Env{})
	return errors.Join(err, ierr, serr)
}

func errorLines(err error) []string {
	var out []string
	for _, e := range config.Flatten(err) {
		out = append(out, e.Error())
	}
	return out
}

// TestBadConfigs checks that each file in testdata/bad produces exactly
// the errors listed in the .errors file beside it, one per line.
func TestBadConfigs(t *testing.T) {
	t.Setenv("AUTHPROXY_TEST_TOKEN", "token")
	t.Setenv("AUTHPROXY_TEST_EMPTY", "")
	os.Unsetenv("AUTHPROXY_TEST_MISSING")
	files, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files: %v", err)
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".yaml")
		t.Run(name, func(t *testing.T) {
			got := errorLines(loadAll(file))
			if len(got) == 0 {
				t.Fatal("no error for a bad config")
			}
			golden := strings.TrimSuffix(file, ".yaml") + ".errors"
			if *update {
				if err := os.WriteFile(golden, []byte(strings.Join(got, "\n")+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			data, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			want := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("errors differ (-want +got):\n%s", diff)
			}
		})
	}
}

// TestRelativePathsAreResolvedAgainstTheConfigDirectory: a relative path
// (ca, upstream, a secret's file, an injector's own *_file) means the same
// file whatever the working directory; absolute paths, values of other keys
// and Parse (no file) are left as they are.
func TestRelativePathsAreResolvedAgainstTheConfigDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etc", "authproxy")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "token.txt"), []byte("s3cr3t-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	abs := filepath.Join(t.TempDir(), "ca.key")
	yml := `
listeners:
  - {name: app, kind: sidecar, address: 127.0.0.1:0, upstream: https://api.example.com}
ca: {cert_file: ca/ca.crt, key_file: ` + abs + `}
upstream: {ca_file: ./roots/extra.pem}
injectors:
  api:
    kind: static
    headers:
      Authorization: {file: token.txt, prefix: "Bearer "}
  fleet:
    kind: viss
    agts_url: https://viss.example.com:7443/agts
    ats_url: https://viss.example.com:8443/ats
    vin: GEO001
    context: Independent+OEM+Cloud
    proof: {value: ABC}
    purpose: pay-how-you-drive
    long_term: {key_file: keys/viss.pem}
routes:
  - {name: api, match: {path: "/v1/*"}, injector: api}
`
	path := filepath.Join(dir, "authproxy.yaml")
	if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir()) // anywhere but the config's directory

	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "ca", "ca.crt"); cfg.CA.CertFile != want {
		t.Errorf("ca.cert_file = %q, want %q", cfg.CA.CertFile, want)
	}
	if cfg.CA.KeyFile != abs {
		t.Errorf("an absolute ca.key_file changed: %q", cfg.CA.KeyFile)
	}
	if want := filepath.Join(dir, "roots", "extra.pem"); cfg.Upstream.CAFile != want {
		t.Errorf("upstream.ca_file = %q, want %q", cfg.Upstream.CAFile, want)
	}
	fleet := cfg.Injectors["fleet"]
	var viss struct {
		AGTS     string `yaml:"agts_url"`
		LongTerm struct {
			KeyFile string `yaml:"key_file"`
		} `yaml:"long_term"`
	}
	if err := fleet.Decode(&viss); err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "keys", "viss.pem"); viss.LongTerm.KeyFile != want {
		t.Errorf("long_term.key_file = %q, want %q", viss.LongTerm.KeyFile, want)
	}
	if viss.AGTS != "https://viss.example.com:7443/agts" {
		t.Errorf("a key not naming a file changed: %q", viss.AGTS)
	}
	// The static injector reads token.txt from the config's directory
	// although the working directory is elsewhere (roots/extra.pem does
	// not exist; the upstream pool is not what this checks).
	cfg.Upstream.CAFile = ""
	injs, err := injectors.BuildAll(cfg, injectors.Env{})
	if err != nil {
		t.Fatalf("building the injectors: %v", err)
	}
	if injs["api"] == nil {
		t.Fatal("no api injector")
	}

	parsed, err := config.Parse([]byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	if parsed.CA.CertFile != "ca/ca.crt" {
		t.Errorf("Parse resolved a path without a file: %q", parsed.CA.CertFile)
	}
}
