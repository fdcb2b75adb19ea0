package injectors

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/authproxy/authproxy/config"
)

// SASConfig configures a shared access signature, ODIL's credential for
// creating sessions. ODIL publishes no generator spec; three known forms
// are offered:
//
//	servicebus        SharedAccessSignature sr=<enc(uri)>&sig=<enc(b64(HMAC-SHA256(key, enc(uri)+"\n"+se)))>&se=<unix>&skn=<key name>
//	                  (Azure Service Bus: the key used as its raw bytes; enc is form URL-encoding)
//	servicebus-b64key the same with the key base64-decoded first (Azure IoT Hub)
//	apim              SharedAccessSignature uid=<key name>&ex=<expiry>&sn=<b64(HMAC-SHA512(key, uid+"\n"+ex))>
//	                  (Azure API Management; ex as 2006-01-02T15:04:05.0000000Z)
type SASConfig struct {
	Format      string              `yaml:"format"`       // default servicebus
	ResourceURI string              `yaml:"resource_uri"` // what is signed (servicebus forms); default the injector's base URL
	KeyName     config.SecretSource `yaml:"key_name"`
	Key         config.SecretSource `yaml:"key"`
	Lifetime    config.Duration     `yaml:"lifetime"` // default 1h
}

type sasSigner struct {
	format   string
	uri      string
	keyName  string
	key      []byte
	lifetime time.Duration
}

// newSASSigner validates cfg; errors are relative to the sas block.
func newSASSigner(cfg SASConfig, defaultURI string, secret func(config.SecretSource) (config.Secret, error)) (sasSigner, []error) {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, config.Errorf(path, format, args...)) }
	s := sasSigner{format: cfg.Format, uri: cfg.ResourceURI, lifetime: cfg.Lifetime.D(time.Hour)}
	if s.format == "" {
		s.format = "servicebus"
	}
	if s.uri == "" {
		s.uri = defaultURI
	}
	switch s.format {
	case "servicebus", "servicebus-b64key", "apim":
	default:
		add("format", "unknown SAS format %q (known: servicebus, servicebus-b64key, apim)", s.format)
	}
	if cfg.KeyName.IsSet() || s.format != "servicebus-b64key" { // optional for IoT Hub style
		name, err := secret(cfg.KeyName)
		if err != nil {
			add("key_name", "%v", err)
		}
		s.keyName = name.Reveal()
	}
	key, err := secret(cfg.Key)
	if err != nil {
		add("key", "%v", err)
	} else if s.format == "servicebus-b64key" {
		if s.key, err = base64.StdEncoding.DecodeString(key.Reveal()); err != nil {
			add("key", "the servicebus-b64key format needs a base64 key")
		}
	} else {
		s.key = []byte(key.Reveal())
	}
	return s, errs
}

// token returns a signature valid from now for the configured lifetime.
func (s sasSigner) token(now time.Time) string {
	expiry := now.Add(s.lifetime)
	switch s.format {
	case "apim":
		ex := expiry.UTC().Format("2006-01-02T15:04:05.0000000Z")
		mac := hmac.New(sha512.New, s.key)
		mac.Write([]byte(s.keyName + "\n" + ex))
		return fmt.Sprintf("SharedAccessSignature uid=%s&ex=%s&sn=%s", s.keyName, ex, base64.StdEncoding.EncodeToString(mac.Sum(nil)))
	default:
		sr := url.QueryEscape(s.uri)
		se := strconv.FormatInt(expiry.Unix(), 10)
		mac := hmac.New(sha256.New, s.key)
		mac.Write([]byte(sr + "\n" + se))
		sig := url.QueryEscape(base64.StdEncoding.EncodeToString(mac.Sum(nil)))
		tok := "SharedAccessSignature sr=" + sr + "&sig=" + sig + "&se=" + se
		if s.keyName != "" {
			tok += "&skn=" + url.QueryEscape(s.keyName)
		}
		return tok
	}
}

// parts are the pieces of a token worth scrubbing from an issuer's echo:
// the token and its signature, escaped and not.
func (s sasSigner) parts(tok string) []string {
	out := []string{tok}
	for _, kv := range strings.Split(strings.TrimPrefix(tok, "SharedAccessSignature "), "&") {
		if k, v, ok := strings.Cut(kv, "="); ok && (k == "sig" || k == "sn") {
			out = append(out, v)
			if u, err := url.QueryUnescape(v); err == nil {
				out = append(out, u)
			}
		}
	}
	return out
}
