package injectors

import (
	"fmt"
	"net/http"
	"strings"
)

// template is a string with values taken from the request:
//
//	{name}         the path value the route's template captured as {name}
//	{header:Name}  the request header Name
//	{query:name}   the query parameter name
//
// such as "mount:{mount}". A value must be non-empty and made only of
// safeValueChar: visible ASCII other than `"` and `\`. A space (or any
// Unicode white space) would add a scope; a quote or backslash could break
// out of a JSON or header value.
type template struct {
	raw   string
	parts []tpart
	refs  int
}

type tpart struct {
	lit  string
	kind string // "", "path", "header", "query"
	name string
}

func parseTemplate(s string) (template, error) {
	t := template{raw: s}
	rest := s
	for rest != "" {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			if strings.Contains(rest, "}") {
				return template{}, fmt.Errorf("template %q has an unmatched }", s)
			}
			t.parts = append(t.parts, tpart{lit: rest})
			break
		}
		if i > 0 {
			if strings.Contains(rest[:i], "}") {
				return template{}, fmt.Errorf("template %q has an unmatched }", s)
			}
			t.parts = append(t.parts, tpart{lit: rest[:i]})
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return template{}, fmt.Errorf("template %q has an unclosed {", s)
		}
		ref := rest[i+1 : i+j]
		p := tpart{kind: "path", name: ref}
		if k, v, ok := strings.Cut(ref, ":"); ok {
			p = tpart{kind: k, name: v}
			if k == "header" {
				p.name = http.CanonicalHeaderKey(v)
			}
		}
		switch {
		case p.kind != "path" && p.kind != "header" && p.kind != "query":
			return template{}, fmt.Errorf("template %q: {%s} must be {name}, {header:Name} or {query:name}", s, ref)
		case p.name == "" || strings.ContainsAny(p.name, "{ \t"):
			return template{}, fmt.Errorf("template %q: {%s} needs a name", s, ref)
		}
		t.parts = append(t.parts, p)
		t.refs++
		rest = rest[i+j+1:]
	}
	return t, nil
}

// static reports whether the template reads nothing from the request.
func (t template) static() bool { return t.refs == 0 }

// pathParams lists the path values the template reads.
func (t template) pathParams() []string {
	var out []string
	for _, p := range t.parts {
		if p.kind == "path" {
			out = append(out, p.name)
		}
	}
	return out
}

// render fills the template from req. A missing or unsafe value is an
// ErrBadRequest naming the reference, never the value.
func (t template) render(req *Request) (string, error) {
	if t.refs == 0 {
		return t.raw, nil
	}
	var b strings.Builder
	for _, p := range t.parts {
		var v string
		var ok bool
		switch p.kind {
		case "":
			b.WriteString(p.lit)
			continue
		case "path":
			v, ok = req.Params.Get(p.name)
		case "header":
			v = req.Header.Get(p.name)
			ok = v != ""
		case "query":
			v = req.URL.Query().Get(p.name)
			ok = v != ""
		}
		if !ok || v == "" {
			return "", fmt.Errorf("%w: %s needs %s", ErrBadRequest, t.raw, p.describe())
		}
		if strings.ContainsFunc(v, func(r rune) bool { return !safeValueChar(r) }) {
			return "", fmt.Errorf("%w: the value of %s may hold only visible ASCII characters other than quote and backslash", ErrBadRequest, p.describe())
		}
		b.WriteString(v)
	}
	return b.String(), nil
}

func (p tpart) describe() string {
	switch p.kind {
	case "header":
		return "header " + p.name
	case "query":
		return "query parameter " + p.name
	default:
		return "path value {" + p.name + "}"
	}
}

// safeValueChar is the set a template value is made of: visible ASCII
// (0x21-0x7e) without `"` and `\`. Everything else, Unicode white space
// (U+00A0, U+2028, U+3000) included, is refused.
func safeValueChar(r rune) bool {
	return r > ' ' && r < 0x7f && r != '"' && r != '\\'
}
