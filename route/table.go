package route

import (
	"cmp"
	"slices"
	"strings"
)

// Pattern is what a route matches: host, path and methods.
type Pattern struct {
	Host    Host
	Path    Path
	Methods Methods
	// EncodedSlash lets {name} values hold encoded slashes (see
	// Path.CheckSafe); it does not change what matches.
	EncodedSlash bool
}

// String describes the pattern for error messages.
func (p Pattern) String() string {
	s := p.Host.String() + p.Path.String()
	if len(p.Methods) > 0 {
		s = strings.Join(p.Methods, ",") + " " + s
	}
	return s
}

// Overlaps reports whether some request could match both patterns.
func (p Pattern) Overlaps(o Pattern) bool {
	return p.Host.overlaps(o.Host) && p.Path.overlaps(o.Path) && p.Methods.overlaps(o.Methods)
}

// compareSpecificity orders more specific patterns first: host first, then
// path, then methods.
func compareSpecificity(a, b Pattern) int {
	ha, hb := a.Host.specificity(), b.Host.specificity()
	if c := slices.Compare(hb[:], ha[:]); c != 0 {
		return c
	}
	pa, pb := a.Path.specificity(), b.Path.specificity()
	if c := slices.Compare(pb[:], pa[:]); c != 0 {
		return c
	}
	return cmp.Compare(min(len(b.Methods), 1), min(len(a.Methods), 1))
}

// Entry is one route in a Table.
type Entry[T any] struct {
	Pattern Pattern
	Value   T
}

// Conflict names two entries (by index) that overlap with equal specificity:
// no request could be given to one rather than the other on principle.
type Conflict struct{ A, B int }

// Table finds the most specific entry matching a request. It is immutable
// after NewTable and safe for concurrent use.
type Table[T any] struct {
	byHost map[string][]*Entry[T] // exact host -> its entries + all non-exact ones, sorted
	other  []*Entry[T]            // wildcard and any-host entries, sorted
}

// NewTable builds a table and reports every pair of conflicting entries.
func NewTable[T any](entries []Entry[T]) (*Table[T], []Conflict) {
	var conflicts []Conflict
	for i := range entries {
		for j := i + 1; j < len(entries); j++ {
			a, b := entries[i].Pattern, entries[j].Pattern
			if compareSpecificity(a, b) == 0 && a.Overlaps(b) {
				conflicts = append(conflicts, Conflict{A: i, B: j})
			}
		}
	}
	t := &Table[T]{byHost: map[string][]*Entry[T]{}}
	ptrs := make([]*Entry[T], len(entries))
	for i := range entries {
		ptrs[i] = &entries[i]
	}
	sortEntries := func(es []*Entry[T]) {
		slices.SortStableFunc(es, func(a, b *Entry[T]) int { return compareSpecificity(a.Pattern, b.Pattern) })
	}
	for _, e := range ptrs {
		if h := e.Pattern.Host; h.name != "" && !h.wildcard {
			t.byHost[h.name] = append(t.byHost[h.name], e)
		} else {
			t.other = append(t.other, e)
		}
	}
	sortEntries(t.other)
	for name, es := range t.byHost {
		es = append(es, t.other...)
		sortEntries(es)
		t.byHost[name] = es
	}
	return t, conflicts
}

// Match returns the most specific entry for a request. hostname must be
// lower case without a port; port is "" when unknown; escapedPath is
// url.URL.EscapedPath().
func (t *Table[T]) Match(hostname, port, method, escapedPath string) (*Entry[T], Params, bool) {
	es, ok := t.byHost[hostname]
	if !ok {
		es = t.other
	}
	for _, e := range es {
		if !e.Pattern.Host.Match(hostname, port) || !e.Pattern.Methods.Match(method) {
			continue
		}
		if params, ok := e.Pattern.Path.Match(escapedPath); ok {
			return e, params, true
		}
	}
	return nil, nil, false
}

// MatchesHost reports whether any entry could match a request to hostname
// and port, whatever its path: the forward proxy intercepts exactly those
// CONNECT targets.
func (t *Table[T]) MatchesHost(hostname, port string) bool {
	es, ok := t.byHost[hostname]
	if !ok {
		es = t.other
	}
	for _, e := range es {
		if e.Pattern.Host.Match(hostname, port) {
			return true
		}
	}
	return false
}
