package route

import (
	"fmt"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func mustPattern(t testing.TB, host, path string, methods ...string) Pattern {
	t.Helper()
	h, err := ParseHost(host)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParsePath(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseMethods(methods)
	if err != nil {
		t.Fatal(err)
	}
	return Pattern{Host: h, Path: p, Methods: m}
}

func TestMatchMostSpecific(t *testing.T) {
	table, conflicts := NewTable([]Entry[string]{
		{mustPattern(t, "", "/*"), "any"},
		{mustPattern(t, "*.example.com", "/*"), "wild"},
		{mustPattern(t, "*.eu.example.com", "/*"), "wild-eu"},
		{mustPattern(t, "api.example.com", "/*"), "api"},
		{mustPattern(t, "api.example.com:8443", "/*"), "api-8443"},
		{mustPattern(t, "api.example.com", "/mounts/{mount}/*"), "mount"},
		{mustPattern(t, "api.example.com", "/mounts/{mount}/data/{id}"), "mount-data"},
		{mustPattern(t, "api.example.com", "/mounts/list"), "mount-list"},
		{mustPattern(t, "api.example.com", "/mounts/list", "post"), "mount-list-post"},
		{mustPattern(t, "grpc.example.com", "/openOBD.v1.sessionController/*"), "controller"},
	})
	if len(conflicts) != 0 {
		t.Fatalf("conflicts: %v", conflicts)
	}
	for _, tc := range []struct {
		host, port, method, path string
		want                     string
		params                   Params
	}{
		{"other.org", "", "GET", "/x", "any", nil},
		{"a.example.com", "443", "GET", "/x", "wild", nil},
		{"a.b.example.com", "443", "GET", "/x", "wild", nil},
		{"x.eu.example.com", "443", "GET", "/x", "wild-eu", nil},
		{"example.com", "443", "GET", "/x", "any", nil}, // a wildcard does not match its apex
		{"api.example.com", "443", "GET", "/x", "api", nil},
		{"api.example.com", "8443", "GET", "/x", "api-8443", nil},
		{"api.example.com", "443", "GET", "/mounts/m1", "mount", Params{{"mount", "m1"}}},
		{"api.example.com", "443", "GET", "/mounts/m%2F1/deep/er", "mount", Params{{"mount", "m/1"}}},
		{"api.example.com", "443", "GET", "/mounts/m1/data/7", "mount-data", Params{{"mount", "m1"}, {"id", "7"}}},
		{"api.example.com", "443", "GET", "//mounts//m1/data/7/", "mount-data", Params{{"mount", "m1"}, {"id", "7"}}},
		{"api.example.com", "443", "GET", "/mounts/list", "mount-list", nil},
		{"api.example.com", "443", "POST", "/mounts/list", "mount-list-post", nil},
		{"api.example.com", "443", "GET", "/mounts", "api", nil},
		{"grpc.example.com", "443", "POST", "/openOBD.v1.sessionController/getSession", "controller", nil},
		{"grpc.example.com", "443", "POST", "/openOBD.v1.session/authenticate", "wild", nil},
	} {
		t.Run(fmt.Sprintf("%s %s%s", tc.method, tc.host, tc.path), func(t *testing.T) {
			e, params, ok := table.Match(tc.host, tc.port, tc.method, tc.path)
			if !ok {
				t.Fatalf("no match, want %s", tc.want)
			}
			if e.Value != tc.want {
				t.Errorf("matched %s, want %s", e.Value, tc.want)
			}
			if diff := cmp.Diff(tc.params, params); diff != "" {
				t.Errorf("params (-want +got):\n%s", diff)
			}
		})
	}
	if _, _, ok := table.Match("api.example.com", "443", "GET", "/mounts//data/1"); !ok {
		t.Error("empty segments are ignored: /mounts//data/1 should match /mounts/{mount}/* as mount=data")
	}
}

func TestNoMatch(t *testing.T) {
	table, _ := NewTable([]Entry[string]{
		{mustPattern(t, "api.example.com:443", "/v1/*", "GET"), "v1"},
	})
	for _, tc := range [][4]string{
		{"api.example.com", "8443", "GET", "/v1/x"},
		{"api.example.com", "443", "POST", "/v1/x"},
		{"api.example.com", "443", "GET", "/v2/x"},
		{"other.example.com", "443", "GET", "/v1/x"},
	} {
		if e, _, ok := table.Match(tc[0], tc[1], tc[2], tc[3]); ok {
			t.Errorf("%v matched %s", tc, e.Value)
		}
	}
	if !table.MatchesHost("api.example.com", "443") || table.MatchesHost("api.example.com", "80") {
		t.Error("MatchesHost ignores the port")
	}
}

func TestConflicts(t *testing.T) {
	for _, tc := range []struct {
		name string
		a, b Pattern
		tie  bool
	}{
		{"identical", mustPattern(t, "", "/v1/*"), mustPattern(t, "", "/v1/*"), true},
		{"crossed params", mustPattern(t, "", "/v1/{a}/x"), mustPattern(t, "", "/v1/x/{b}"), true},
		{"disjoint literals", mustPattern(t, "", "/v1/{a}/x"), mustPattern(t, "", "/v1/{b}/y"), false},
		{"different lengths", mustPattern(t, "", "/v1/{a}"), mustPattern(t, "", "/v1/{a}/{b}"), false},
		{"exact beats prefix", mustPattern(t, "", "/v1/x"), mustPattern(t, "", "/v1/x/*"), false},
		{"disjoint methods", mustPattern(t, "", "/v1", "GET"), mustPattern(t, "", "/v1", "POST"), false},
		{"overlapping methods", mustPattern(t, "", "/v1", "GET"), mustPattern(t, "", "/v1", "GET", "PUT"), true},
		{"other hosts", mustPattern(t, "a.example.com", "/v1"), mustPattern(t, "b.example.com", "/v1"), false},
		{"nested wildcards differ", mustPattern(t, "*.example.com", "/v1"), mustPattern(t, "*.a.example.com", "/v1"), false},
		{"other ports", mustPattern(t, "a.example.com:1", "/v1"), mustPattern(t, "a.example.com:2", "/v1"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, conflicts := NewTable([]Entry[int]{{tc.a, 0}, {tc.b, 1}})
			if got := len(conflicts) > 0; got != tc.tie {
				t.Errorf("conflict = %v, want %v", got, tc.tie)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, s := range []string{"v1", "/a/*/b", "/a/{}/b", "/a/{1x}", "/a/{x}/{x}", "/a/x*", "/a/{x"} {
		if _, err := ParsePath(s); err == nil {
			t.Errorf("ParsePath(%q) accepted", s)
		}
	}
	for _, s := range []string{"https://a.example.com", "a.*.com", "*", "a.example.com:x", "a.example.com:", "*."} {
		if _, err := ParseHost(s); err == nil {
			t.Errorf("ParseHost(%q) accepted", s)
		}
	}
	if _, err := ParseMethods([]string{"GET", "BAD METHOD"}); err == nil {
		t.Error("ParseMethods accepted a method with a space")
	}
}

// FuzzPath checks that parsing and matching never panic, that a parsed
// template round-trips, and that matching agrees with overlap: a path that
// matches two templates means the templates overlap.
func FuzzPath(f *testing.F) {
	for _, s := range []string{"/v1/*", "/mounts/{mount}/*", "/a/{x}/b", "/openOBD.v1.sessionController/*", "/", "//a//b/"} {
		f.Add(s, "/mounts/m1/data")
	}
	f.Add("/a/{x}/b", "/a/%zz/b")
	f.Fuzz(func(t *testing.T, pattern, path string) {
		p, err := ParsePath(pattern)
		if err != nil {
			return
		}
		q, err := ParsePath(p.String())
		if err != nil || !slices.Equal(p.segs, q.segs) {
			t.Fatalf("round trip of %q: %v", pattern, err)
		}
		params, ok := p.Match(path)
		if !ok {
			return
		}
		if len(params) > p.params {
			t.Fatalf("%d params from a template with %d", len(params), p.params)
		}
		lit, err := ParsePath("/" + path)
		if err == nil && lit.params == 0 && len(lit.segs) > 0 && lit.segs[len(lit.segs)-1].kind != segRest {
			if _, ok := lit.Match(path); ok && !p.overlaps(lit) {
				t.Fatalf("%q matches %q and %q, which do not overlap", path, pattern, lit.raw)
			}
		}
	})
}
