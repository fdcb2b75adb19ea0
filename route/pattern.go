// Package route matches requests to routes by host, path and method.
//
// Patterns are parsed once at start-up; matching a request allocates only
// when the matched path template captures values. A Table sorts patterns
// from most to least specific, so the first match is the most specific, and
// refuses two patterns that overlap with equal specificity.
package route

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
)

// Host is a parsed host pattern: "" (any host), "api.example.com" (exact),
// "*.example.com" (any subdomain, at any depth, not the apex), each with an
// optional ":port". Hosts compare case-insensitively.
type Host struct {
	name     string // lower case; for wildcards, the suffix with its leading dot
	wildcard bool
	port     string // "" = any port
}

// ParseHost parses a host pattern.
func ParseHost(s string) (Host, error) {
	if s == "" {
		return Host{}, nil
	}
	if strings.Contains(s, "/") || strings.Contains(s, "://") {
		return Host{}, fmt.Errorf("host pattern %q must be a host name, not a URL", s)
	}
	name, port := s, ""
	if h, p, err := net.SplitHostPort(s); err == nil {
		name, port = h, p
		if port == "" || strings.Trim(port, "0123456789") != "" {
			return Host{}, fmt.Errorf("host pattern %q has an invalid port", s)
		}
	}
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	h := Host{name: name, port: port}
	if strings.HasPrefix(name, "*.") {
		h.wildcard = true
		h.name = name[1:]
		name = name[2:]
	}
	if name == "" || strings.ContainsAny(name, "*[] ") {
		return Host{}, fmt.Errorf("host pattern %q: use an exact name or a leading \"*.\" wildcard", s)
	}
	return h, nil
}

// String returns the pattern as it would be written in the config.
func (h Host) String() string {
	s := h.name
	if h.wildcard {
		s = "*" + s
	}
	if s == "" {
		s = "*"
	}
	if h.port != "" {
		s += ":" + h.port
	}
	return s
}

// Port is the pattern's port, "" for any.
func (h Host) Port() string { return h.port }

// IsAny reports whether the pattern matches every host.
func (h Host) IsAny() bool { return h.name == "" }

// Match reports whether hostname (lower case, without port) and port match.
func (h Host) Match(hostname, port string) bool {
	if h.port != "" && h.port != port {
		return false
	}
	switch {
	case h.name == "":
		return true
	case h.wildcard:
		return len(hostname) > len(h.name) && strings.HasSuffix(hostname, h.name)
	default:
		return hostname == h.name
	}
}

func (h Host) overlaps(o Host) bool {
	if h.port != "" && o.port != "" && h.port != o.port {
		return false
	}
	switch {
	case h.name == "" || o.name == "":
		return true
	case !h.wildcard && !o.wildcard:
		return h.name == o.name
	case h.wildcard && o.wildcard:
		return strings.HasSuffix(h.name, o.name) || strings.HasSuffix(o.name, h.name)
	case h.wildcard:
		return len(o.name) > len(h.name) && strings.HasSuffix(o.name, h.name)
	default:
		return o.overlaps(h)
	}
}

// specificity ranks exact > wildcard (longer suffix first) > any; a port
// makes a pattern more specific than the same pattern without one.
func (h Host) specificity() [3]int {
	kind := 0
	switch {
	case h.name == "":
	case h.wildcard:
		kind = 1
	default:
		kind = 2
	}
	port := 0
	if h.port != "" {
		port = 1
	}
	return [3]int{kind, len(h.name), port}
}

// segKind is what one path segment of a template matches.
type segKind uint8

const (
	segLiteral segKind = iota // exactly this text
	segParam                  // {name}: any one non-empty segment
	segRest                   // *: zero or more remaining segments (last only)
)

type segment struct {
	kind segKind
	text string // literal text, or parameter name
}

// Path is a parsed path template: literal segments, `{name}` segments that
// capture one segment, and an optional final `*` that matches the rest.
// Empty segments (from "//" or a trailing "/") are ignored on both sides, so
// "/a//b/" matches "/a/b"; the forwarded path is never changed.
type Path struct {
	raw    string
	segs   []segment
	params int
}

