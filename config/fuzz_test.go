package config_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/ca"
	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/injectors"
	"github.com/authproxy/authproxy/proxy"
)

// FuzzParse feeds arbitrary YAML to the config loader and the injector
// builders: they must return errors, never panic. Seeded from testdata.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*/*.yaml")
	more, _ := filepath.Glob("../examples/*.yaml")
	files = append(append(files, more...), "../config.example.yaml")
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

// TestExampleConfigs checks that the shipped examples are valid.
func TestExampleConfigs(t *testing.T) {
	for _, v := range []string{"EXAMPLE_API_TOKEN", "OBH_CLIENT_ID", "OBH_CLIENT_SECRET", "OBELISK_CLIENT_ID", "ODIL_USER", "ODIL_PASSWORD", "ODIL_SAS_KEY", "OPENOBD_CLIENT_ID", "OPENOBD_CLIENT_SECRET"} {
		t.Setenv(v, "value-for-the-example")
	}
	dir := t.TempDir()
	if err := ca.Create(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"), "example", false); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(dir, "client-secret")
	os.WriteFile(secret, []byte("s\n"), 0o600)
	// A service-account key file as Zitadel issues it (examples/obh.yaml).
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})
	keyJSON, _ := json.Marshal(map[string]string{"type": "serviceaccount", "keyId": "k1", "key": string(keyPEM), "userId": "u1"})
	keyFile := filepath.Join(dir, "obh-service-user.json")
	os.WriteFile(keyFile, keyJSON, 0o600)
	files, _ := filepath.Glob("../examples/*.yaml")
	files = append(files, "../config.example.yaml")
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			data = []byte(strings.NewReplacer("/var/run/secrets/obelisk/client-secret", secret, "file: obh-service-user.json", "file: "+keyFile,
				"authproxy-ca/", dir+"/", "key_file: viss-key.pem", "key_file: "+filepath.Join(dir, "viss-key.pem")).Replace(string(data)))
			f := filepath.Join(dir, filepath.Base(file))
			os.WriteFile(f, data, 0o644)
			if err := loadAll(f); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			// The whole server builds too (route captures, CA).
			cfg, _ := config.Load(f)
			injs, _ := injectors.BuildAll(cfg, injectors.Env{})
			if _, err := proxy.New(cfg, injs, proxy.Options{}); err != nil {
				t.Errorf("%s: %v", file, err)
			}
		})
	}
}
