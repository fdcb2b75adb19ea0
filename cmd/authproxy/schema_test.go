package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"
)

// compiledSchema compiles docs/authproxy.schema.json with a JSON Schema
// validator (santhosh-tekuri/jsonschema, draft 2020-12).
func compiledSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	f, err := os.Open("../../docs/authproxy.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("authproxy.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("authproxy.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// asJSON is a YAML document as the validator takes it.
func asJSON(t *testing.T, yamlText []byte) any {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(yamlText, &v); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// The committed schema is what authproxy schema prints (regenerate it with
// go run ./cmd/authproxy schema > docs/authproxy.schema.json).
func TestSchemaFileIsGenerated(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"schema"}, &out, &errOut); code != 0 {
		t.Fatalf("schema: %d %s", code, errOut.String())
	}
	file, err := os.ReadFile("../../docs/authproxy.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), file) {
		t.Error("docs/authproxy.schema.json is not what authproxy schema prints: go run ./cmd/authproxy schema > docs/authproxy.schema.json")
	}
}

// Every configuration the project ships validates against the schema:
// config.example.yaml, examples/, the Kubernetes manifests' and the Helm
// chart's embedded configs, and every doc snippet (completed as
// TestEveryDocSnippetLoads completes it). And configs the proxy refuses
// for their shape, the schema refuses too.
func TestSchemaAcceptsWhatTheProjectShips(t *testing.T) {
	s := compiledSchema(t)
	files := []string{"../../config.example.yaml"}
	examples, _ := filepath.Glob("../../examples/*.yaml")
	files = append(files, examples...)
	n := 0
	for _, f := range files {
		text, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		n++
		if err := s.Validate(asJSON(t, text)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	// The manifests' configs.
	manifests, _ := filepath.Glob("../../deploy/kubernetes/*.yaml")
	for _, m := range manifests {
		text, _ := os.ReadFile(m)
		dec := yaml.NewDecoder(bytes.NewReader(text))
		for {
			var doc struct {
				Kind string
				Data map[string]string
			}
			if dec.Decode(&doc) != nil {
				break
			}
			if doc.Kind == "ConfigMap" {
				for key, cfg := range doc.Data {
					n++
					if err := s.Validate(asJSON(t, []byte(cfg))); err != nil {
						t.Errorf("%s: %s: %v", m, key, err)
					}
				}
			}
		}
	}
	// The Helm chart's default config.
	values, _ := os.ReadFile("../../deploy/helm/authproxy/values.yaml")
	var v struct{ Config map[string]any }
	if err := yaml.Unmarshal(values, &v); err != nil {
		t.Fatal(err)
	}
	chartCfg, _ := yaml.Marshal(v.Config)
	n++
	if err := s.Validate(asJSON(t, chartCfg)); err != nil {
		t.Errorf("the chart's config: %v", err)
	}
	// The doc snippets.
	docs := []string{"../../README.md"}
	more, _ := filepath.Glob("../../docs/*.md")
	sub, _ := filepath.Glob("../../docs/*/*.md")
	docs = append(append(docs, more...), sub...)
	for _, file := range docs {
		text, _ := os.ReadFile(file)
		for _, m := range yamlBlock.FindAllSubmatchIndex(text, -1) {
			full, err := docSnippetConfig(text[m[2]:m[3]])
			if err != nil {
				continue // TestEveryDocSnippetLoads reports it
			}
			n++
			where := fmt.Sprintf("%s:%d", strings.TrimPrefix(file, "../../"), bytes.Count(text[:m[0]], []byte("\n"))+1)
			if err := s.Validate(asJSON(t, full)); err != nil {
				t.Errorf("%s: %v", where, err)
			}
		}
	}
	if n < 25 {
		t.Errorf("validated %d configurations; the project ships more", n)
	}

	// Shapes the proxy refuses.
	for name, bad := range map[string]string{
		"misspelt top-level key":  "listners: []\n",
		"misspelt listener key":   "listeners: [{name: a, kind: sidecar, adress: 127.0.0.1:1}]\n",
		"unknown injector kind":   "injectors: {x: {kind: magic}}\n",
		"oauth2 key of static":    "injectors: {x: {kind: static, headers: {A: {value: v}}, token_url: https://x}}\n",
		"secret with two sources": "injectors: {x: {kind: static, headers: {A: {value: v, env: E}}}}\n",
		"secret as a plain value": "injectors: {x: {kind: oauth2, client_secret: hunter2}}\n",
		"duration not a duration": "timeouts: {shutdown: soon}\n",
		"boolean as a string":     "reload: {watch: \"maybe\"}\n",
	} {
		if err := s.Validate(asJSON(t, []byte(bad))); err == nil {
			t.Errorf("%s: the schema accepts %q", name, bad)
		}
	}
}

// check -format json gives CI one JSON object: ok, each problem with its
// YAML path, warnings.
func TestCheckFormatJSON(t *testing.T) {
	type result struct {
		File     string
		OK       bool
		Summary  string
		Problems []struct{ Path, Message string }
		Warnings []string
	}
	out, _, code := runBinary(t, nil, "check", "-format", "json", "../../config/testdata/bad/unknown_keys.yaml")
	var r result
	if err := json.Unmarshal([]byte(out), &r); err != nil || code != 1 || r.OK || len(r.Problems) < 3 {
		t.Fatalf("a bad config: exit %d, %v, %+v", code, err, r)
	}
	if p := r.Problems[0]; p.Path != "listners" || !strings.HasPrefix(p.Message, "unknown key: did you mean listeners?") {
		t.Errorf("first problem: %+v", p)
	}
	cfg, _, _, _ := writeCA(t, 0, 10*24*time.Hour)
	out, _, code = runBinary(t, nil, "check", cfg, "-format", "json")
	r = result{}
	if err := json.Unmarshal([]byte(out), &r); err != nil || code != 0 || !r.OK || len(r.Problems) != 0 || !strings.HasPrefix(r.Summary, "OK (") ||
		len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], "the interception CA expires on") {
		t.Errorf("a good config with a CA expiring soon: exit %d, %v, %+v", code, err, r)
	}
	if _, errOut, code := runBinary(t, nil, "check", "-format", "yaml", cfg); code != 2 || !strings.Contains(errOut, "-format is text or json") {
		t.Errorf("-format yaml: %d %q", code, errOut)
	}
}
