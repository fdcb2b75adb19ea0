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
	return errors.Join(err, ierr)
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
