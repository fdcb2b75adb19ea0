package config

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// Redacted is what every printed form of a Secret shows.
const Redacted = "REDACTED"

// Secret holds a credential. Every way of printing it (fmt's %v, %s, %+v,
// %#v, slog, encoding/json) shows REDACTED; only Reveal returns the value.
// The zero Secret is empty. Secrets are immutable and safe for concurrent use.
type Secret struct{ v string }

// NewSecret wraps a value read from somewhere other than the config.
func NewSecret(v string) Secret { return Secret{v: v} }

// Reveal returns the secret's value, for the one place that must send it.
func (s Secret) Reveal() string { return s.v }

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.v == "" }

func (Secret) String() string                { return Redacted }
func (Secret) GoString() string              { return Redacted }
func (Secret) LogValue() slog.Value          { return slog.StringValue(Redacted) }
func (Secret) MarshalJSON() ([]byte, error)  { return []byte(`"` + Redacted + `"`), nil }
func (Secret) MarshalText() ([]byte, error)  { return []byte(Redacted), nil }
func (Secret) Format(f fmt.State, verb rune) { _, _ = f.Write([]byte(Redacted)) }

// SecretSource says where a secret comes from: exactly one of Value (inline,
// for development), Env (an environment variable) or File (a file whose
// content, less one trailing newline, is the secret — as Kubernetes mounts
// secrets). It is read once, when the proxy starts.
type SecretSource struct {
	Value *string `yaml:"value"`
	Env   string  `yaml:"env"`
	File  string  `yaml:"file"`
}

// IsSet reports whether any source was given.
func (s SecretSource) IsSet() bool { return s.Value != nil || s.Env != "" || s.File != "" }

// Resolve reads the secret. Errors name the source (variable or file name),
// never the value. lookupEnv is os.LookupEnv when nil.
func (s SecretSource) Resolve(lookupEnv func(string) (string, bool)) (Secret, error) {
	if err := s.Check(); err != nil {
		return Secret{}, err
	}
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	var v string
	switch {
	case s.Value != nil:
		v = *s.Value
	case s.Env != "":
		var ok bool
		if v, ok = lookupEnv(s.Env); !ok {
			return Secret{}, fmt.Errorf("environment variable %s is not set", s.Env)
		}
		if v == "" {
			return Secret{}, fmt.Errorf("environment variable %s is empty", s.Env)
		}
	default:
		b, err := os.ReadFile(s.File)
		if err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				return Secret{}, fmt.Errorf("reading secret file %s: %v", s.File, pe.Err)
			}
			return Secret{}, fmt.Errorf("reading secret file %s: %v", s.File, err)
		}
		v = strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
		if v == "" {
			return Secret{}, fmt.Errorf("secret file %s is empty", s.File)
		}
	}
	return Secret{v: v}, nil
}

// Check says whether exactly one source is given, reading nothing.
func (s SecretSource) Check() error {
	var given []string
	if s.Value != nil {
		given = append(given, "value")
	}
	if s.Env != "" {
		given = append(given, "env")
	}
	if s.File != "" {
		given = append(given, "file")
	}
	switch {
	case len(given) == 0:
		return errors.New("a secret needs exactly one of value, env, file (got none)")
	case len(given) > 1:
		return fmt.Errorf("a secret needs exactly one of value, env, file (got %s)", strings.Join(given, " and "))
	}
	return nil
}

// RedactURL is s as a message may show it: whatever stands between the
// scheme's "//" (or the start) and the last "@" — a URL's user info, a
// password in it — is replaced by REDACTED, whether or not s parses. A
// path that holds an "@" loses more than it needs to, never less.
func RedactURL(s string) string {
	start := 0
	if i := strings.Index(s, "//"); i >= 0 {
		start = i + 2
	}
	at := strings.LastIndex(s[start:], "@")
	if at < 0 {
		return s
	}
	return s[:start] + Redacted + s[start+at:]
}

// HasUserInfo reports whether s, as a URL, carries user info (or an "@"
// where a parser could take it for one).
func HasUserInfo(s string) bool { return RedactURL(s) != s }
