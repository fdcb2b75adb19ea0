package injectors

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// The ATS request carries action at-request, and the reference's answer to
// one without it is a refusal of the proxy's own request, not an outage;
// the token comes back as aToken.
func TestVISSExchangeSpeaksTheReferenceATS(t *testing.T) {
	var lastBody map[string]string
	answer := `{"action":"unknown","status":"401-Bad request"}`
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/agts" {
			w.WriteHeader(201)
			fmt.Fprintf(w, `{"action":"agt-request","token":%q}`, fakeAGT())
			return
		}
		json.NewDecoder(r.Body).Decode(&lastBody)
		w.WriteHeader(201)
		io.WriteString(w, answer)
	}))
	defer srv.Close()
	build := func() *VISS {
		v, err := NewVISS("viss", VISSConfig{AGTSURL: srv.URL + "/agts", ATSURL: srv.URL + "/ats", VIN: "V", Context: "Independent+OEM+Cloud",
			Proof: secretValue("ABC"), Purpose: "pay-how-you-drive", LongTerm: &VISSLongTerm{KeyFile: filepath.Join(t.TempDir(), "k.pem")}},
			Env{Cache: tokencache.New(tokencache.Options{}), HTTPClient: srv.Client()})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	err := build().Inject(newRequest(t, "https://viss.example/Vehicle/Speed", nil))
	if !errors.Is(err, ErrCredentialRejected) || !strings.Contains(err.Error(), "action unknown (401-Bad request)") {
		t.Errorf("unknown action: %v, want a rejection naming the status", err)
	}
	if lastBody["action"] != "at-request" || lastBody["agToken"] == "" || lastBody["purpose"] != "pay-how-you-drive" || lastBody["pop"] == "" {
		t.Errorf("ATS request body %v", lastBody)
	}
	parts := strings.Split(lastBody["pop"], ".")
	claims, _ := base64.RawURLEncoding.DecodeString(parts[1])
	if !strings.Contains(string(claims), `"aud":"vissv2/agts"`) {
		t.Errorf("the ATS PoP has claims %s; the reference ATS checks aud vissv2/agts", claims)
	}
	answer = `{"action":"at-request","aToken":"the-access-token"}`
	req := newRequest(t, "https://viss.example/Vehicle/Speed", nil)
	if err := build().Inject(req); err != nil || req.Header.Get("Authorization") != "Bearer the-access-token" {
		t.Errorf("aToken: %v %q", err, req.Header.Get("Authorization"))
	}
}

// A plain-HTTP issuer is refused unless allow_plaintext_issuer says so,
// and then it is a start warning.
func TestVISSPlaintextIssuerIsExplicit(t *testing.T) {
	env := Env{Cache: tokencache.New(tokencache.Options{}), HTTPClient: http.DefaultClient}
	cfg := VISSConfig{AGTSURL: "http://10.0.0.5:7500/agts", ATSURL: "http://10.0.0.5:8600/ats", VIN: "V", Context: "Independent+OEM+Cloud",
		Proof: secretValue("ABC"), Purpose: "fuel-status"}
	_, err := NewVISS("viss", cfg, env)
	if err == nil || !strings.Contains(err.Error(), "agts_url: must be https (or set allow_plaintext_issuer") || !strings.Contains(err.Error(), "ats_url: must be https") {
		t.Errorf("plain issuers without the opt-in: %v", err)
	}
	cfg.AllowPlaintextIssuer = true
	v, err := NewVISS("viss", cfg, env)
	if err != nil {
		t.Fatal(err)
	}
	if w := v.StartWarnings(); len(w) != 2 || !strings.Contains(w[0], "agts_url is plain HTTP") {
		t.Errorf("warnings %q", w)
	}
}

// A 200 answer whose small body says the token is dead drops it; one that
// refuses the purpose, a large body and a body of unknown length do not.
func TestVISSTokenErrorIn200Body(t *testing.T) {
	for _, tc := range []struct {
		name  string
		body  string
		size  int64
		retry bool
	}{
		{"invalid token", `{"error":{"number":"401","reason":"invalid_token","message":"Invalid Access Token Signature. "},"ts":"x"}`, -2, true},
		{"number as a number", `{"error":{"number":401,"reason":"expired_token","message":"expired"}}`, -2, true},
		{"purpose refused", `{"error":{"number":"401","reason":"invalid_token","message":"Permission denied. Purpose does not match signals requested. "}}`, -2, false},
		{"data", `{"data":{"path":"Vehicle.Speed","dp":{"value":"42"}}}`, -2, false},
		{"unknown length", `{"error":{"number":"401","reason":"invalid_token","message":"x"}}`, -1, false},
		{"over the peek bound", `{"error":{"number":"401","reason":"invalid_token","message":"x"}}`, MaxObservedBody + 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := sim.NewClock(time.Now())
			srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(201)
				fmt.Fprintf(w, `{"action":"agt-request","token":%q}`, fakeAGT())
			}))
			defer srv.Close()
			v, err := NewVISS("viss", VISSConfig{AGTSURL: srv.URL + "/agts", VIN: "V", Context: "Independent+OEM+Cloud", Proof: secretValue("ABC")},
				Env{Cache: tokencache.New(tokencache.Options{Now: clock.Now}), HTTPClient: srv.Client(), Now: clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			req := newRequest(t, "https://viss.example/Vehicle/Speed", nil)
			if err := v.Inject(req); err != nil {
				t.Fatal(err)
			}
			clock.Advance(2 * time.Second)
			size := tc.size
			if size == -2 {
				size = int64(len(tc.body))
			}
			resp := &http.Response{StatusCode: 200, ContentLength: size, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(tc.body))}
			if got := v.ObserveResponse(req, resp); got != tc.retry {
				t.Errorf("retry = %v, want %v", got, tc.retry)
			}
			if rest, _ := io.ReadAll(resp.Body); string(rest) != tc.body {
				t.Errorf("the client would get %q, not the whole body", rest)
			}
		})
	}
}
