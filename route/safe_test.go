package route

import (
	"errors"
	"strings"
	"testing"
)

// Spellings of a way out of /api/ that a path-normalising upstream
// resolves, and that must never get the credential of a route /api/*.
var unsafePaths = []struct {
	path string
	why  error
}{
	{"/api/../admin/x", ErrDotSegment},
	{"/api/./x", ErrDotSegment},
	{"/api/x/..", ErrDotSegment},
	{"/api//../admin", ErrDotSegment},
	{"/api/%2e%2e/admin", ErrDotSegment},
	{"/api/%2E%2E/admin", ErrDotSegment},
	{"/api/.%2e/admin", ErrDotSegment},
	{"/api/%2e./admin", ErrDotSegment},
	{"/api/%2e/admin", ErrDotSegment},
	{"/api/..;/admin", ErrDotSegment},
	{"/api/..;jsessionid=1/admin", ErrDotSegment},
	{"/api/%2e%2e;/admin", ErrDotSegment},
	{"/api/%252e%252e/admin", ErrDotSegment},
	{"/api/%25252e%25252e/admin", ErrDotSegment},
	{"/api/..%2Fadmin", ErrEncodedSlash},
	{"/api/..%2fadmin", ErrEncodedSlash},
	{"/api/x%2F..%2F..%2Fadmin", ErrEncodedSlash},
	{"/api/..%5Cadmin", ErrEncodedSlash},
	{"/api/..%5cadmin", ErrEncodedSlash},
	{"/api/%252F", ErrEncodedSlash},
	{`/api/..\admin`, ErrBackslash},
	{"/api/%C0%AE%C0%AE/admin", ErrOverlong},
	{"/api/%c0%ae%c0%ae/admin", ErrOverlong},
	{"/api/%E0%80%AE%E0%80%AE/admin", ErrOverlong},
	{"/api/%F0%80%80%AE/admin", ErrOverlong},
	{"/api/%C0%AF", ErrOverlong},
	{"/api/x%00.json", ErrNUL},
}

func TestCheckSafeRefusesTraversal(t *testing.T) {
	p, err := ParsePath("/api/*")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range unsafePaths {
		if _, ok := p.Match(tc.path); !ok {
			t.Errorf("%s does not match %s, so it says nothing about the check", tc.path, p)
			continue
		}
		if err := p.CheckSafe(tc.path, false); !errors.Is(err, tc.why) {
			t.Errorf("%s: %v, want %v", tc.path, err, tc.why)
		}
	}
	for _, path := range []string{"/api/x", "/api/a.b/c", "/api/...", "/api/.well-known", "/api/x..y", "/api/%41", "/api/caf%C3%A9", "/api/a;b", "/api/%25", "/api/"} {
		if err := p.CheckSafe(path, false); err != nil {
			t.Errorf("%s refused: %v", path, err)
		}
	}
}

func TestCheckSafeEncodedSlashOptIn(t *testing.T) {
	p, _ := ParsePath("/repos/{name}/files")
	for _, tc := range []struct {
		path string
		opt  bool
		want error
	}{
		{"/repos/org%2Frepo/files", false, ErrEncodedSlash},
		{"/repos/org%2Frepo/files", true, nil},
		{"/repos/org%2F..%2Fadmin/files", true, ErrDotSegment},
		{"/repos/..%2Fadmin/files", true, ErrDotSegment},
		{"/repos/org%5Crepo/files", true, ErrEncodedSlash},
		{"/repos/org/files%2Fx", true, ErrEncodedSlash}, // a literal segment: never
		{"/repos/%2e%2e/files", true, ErrDotSegment},
	} {
		if err := p.CheckSafe(tc.path, tc.opt); !errors.Is(err, tc.want) && !(err == nil && tc.want == nil) {
			t.Errorf("%s (opt-in %v): %v, want %v", tc.path, tc.opt, err, tc.want)
		}
	}
}

// removeDotSegments is RFC 3986 §5.2.4, after decoding the percent-encoded
// dots that §6.2.2.2 says are the same as dots.
func removeDotSegments(path string) string {
	in := strings.NewReplacer("%2e", ".", "%2E", ".").Replace(path)
	var out []string
	for _, seg := range strings.Split(in, "/")[1:] {
		switch seg {
		case ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, seg)
		}
	}
	last := in[strings.LastIndexByte(in, '/')+1:]
	s := "/" + strings.Join(out, "/")
	if (last == "." || last == "..") && !strings.HasSuffix(s, "/") {
		s += "/"
	}
	return s
}

// For any path that matches a route R and passes CheckSafe, the path a
// normalising upstream serves (dot segments removed) matches R too: a
// credential never reaches a path its route does not cover.
func FuzzCheckSafe(f *testing.F) {
	for _, tc := range unsafePaths {
		f.Add(tc.path)
	}
	for _, s := range []string{"/api/x", "/api/a/b/c", "/v1/items/42", "/mounts/m1/lock", "/a/./b", "/api/%2e", "/x/../api/y"} {
		f.Add(s)
	}
	var table []Entry[string]
	for _, t := range []string{"/api/*", "/v1/items/{id}", "/mounts/{mount}/lock", "/public/*", "/*"} {
		p, err := ParsePath(t)
		if err != nil {
			f.Fatal(err)
		}
		table = append(table, Entry[string]{Pattern: Pattern{Path: p}, Value: t})
	}
	tbl, _ := NewTable(table)
	f.Fuzz(func(t *testing.T, path string) {
		if !strings.HasPrefix(path, "/") {
			return
		}
		e, _, ok := tbl.Match("", "", "GET", path)
		if !ok || e.Pattern.Path.CheckSafe(path, false) != nil {
			return
		}
		norm := removeDotSegments(path)
		e2, _, ok := tbl.Match("", "", "GET", norm)
		if !ok || e2.Value != e.Value {
			t.Fatalf("%q matches %s and passes the check, but its normal form %q matches %v", path, e.Value, norm, e2)
		}
	})
}
