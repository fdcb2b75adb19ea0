package config

import (
	"reflect"
	"slices"
)

// Schema is a JSON Schema (draft 2020-12) of the configuration file, made
// from the same types and by the same rules as DecodeNode reads them: a
// struct field by its yaml tag (",inline" structs flattened), no other
// key, a Duration as a Go duration string, a secret as exactly one of
// value, env and file. injectorKinds gives the type each injector kind's
// block decodes into (the injectors package's); every block also takes
// warm, and each kind that calls an issuer tls_client. Editors check a configuration against it as it is typed
// (yaml-language-server); "authproxy schema" prints it.
func Schema(injectorKinds map[string]reflect.Type) map[string]any {
	s := schemaOf(reflect.TypeFor[File]())
	s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
	s["title"] = "authproxy configuration"
	kinds := slices.Sorted(func(yield func(string) bool) {
		for k := range injectorKinds {
			if !yield(k) {
				return
			}
		}
	})
	var branches []any
	for _, k := range kinds {
		then := schemaOf(injectorKinds[k])
		then["properties"].(map[string]any)["warm"] = map[string]any{"type": "boolean"}
		if k != "static" { // the kinds that call an issuer
			then["properties"].(map[string]any)["tls_client"] = schemaOf(reflect.TypeFor[TLSClientCert]())
		}
		branches = append(branches, map[string]any{
			"if":   map[string]any{"properties": map[string]any{"kind": map[string]any{"const": k}}, "required": []any{"kind"}},
			"then": then,
		})
	}
	s["properties"].(map[string]any)["injectors"] = map[string]any{
		"type": "object",
		"additionalProperties": map[string]any{
			"type":     "object",
			"required": []any{"kind"},
			"properties": map[string]any{
				"kind": map[string]any{"enum": anySlice(kinds)},
			},
			"allOf": branches,
		},
	}
	return s
}

var (
	durationType = reflect.TypeFor[Duration]()
	secretType   = reflect.TypeFor[SecretSource]()
)

func schemaOf(t reflect.Type) map[string]any {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == durationType:
		return map[string]any{"type": "string", "pattern": `^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$|^0$`,
			"description": "a duration such as 10s, 2m or 1h30m"}
	case t == nodeType:
		return map[string]any{}
	}
	switch t.Kind() {
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return map[string]any{"type": "integer"}
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Slice:
		return map[string]any{"type": "array", "items": schemaOf(t.Elem())}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": schemaOf(t.Elem())}
	case reflect.Struct:
		props := map[string]any{}
		fields := structFields(t)
		for name, idx := range fields {
			props[name] = schemaOf(t.FieldByIndex(idx).Type)
		}
		s := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
		if holdsSecret(t) && hasSecretFields(fields) {
			s["oneOf"] = []any{
				map[string]any{"required": []any{"value"}},
				map[string]any{"required": []any{"env"}},
				map[string]any{"required": []any{"file"}},
			}
			s["description"] = "a secret: exactly one of value, env (an environment variable's name) and file (a file's path)"
		}
		return s
	}
	return map[string]any{}
}

// hasSecretFields: the struct has a secret's own keys (SecretSource, or a
// struct that inlines one), not only fields that are secrets.
func hasSecretFields(fields map[string][]int) bool {
	for _, k := range []string{"value", "env", "file"} {
		if _, ok := fields[k]; !ok {
			return false
		}
	}
	return true
}

func anySlice(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}
