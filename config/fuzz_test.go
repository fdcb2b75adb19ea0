package config_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/injectors"
)

// FuzzParse feeds arbitrary YAML to the config loader and the injector
// builders: they must return errors, never panic. Seeded from testdata.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*/*.yaml")
	files = append(files, "../config.example.yaml")
	for _, file := range files {
		if data, err := os.ReadFile(file); err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := config.Parse(data)
		if cfg == nil {
			if err == nil {
				t.Fatal("nil config without an error")
			}
			return
		}
		_, _ = injectors.BuildAll(cfg, injectors.Env{})
	})
}

// TestExampleConfig checks that the shipped example is valid.
func TestExampleConfig(t *testing.T) {
	t.Setenv("EXAMPLE_API_TOKEN", "token-for-the-example")
	err := loadAll("../config.example.yaml")
	if err != nil {
		t.Fatalf("config.example.yaml: %v", err)
	}
}