// ParsePath parses a path template.
func ParsePath(s string) (Path, error) {
	if s == "" {
		s = "/*"
	}
	if !strings.HasPrefix(s, "/") {
		return Path{}, fmt.Errorf("path pattern %q must start with /", s)
	}
	p := Path{raw: s}
	names := map[string]bool{}
	parts := splitPath(s)
	for i, part := range parts {
		switch {
		case part == "*":
			if i != len(parts)-1 {
				return Path{}, fmt.Errorf("path pattern %q: * is only allowed as the last segment", s)
			}
			p.segs = append(p.segs, segment{kind: segRest})
		case strings.HasPrefix(part, "{") && strings.HasSuffix(part, "}"):
			name := part[1 : len(part)-1]
			if !isIdent(name) {
				return Path{}, fmt.Errorf("path pattern %q: parameter name %q must be a letter followed by letters, digits or _", s, name)
			}
			if names[name] {
				return Path{}, fmt.Errorf("path pattern %q: parameter {%s} appears twice", s, name)
			}
			names[name] = true
			p.segs = append(p.segs, segment{kind: segParam, text: name})
			p.params++
		case strings.ContainsAny(part, "{}*"):
			return Path{}, fmt.Errorf("path pattern %q: segment %q must be literal, {name} or a final *", s, part)
		default:
			p.segs = append(p.segs, segment{kind: segLiteral, text: part})
		}
	}
	return p, nil
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		letter := r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
		if !letter && (i == 0 || r < '0' || r > '9') {
			return false
		}
	}
	return true
}

// splitPath splits on "/" and drops empty segments.
func splitPath(s string) []string {
	var out []string
	for part := range strings.SplitSeq(s, "/") {
		if part != "" {
			out = append(out, part)
		}
	}
	return out
}

// String returns the template as written.
func (p Path) String() string { return p.raw }

// Params lists the names the template captures.
func (p Path) Params() []string {
	var out []string
	for _, s := range p.segs {
		if s.kind == segParam {
			out = append(out, s.text)
		}
	}
	return out
}

// Params is the list of values a path template captured, in template order.
// The zero value is empty. It is not safe for concurrent modification.
type Params []Param

// Param is one captured path value (unescaped).
type Param struct{ Name, Value string }

// Get returns the value captured for name, and whether there was one.
func (ps Params) Get(name string) (string, bool) {
	for _, p := range ps {
		if p.Name == name {
			return p.Value, true
		}
	}
	return "", false
}

// Match matches an escaped request path (url.URL.EscapedPath) against the
// template. It returns the captured values, unescaped.
func (p Path) Match(escapedPath string) (Params, bool) {
	rest := escapedPath
	var params Params
	for i, seg := range p.segs {
		if seg.kind == segRest {
			return params, true
		}
		var part string
		part, rest = nextSegment(rest)
		if part == "" {
			return nil, false
		}
		switch seg.kind {
		case segLiteral:
			if part != seg.text {
				return nil, false
			}
		case segParam:
			v, err := url.PathUnescape(part)
			if err != nil {
				return nil, false
			}
			if params == nil {
				params = make(Params, 0, p.params)
			}
			params = append(params, Param{Name: p.segs[i].text, Value: v})
		}
	}
	part, _ := nextSegment(rest)
	return params, part == ""
}

// nextSegment returns the next non-empty segment of path and what follows it.
func nextSegment(path string) (seg, rest string) {
	for len(path) > 0 && path[0] == '/' {
		path = path[1:]
	}
	if i := strings.IndexByte(path, '/'); i >= 0 {
		return path[:i], path[i:]
	}
	return path, ""
}

func (p Path) overlaps(o Path) bool {
	a, b := p.segs, o.segs
	for i := 0; ; i++ {
		switch {
		case i < len(a) && a[i].kind == segRest, i < len(b) && b[i].kind == segRest:
			return true
		case i == len(a) || i == len(b):
			return i == len(a) && i == len(b)
		case a[i].kind == segLiteral && b[i].kind == segLiteral && a[i].text != b[i].text:
			return false
		}
	}
}

// specificity ranks more literal segments first, then more parameters, then
// an exact template over one ending in *.
func (p Path) specificity() [3]int {
	literals, exact := 0, 1
	for _, s := range p.segs {
		switch s.kind {
		case segLiteral:
			literals++
		case segRest:
			exact = 0
		}
	}
	return [3]int{literals, p.params, exact}
}

// Methods is a set of upper-case HTTP methods; empty means any method.
type Methods []string

// ParseMethods validates and upper-cases methods.
func ParseMethods(ms []string) (Methods, error) {
	var out Methods
	var errs []error
	for _, m := range ms {
		u := strings.ToUpper(strings.TrimSpace(m))
		if u == "" || strings.ContainsAny(u, " \t/:") {
			errs = append(errs, fmt.Errorf("invalid method %q", m))
			continue
		}
		out = append(out, u)
	}
	return out, errors.Join(errs...)
}

// Match reports whether method is in the set.
func (ms Methods) Match(method string) bool {
	if len(ms) == 0 {
		return true
	}
	for _, m := range ms {
		if m == method {
			return true
		}
	}
	return false
}

func (ms Methods) overlaps(o Methods) bool {
	if len(ms) == 0 || len(o) == 0 {
		return true
	}
	for _, m := range ms {
		if o.Match(m) {
			return true
		}
	}
	return false
}
