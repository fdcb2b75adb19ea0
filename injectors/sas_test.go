package injectors

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/authproxy/authproxy/config"
)

// refFormEncode is an independent form URL-encoder (application/x-www-form-
// urlencoded as .NET's HttpUtility and Python's quote_plus do, upper-case
// hex): unreserved characters stay, space becomes +, the rest %XX.
func refFormEncode(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.', c == '~':
			b.WriteByte(c)
		case c == ' ':
			b.WriteByte('+')
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// refServiceBus computes an Azure Service Bus SAS token step by step, as
// Microsoft's documentation describes it.
func refServiceBus(uri, keyName string, key []byte, expiry int64) string {
	stringToSign := refFormEncode(uri) + "\n" + fmt.Sprint(expiry)
	h := hmac.New(sha256.New, key)
	h.Write([]byte(stringToSign))
	sig := base64.StdEncoding.EncodeToString(h.Sum(nil))
	return fmt.Sprintf("SharedAccessSignature sr=%s&sig=%s&se=%d&skn=%s", refFormEncode(uri), refFormEncode(sig), expiry, keyName)
}

func TestSASFormatsMatchReferences(t *testing.T) {
	now := time.Unix(1_795_346_512, 0)
	uri := "https://odil.example.com/api/sys/Company/Azure LDMS?x=1&y=ä"
	v := func(s string) SecretSourceForTest { return SecretSourceForTest(s) }
	for _, tc := range []struct {
		name string
		cfg  SASConfig
		want string
	}{
		{"servicebus: key as raw bytes", SASConfig{ResourceURI: uri, KeyName: v("RootManageSharedAccessKey").src(), Key: v("c2VjcmV0IGtleQ==").src(), Lifetime: 3600e9},
			refServiceBus(uri, "RootManageSharedAccessKey", []byte("c2VjcmV0IGtleQ=="), now.Unix()+3600)},
		{"servicebus-b64key: key decoded first", SASConfig{Format: "servicebus-b64key", ResourceURI: uri, KeyName: v("iothubowner").src(), Key: v("c2VjcmV0IGtleQ==").src(), Lifetime: 3600e9},
			refServiceBus(uri, "iothubowner", []byte("secret key"), now.Unix()+3600)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, errs := newSASSigner(tc.cfg, "", Env{}.secret)
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			if got := s.token(now); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
	t.Run("apim: HMAC-SHA512 over uid and expiry", func(t *testing.T) {
		s, errs := newSASSigner(SASConfig{Format: "apim", KeyName: v("53dd860e1b72ff0467190003").src(), Key: v("apim-key").src(), Lifetime: 600e9}, "https://x", Env{}.secret)
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		ex := "2026-11-22T11:31:52.0000000Z" // now + 10 min (date -u -d @1795347112), in APIM's layout
		h := hmac.New(sha512.New, []byte("apim-key"))
		h.Write([]byte("53dd860e1b72ff0467190003\n" + ex))
		want := "SharedAccessSignature uid=53dd860e1b72ff0467190003&ex=" + ex + "&sn=" + base64.StdEncoding.EncodeToString(h.Sum(nil))
		if got := s.token(now); got != want {
			t.Errorf("got  %s\nwant %s", got, want)
		}
	})
	t.Run("errors", func(t *testing.T) {
		_, errs := newSASSigner(SASConfig{Format: "servicebus-b64key", Key: v("not base64!").src()}, "https://x", Env{}.secret)
		_, errs2 := newSASSigner(SASConfig{Format: "jwt"}, "https://x", Env{}.secret)
		all := fmt.Sprint(append(errs, errs2...))
		for _, want := range []string{"key: the servicebus-b64key format needs a base64 key", `format: unknown SAS format "jwt"`, "key_name: a secret needs exactly one"} {
			if !strings.Contains(all, want) {
				t.Errorf("missing %q in %s", want, all)
			}
		}
		if strings.Contains(all, "not base64!") {
			t.Error("an error shows the key")
		}
	})
}

// SecretSourceForTest builds inline secret sources tersely.
type SecretSourceForTest string

func (s SecretSourceForTest) src() config.SecretSource { return secretValue(string(s)) }
