package config

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Error is one configuration problem, located by its YAML path
// (for example `routes[2].match.path`).
type Error struct {
	Path string
	Msg  string
}

func (e *Error) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// Errorf returns an *Error at path.
func Errorf(path, format string, args ...any) error {
	return &Error{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// Join appends keys to a YAML path: Join("a", "b", "c") = "a.b.c",
// Join("", "b") = "b". Keys that are not plain words are quoted:
// Join("a", "x.y") = `a["x.y"]`.
func Join(path string, keys ...string) string {
	for _, key := range keys {
		switch {
		case !plainKey.MatchString(key):
			path = fmt.Sprintf("%s[%q]", path, key)
		case path == "":
			path = key
		default:
			path = path + "." + key
		}
	}
	return path
}

// Index returns path[i].
func Index(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

var plainKey = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Prefix re-roots every *Error inside err (including joined errors) under
// prefix, so a component can report paths relative to its own block.
// Errors that are not *Error are attached to prefix itself.
func Prefix(prefix string, err error) error {
	if err == nil {
		return nil
	}
	var out []error
	for _, e := range Flatten(err) {
		var ce *Error
		if errors.As(e, &ce) {
			p := prefix
			switch {
			case ce.Path == "":
			case strings.HasPrefix(ce.Path, "["):
				p += ce.Path
			case prefix == "":
				p = ce.Path
			default:
				p = prefix + "." + ce.Path
			}
			out = append(out, &Error{Path: p, Msg: ce.Msg})
			continue
		}
		out = append(out, &Error{Path: prefix, Msg: e.Error()})
	}
	return errors.Join(out...)
}

// FirstPerPath joins errs, keeping only the first problem reported at each
// YAML path (a later one is usually a consequence of the first) and
// dropping repeated messages.
func FirstPerPath(errs ...error) error {
	var out []error
	seenPath := map[string]bool{}
	seenMsg := map[string]bool{}
	for _, e := range errs {
		for _, leaf := range Flatten(e) {
			var ce *Error
			if errors.As(leaf, &ce) && ce.Path != "" {
				if seenPath[ce.Path] {
					continue
				}
				seenPath[ce.Path] = true
			}
			if msg := leaf.Error(); !seenMsg[msg] {
				seenMsg[msg] = true
				out = append(out, leaf)
			}
		}
	}
	return errors.Join(out...)
}

// Flatten returns the leaves of a tree of errors.Join'ed errors.
func Flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, Flatten(e)...)
		}
		return out
	}
	return []error{err}
}

var (
	nodeType        = reflect.TypeFor[yaml.Node]()
	unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
)

// DecodeNode decodes n into v, which must be a non-nil pointer. Unlike
// yaml.v3's own decoding it rejects unknown keys and duplicate keys, and it
// reports every problem at once, each naming its YAML path under path.
//
// Struct fields are matched by their `yaml` tag (`,inline` structs are
// flattened); fields of type yaml.Node receive the raw node, so a block can
// be decoded later by the component that understands it.
func DecodeNode(n *yaml.Node, path string, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		panic("config.DecodeNode: v must be a non-nil pointer")
	}
	var errs []error
	decodeValue(n, path, rv.Elem(), false, &errs)
	return errors.Join(errs...)
}

