package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// yamlBlock is a fenced ```yaml block of a Markdown file: an authproxy
// configuration. Other YAML (Prometheus rules, Kubernetes objects) is
// fenced as ```yml.
var yamlBlock = regexp.MustCompile("(?ms)^```yaml\n(.*?)^```")

// Every YAML snippet in the README and docs/ is an authproxy configuration
// that `authproxy check -skip-secrets` accepts. A snippet that shows only
// part of a config (an injector block, the admin listener) is completed by
// docSnippetConfig with what it lacks, and nothing it has is changed, so
// each of its keys is checked where the snippet puts it.
func TestEveryDocSnippetLoads(t *testing.T) {
	files := []string{"../../README.md"}
	err := filepath.WalkDir("../../docs", func(path string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(path, ".md") {
			files = append(files, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, file := range files {
		text, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range yamlBlock.FindAllSubmatchIndex(text, -1) {
			n++
			snippet := text[m[2]:m[3]]
			where := fmt.Sprintf("%s:%d", strings.TrimPrefix(file, "../../"), bytes.Count(text[:m[0]], []byte("\n"))+1)
			full, err := docSnippetConfig(snippet)
			if err != nil {
				t.Errorf("%s: not YAML: %v", where, err)
				continue
			}
			cfg := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(cfg, full, 0o600); err != nil {
				t.Fatal(err)
			}
			var stdout, stderr bytes.Buffer
			if code := run([]string{"check", "-skip-secrets", "-config", cfg}, &stdout, &stderr); code != 0 {
				t.Errorf("%s: the snippet does not load (exit %d):\n%s\nas checked:\n%s", where, code, stderr.String(), full)
			}
		}
	}
	if n < 14 {
		t.Errorf("found %d YAML snippets in %d files; the docs hold more", n, len(files))
	}
}

// templateName is a {name} path value in an injector's templates.
var templateName = regexp.MustCompile(`\{([a-z_][a-z0-9_]*)\}`)

// docSnippetConfig completes a snippet into a whole config: a listener if
// it has none (a forward listener when its routes name hosts, else a
// sidecar), a CA for forward listeners, a static injector for each route's
// missing injector, and a route for each injector no route uses (capturing
// the path values its templates read).
func docSnippetConfig(snippet []byte) ([]byte, error) {
	var doc map[string]any
	if err := yaml.Unmarshal(snippet, &doc); err != nil {
		return nil, err
	}
	if doc == nil {
		doc = map[string]any{}
	}
	routes, _ := doc["routes"].([]any)
	injs, _ := doc["injectors"].(map[string]any)
	hosts := false
	used := map[string]bool{}
	for _, r := range routes {
		rm, _ := r.(map[string]any)
		match, _ := rm["match"].(map[string]any)
		if _, ok := match["host"]; ok {
			hosts = true
		}
		if name, ok := rm["injector"].(string); ok {
			used[name] = true
		}
	}
	if _, ok := doc["listeners"]; !ok {
		if hosts {
			doc["listeners"] = []any{map[string]any{"name": "doc-forward", "kind": "forward", "address": "127.0.0.1:0"}}
		} else {
			doc["listeners"] = []any{map[string]any{"name": "doc-sidecar", "kind": "sidecar", "address": "127.0.0.1:0", "upstream": "https://api.example.com"}}
		}
	}
	forward := false
	for _, l := range doc["listeners"].([]any) {
		if lm, _ := l.(map[string]any); lm["kind"] == "forward" {
			forward = true
		}
	}
	if _, ok := doc["ca"]; !ok && forward {
		doc["ca"] = map[string]any{"cert_file": "ca.crt", "key_file": "ca.key"}
	}
	if injs == nil {
		injs = map[string]any{}
	}
	for name := range used {
		if _, ok := injs[name]; !ok {
			injs[name] = map[string]any{"kind": "static", "headers": map[string]any{"Authorization": map[string]any{"value": "x"}}}
		}
	}
	var names []string
	for name := range injs {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if used[name] {
			continue
		}
		block, _ := yaml.Marshal(injs[name])
		path := "/" + name
		for _, m := range templateName.FindAllStringSubmatch(string(block), -1) {
			if p := "{" + m[1] + "}"; !strings.Contains(path, p) {
				path += "/" + p
			}
		}
		route := map[string]any{"name": "doc-" + name, "match": map[string]any{"path": path + "/*"}, "injector": name}
		if forward {
			route["match"].(map[string]any)["host"] = "doc-" + name + ".example.com"
		}
		routes = append(routes, route)
	}
	if len(injs) > 0 {
		doc["injectors"] = injs
	}
	if len(routes) > 0 {
		doc["routes"] = routes
	}
	return yaml.Marshal(doc)
}

// mdLink is a Markdown link's target.
var mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// Every relative link in the README and docs/ names a file that exists,
// and a heading of it when it has a #fragment.
func TestDocLinksResolve(t *testing.T) {
	files := []string{"../../README.md"}
	filepath.WalkDir("../../docs", func(path string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(path, ".md") {
			files = append(files, path)
		}
		return err
	})
	links := 0
	for _, file := range files {
		text, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range mdLink.FindAllStringSubmatch(string(text), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			links++
			path, frag, _ := strings.Cut(target, "#")
			dest := file
			if path != "" {
				dest = filepath.Join(filepath.Dir(file), path)
			}
			if _, err := os.Stat(dest); err != nil {
				t.Errorf("%s: link %s: %v", file, target, err)
				continue
			}
			if frag != "" && !slices.Contains(headingAnchors(t, dest), frag) {
				t.Errorf("%s: link %s: no such heading in %s", file, target, dest)
			}
		}
	}
	if links < 30 {
		t.Errorf("only %d relative links found", links)
	}
}

// headingAnchors are the anchors GitHub gives a Markdown file's headings.
func headingAnchors(t *testing.T, file string) []string {
	text, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(text), "\n") {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.ToLower(strings.TrimSpace(strings.TrimLeft(line, "#")))
		var b strings.Builder
		for _, r := range h {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 127:
				b.WriteRune(r)
			}
		}
		out = append(out, b.String())
	}
	return out
}
