package injectors

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/sim"
	"github.com/authproxy/authproxy/tokencache"
)

func newLongTermVISS(t *testing.T, keyFile, encoding string) *VISS {
	t.Helper()
	v, err := NewVISS("viss", VISSConfig{AGTSURL: "https://agts.example/agts", VIN: "GEO001", Context: "Independent+OEM+Cloud",
		Proof: secretValue("ABC"), LongTerm: &VISSLongTerm{KeyFile: keyFile, ClaimEncoding: encoding}},
		Env{Cache: tokencache.New(tokencache.Options{}), HTTPClient: http.DefaultClient})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestPoPIsAValidDPoPJWT(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "viss.pem")
	v := newLongTermVISS(t, keyFile, "")
	seen := map[string]bool{}
	var thumb string
	for i := 0; i < 1000; i++ {
		pop, th, err := v.pop("vissv2/agts")
		if err != nil {
			t.Fatal(err)
		}
		thumb = th
		parts := strings.Split(pop, ".")
		hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
		cb, _ := base64.RawURLEncoding.DecodeString(parts[1])
		sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
		var header struct {
			Typ, Alg string
			Jwk      struct{ Kty, Crv, X, Y string }
		}
		var claims map[string]any
		if json.Unmarshal(hb, &header) != nil || json.Unmarshal(cb, &claims) != nil {
			t.Fatalf("PoP %d does not decode", i)
		}
		if header.Typ != "dpop+jwt" || header.Alg != "ES256" || header.Jwk.Kty != "EC" || header.Jwk.Crv != "P-256" {
			t.Fatalf("header %+v", header)
		}
		x, _ := base64.RawURLEncoding.DecodeString(header.Jwk.X)
		y, _ := base64.RawURLEncoding.DecodeString(header.Jwk.Y)
		if len(x) != 32 || len(y) != 32 || len(sig) != 64 {
			t.Fatalf("sizes: x %d y %d sig %d", len(x), len(y), len(sig))
		}
		pub := &ecdsa.PublicKey{Curve: elliptic.P256(), X: new(big.Int).SetBytes(x), Y: new(big.Int).SetBytes(y)}
		digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
		if !ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
			t.Fatalf("PoP %d: the signature does not verify", i)
		}
		if _, isString := claims["iat"].(string); !isString || claims["aud"] != "vissv2/agts" {
			t.Fatalf("claims %v: want aud vissv2/agts and iat as a string", claims)
		}
		jti, _ := claims["jti"].(string)
		if jti == "" || seen[jti] {
			t.Fatalf("PoP %d: jti %q empty or repeated", i, jti)
		}
		seen[jti] = true
		// RFC 7638, computed independently: required members, sorted, no spaces.
		canon, _ := json.Marshal(struct {
			Crv string `json:"crv"`
			Kty string `json:"kty"`
			X   string `json:"x"`
			Y   string `json:"y"`
		}{header.Jwk.Crv, header.Jwk.Kty, header.Jwk.X, header.Jwk.Y})
		sum := sha256.Sum256(canon)
		if th != base64.RawURLEncoding.EncodeToString(sum[:]) {
			t.Fatalf("thumbprint %s differs from RFC 7638's", th)
		}
	}
	st, err := os.Stat(keyFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("generated key file: %v %v", st, err)
	}
	// A second proxy start reuses the stored key.
	again := newLongTermVISS(t, keyFile, "number")
	pop, th, err := again.pop("vissv2/agts")
	if err != nil || th != thumb {
		t.Errorf("the stored key was not reused: %v", err)
	}
	cb, _ := base64.RawURLEncoding.DecodeString(strings.Split(pop, ".")[1])
	var claims map[string]any
	json.Unmarshal(cb, &claims)
	if _, isNumber := claims["iat"].(float64); !isNumber {
		t.Errorf("claim_encoding number: iat is %T", claims["iat"])
	}
}

func TestVISSAGTSErrorWith201IsAnError(t *testing.T) {
	s := sim.NewVISS()
	s.Proof = "the-real-proof"
	srv := httptest.NewTLSServer(s)
	defer srv.Close()
	v, err := NewVISS("viss", VISSConfig{AGTSURL: srv.URL + "/agts", VIN: "GEO001", Context: "Dealer+OEM+Vehicle", Proof: secretValue("ABCD")},
		Env{Cache: tokencache.New(tokencache.Options{}), HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	err = v.Inject(newRequest(t, "https://viss.example/Vehicle.Speed", nil))
	if !errors.Is(err, ErrCredentialRejected) || !strings.Contains(err.Error(), "201 Created with error: Client authentication failed") {
		t.Errorf("got %v", err)
	}
}

func TestJWTExpiryAcceptsStringsAndNumbers(t *testing.T) {
	mk := func(payload string) string {
		return "e30." + base64.RawURLEncoding.EncodeToString([]byte(payload)) + ".sig"
	}
	for payload, want := range map[string]int64{`{"exp":"1655293241"}`: 1655293241, `{"exp":1655293241}`: 1655293241, `{"exp":1.6552932e9}`: 1655293200} {
		got, err := jwtExpiry(mk(payload))
		if err != nil || got.Unix() != want {
			t.Errorf("%s: %v %v", payload, got, err)
		}
	}
	for _, bad := range []string{"nodots", mk(`{}`), mk(`{"exp":"soon"}`)} {
		if _, err := jwtExpiry(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}

}

func TestVISSConfigErrors(t *testing.T) {
	_, err := NewVISS("v", VISSConfig{AGTSURL: "http://agts", ATSURL: "https://ats/ats", Context: "Hacker+OEM+Vehicle",
		LongTerm: &VISSLongTerm{ClaimEncoding: "hex"}}, Env{Cache: tokencache.New(tokencache.Options{}), HTTPClient: http.DefaultClient})
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	for _, want := range []string{"agts_url: must be https", "purpose: required with ats_url", "vin: required", `context: "Hacker+OEM+Vehicle" must be user+app+device`,
		"proof: a secret needs exactly one", "long_term.key_file: required", `long_term.claim_encoding: string or number, not "hex"`} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in:\n%s", want, msg)
		}
	}
}