// decodeValue decodes n into v. secret is set inside a secret's block,
// where no message quotes a value the config holds.
func decodeValue(n *yaml.Node, path string, v reflect.Value, secret bool, errs *[]error) {
	add := func(format string, args ...any) { *errs = append(*errs, Errorf(path, format, args...)) }
	isSecret := holdsSecret(v.Type())
	secret = secret || isSecret
	for n.Kind == yaml.DocumentNode || n.Kind == yaml.AliasNode {
		if n.Kind == yaml.DocumentNode {
			if len(n.Content) == 0 {
				return
			}
			n = n.Content[0]
		} else {
			n = n.Alias
		}
	}
	if v.Type() == nodeType {
		v.Set(reflect.ValueOf(*n))
		return
	}
	if v.CanAddr() && v.Addr().Type().Implements(unmarshalerType) {
		if err := n.Decode(v.Addr().Interface()); err != nil {
			add("%s", cleanYAMLError(err))
		}
		return
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // an explicit null leaves the zero value
	}
	switch v.Kind() {
	case reflect.Pointer:
		elem := reflect.New(v.Type().Elem())
		decodeValue(n, path, elem.Elem(), secret, errs)
		v.Set(elem)
	case reflect.Struct:
		fields := structFields(v.Type())
		if n.Kind != yaml.MappingNode {
			if isSecret {
				// The most common first mistake: the secret itself where
				// its source belongs. It must not be shown.
				add("a secret is written as {value: ...}, {env: NAME} or {file: PATH} (keys: %s), not as %s; the value given is not shown", strings.Join(sortedKeys(fields), ", "), describeHidden(n))
				return
			}
			add("expected a mapping with keys %s, got %s", strings.Join(sortedKeys(fields), ", "), describe(n))
			return
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			kpath := Join(path, key)
			if seen[key] {
				*errs = append(*errs, Errorf(kpath, "duplicate key"))
				continue
			}
			seen[key] = true
			idx, ok := fields[key]
			if !ok {
				known := sortedKeys(fields)
				if near := Suggest(key, known); near != "" {
					*errs = append(*errs, Errorf(kpath, "unknown key: did you mean %s? (known: %s)", near, strings.Join(known, ", ")))
				} else {
					*errs = append(*errs, Errorf(kpath, "unknown key (known: %s)", strings.Join(known, ", ")))
				}
				continue
			}
			decodeValue(n.Content[i+1], kpath, v.FieldByIndex(idx), secret, errs)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			add("expected a list, got %s", describe(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			decodeValue(c, Index(path, i), s.Index(i), secret, errs)
		}
		v.Set(s)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			add("expected a mapping, got %s", describe(n))
			return
		}
		if v.Type().Key().Kind() != reflect.String {
			panic("config.DecodeNode: only string-keyed maps are supported")
		}
		m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			kpath := Join(path, key)
			if m.MapIndex(reflect.ValueOf(key).Convert(v.Type().Key())).IsValid() {
				*errs = append(*errs, Errorf(kpath, "duplicate key"))
				continue
			}
			elem := reflect.New(v.Type().Elem()).Elem()
			decodeValue(n.Content[i+1], kpath, elem, secret, errs)
			m.SetMapIndex(reflect.ValueOf(key).Convert(v.Type().Key()), elem)
		}
		v.Set(m)
	default:
		if n.Kind != yaml.ScalarNode {
			add("expected %s, got %s", kindName(v.Kind()), describeHidden(n))
			return
		}
		if err := n.Decode(v.Addr().Interface()); err != nil {
			if secret {
				add("expected %s, got %s (not shown)", kindName(v.Kind()), describeHidden(n))
				return
			}
			add("expected %s, got %q", kindName(v.Kind()), n.Value)
		}
	}
}

// structFields maps yaml keys to field index paths, flattening inline structs.
func structFields(t reflect.Type) map[string][]int {
	out := map[string][]int{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if slices.Contains(strings.Split(opts, ","), "inline") {
			for k, idx := range structFields(f.Type) {
				out[k] = append([]int{i}, idx...)
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = []int{i}
	}
	return out
}

func sortedKeys(m map[string][]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// describeHidden names n's kind without its value.
func describeHidden(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return "a plain value"
	}
}

var secretSourceType = reflect.TypeFor[SecretSource]()

// holdsSecret reports whether t is a SecretSource or a struct with one
// inline (a static header: a secret and its prefix).
func holdsSecret(t reflect.Type) bool {
	if t == secretSourceType {
		return true
	}
	if t.Kind() != reflect.Struct {
		return false
	}
	for i := 0; i < t.NumField(); i++ {
		if f := t.Field(i); f.Type == secretSourceType && strings.Contains(f.Tag.Get("yaml"), "inline") {
			return true
		}
	}
	return false
}

// describe names n's kind, and quotes a plain value.
func describe(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode {
		return fmt.Sprintf("%q", n.Value)
	}
	return describeHidden(n)
}

func kindName(k reflect.Kind) string {
	switch k {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	default:
		return "a string"
	}
}

// cleanYAMLError strips yaml.v3's "yaml: unmarshal errors:\n  line N:" framing.
func cleanYAMLError(err error) string {
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg := te.Errors[0]
		if _, after, ok := strings.Cut(msg, ": "); ok && strings.HasPrefix(msg, "line ") {
			msg = after
		}
		return msg
	}
	return err.Error()
}
