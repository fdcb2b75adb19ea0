package sim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// popSigner makes PoP tokens as a client of the reference would.
type popSigner struct {
	key   *ecdsa.PrivateKey
	x, y  string
	thumb string
}

func newPoPSigner(t *testing.T) *popSigner {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var x, y [32]byte
	k.X.FillBytes(x[:])
	k.Y.FillBytes(y[:])
	enc := base64.RawURLEncoding
	p := &popSigner{key: k, x: enc.EncodeToString(x[:]), y: enc.EncodeToString(y[:])}
	sum := sha256.Sum256([]byte(`{"crv":"P-256","kty":"EC","x":"` + p.x + `","y":"` + p.y + `"}`))
	p.thumb = enc.EncodeToString(sum[:])
	return p
}

// pop signs claims; iat is written raw (a JSON string unless it is a number).
func (p *popSigner) pop(aud, iatJSON, jti string) string {
	enc := base64.RawURLEncoding
	h := `{"typ":"dpop+jwt","alg":"ES256","jwk":{"kty":"EC","crv":"P-256","x":"` + p.x + `","y":"` + p.y + `"}}`
	c := fmt.Sprintf(`{"aud":%q,"iat":%s,"jti":%q}`, aud, iatJSON, jti)
	input := enc.EncodeToString([]byte(h)) + "." + enc.EncodeToString([]byte(c))
	d := sha256.Sum256([]byte(input))
	r, s, _ := ecdsa.Sign(rand.Reader, p.key, d[:])
	var sig [64]byte
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + enc.EncodeToString(sig[:])
}

func strIat(t time.Time) string { return strconv.Quote(strconv.FormatInt(t.Unix(), 10)) }

type vissTester struct {
	t     *testing.T
	v     *VISS
	clock *Clock
	srv   *httptest.Server
}

func newVISSTester(t *testing.T) *vissTester {
	v := NewVISS()
	clock := NewClock(time.Unix(1_800_000_000, 0))
	v.Now = clock.Now
	srv := httptest.NewServer(v)
	t.Cleanup(srv.Close)
	return &vissTester{t: t, v: v, clock: clock, srv: srv}
}

// post sends body to path with an optional PoP header and returns the
// status and the decoded answer.
func (x *vissTester) post(path, body, pop string) (int, map[string]string) {
	x.t.Helper()
	req, _ := http.NewRequest("POST", x.srv.URL+path, strings.NewReader(body))
	if pop != "" {
		req.Header.Set("PoP", pop)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		x.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := map[string]string{}
	_ = json.Unmarshal(b, &out)
	return resp.StatusCode, out
}

func (x *vissTester) agt(vin, context, pop, key string) map[string]string {
	x.t.Helper()
	body := fmt.Sprintf(`{"vin":%q,"context":%q,"proof":"ABC","key":%q}`, vin, context, key)
	st, out := x.post("/agts", body, pop)
	if st != http.StatusCreated {
		x.t.Fatalf("AGTS status %d, want 201 (agt_server.go)", st)
	}
	return out
}

func claimsOf(t *testing.T, tok string) map[string]any {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", tok)
	}
	b, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var c map[string]any
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSimAGTSFollowsTheReference(t *testing.T) {
	x := newVISSTester(t)
	p := newPoPSigner(t)
	now := x.clock.Now()
	short := x.agt("VIN1", "Independent+OEM+Cloud", "", "")
	c := claimsOf(t, short["token"])
	if c["vin"] != "VIN1" || c["aud"] != "w3org/gen2" || c["clx"] != "Independent+OEM+Cloud" || c["pub"] != nil {
		t.Errorf("short-term AGT claims %v", c)
	}
	if _, ok := c["exp"].(string); !ok || c["exp"] != strconv.FormatInt(now.Add(4*time.Hour).Unix(), 10) {
		t.Errorf("exp %v, want a string 4 h on", c["exp"])
	}
	// A key without a PoP header silently gives a short-term AGT.
	if c := claimsOf(t, x.agt("VIN1", "Independent+OEM+Cloud", "", p.thumb)["token"]); c["pub"] != nil {
		t.Errorf("a key alone gave a long-term AGT: %v", c)
	}
	long := x.agt("VIN1", "Independent+OEM+Cloud", p.pop("vissv2/agts", strIat(now), "j1"), p.thumb)
	if c := claimsOf(t, long["token"]); c["pub"] != p.thumb || c["exp"] != strconv.FormatInt(now.Add(96*time.Hour).Unix(), 10) {
		t.Errorf("long-term AGT claims %v", c)
	}
	for _, tc := range []struct {
		name, context, pop, key, want string
	}{
		{"bad role", "Hacker+OEM+Cloud", "", "", "Client authentication failed"},
		{"replayed jti", "Independent+OEM+Cloud", p.pop("vissv2/agts", strIat(now), "j1"), p.thumb, "Repeated JTI"},
		{"iat 304 s old", "Independent+OEM+Cloud", p.pop("vissv2/agts", strIat(now.Add(-304*time.Second)), "j2"), p.thumb, "Invalid POP Token"},
		{"iat 3 s ahead", "Independent+OEM+Cloud", p.pop("vissv2/agts", strIat(now.Add(3*time.Second)), "j3"), p.thumb, "Invalid POP Token"},
		{"iat as a number (read as a string, mangled)", "Independent+OEM+Cloud", p.pop("vissv2/agts", strconv.FormatInt(now.Unix(), 10), "j4"), p.thumb, "Invalid POP Token"},
		{"ATS audience", "Independent+OEM+Cloud", p.pop("vissv2/ats", strIat(now), "j5"), p.thumb, "Invalid POP Token"},
		{"another key's thumbprint", "Independent+OEM+Cloud", p.pop("vissv2/agts", strIat(now), "j6"), newPoPSigner(t).thumb, "Invalid POP Token"},
		// The jti is recorded before validation: the rejected j2 replayed.
		{"a rejected jti replayed", "Independent+OEM+Cloud", p.pop("vissv2/agts", strIat(now), "j2"), p.thumb, "Repeated JTI"},
	} {
		body := fmt.Sprintf(`{"vin":"V","context":%q,"proof":"ABC","key":%q}`, tc.context, tc.key)
		if st, out := x.post("/agts", body, tc.pop); st != 201 || out["error"] != tc.want || out["action"] != "agt-request" {
			t.Errorf("%s: %d %v, want 201 with error %q", tc.name, st, out, tc.want)
		}
	}
	for _, tc := range []struct {
		name string
		iat  time.Time
	}{{"302 s old", now.Add(-302 * time.Second)}, {"2 s ahead", now.Add(2 * time.Second)}} {
		if out := x.agt("V", "Independent+OEM+Cloud", p.pop("vissv2/agts", strIat(tc.iat), "ok-"+tc.name), p.thumb); out["token"] == "" {
			t.Errorf("iat %s refused: %v", tc.name, out)
		}
	}
	// The jti is forgotten after about 308 s.
	x.clock.Advance(309 * time.Second)
	if out := x.agt("V", "Independent+OEM+Cloud", p.pop("vissv2/agts", strIat(x.clock.Now()), "j1"), p.thumb); out["token"] == "" {
		t.Errorf("a jti 309 s old is still refused: %v", out)
	}
	if st, _ := x.post("/agts", "not json", ""); st != 201 {
		t.Errorf("malformed: %d", st)
	}
	resp, _ := http.Get(x.srv.URL + "/agts")
	if resp.StatusCode != 400 {
		t.Errorf("GET /agts: %d, want 400 text", resp.StatusCode)
	}
	resp.Body.Close()
}

func TestSimATSAndDataFollowTheReference(t *testing.T) {
	x := newVISSTester(t)
	p := newPoPSigner(t)
	now := x.clock.Now()
	agt := x.agt("VIN1", "Independent+OEM+Cloud", p.pop("vissv2/agts", strIat(now), "a1"), p.thumb)["token"]
	exchange := func(body string) map[string]string {
		st, out := x.post("/ats", body, "")
		if st != 201 {
			t.Fatalf("ATS status %d", st)
		}
		return out
	}
	atReq := func(purpose, pop string) string {
		return fmt.Sprintf(`{"action":"at-request","agToken":%q,"purpose":%q,"pop":%q}`, agt, purpose, pop)
	}
	if out := exchange(fmt.Sprintf(`{"agToken":%q,"purpose":"pay-how-you-drive"}`, agt)); out["action"] != "unknown" || out["status"] != "401-Bad request" {
		t.Errorf("without action: %v", out)
	}
	for _, tc := range []struct{ name, body, want string }{
		{"PoP with the ATS's own audience", atReq("pay-how-you-drive", p.pop("vissv2/ats", strIat(now), "b1")), "Invalid aud"},
		{"PoP 9 s old", atReq("pay-how-you-drive", p.pop("vissv2/agts", strIat(now.Add(-9*time.Second)), "b2")), "Cannot validate POP iat"},
		{"PoP of another key", atReq("pay-how-you-drive", newPoPSigner(t).pop("vissv2/agts", strIat(now), "b3")), "Keys in POP and AGToken are not matching"},
		{"purpose that does not fit the context", atReq("door-control", p.pop("vissv2/agts", strIat(now), "b4")), "Purpose validation failed"},
		{"replayed PoP", atReq("pay-how-you-drive", p.pop("vissv2/agts", strIat(now), "b4")), "Repeated JTI"},
		{"no PoP for a long-term AGT", fmt.Sprintf(`{"action":"at-request","agToken":%q,"purpose":"pay-how-you-drive"}`, agt), "Cannot validate POP signature"},
	} {
		if out := exchange(tc.body); out["error"] != tc.want || out["aToken"] != "" {
			t.Errorf("%s: %v, want error %q", tc.name, out, tc.want)
		}
	}
	out := exchange(atReq("pay-how-you-drive", p.pop("vissv2/agts", strIat(now.Add(-7*time.Second)), "b5")))
	at := out["aToken"]
	if at == "" || out["action"] != "at-request" {
		t.Fatalf("exchange: %v", out)
	}
	c := claimsOf(t, at)
	if c["scp"] != "pay-how-you-drive" || c["vin"] != nil || c["exp"] != strconv.FormatInt(now.Add(time.Hour).Unix(), 10) {
		t.Errorf("access token claims %v", c)
	}

	read := func(path, auth string) (int, map[string]any) {
		req, _ := http.NewRequest("GET", x.srv.URL+path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	tokenError := func(out map[string]any) string {
		e, _ := out["error"].(map[string]any)
		if e == nil || e["number"] != "401" || e["reason"] != "invalid_token" {
			return ""
		}
		return e["message"].(string)
	}
	for _, auth := range []string{"Bearer " + at, at} { // the prefix is optional
		if st, out := read("/Vehicle/Speed", auth); st != 200 || out["data"] == nil {
			t.Errorf("read with %.10s…: %d %v", auth, st, out)
		}
	}
	for _, tc := range []struct{ name, path, auth, want string }{
		{"no token", "/Vehicle/Speed", "", "Access Token not found. "},
		{"the AGT", "/Vehicle/Speed", "Bearer " + agt, "Invalid Access Token Signature. "},
		{"a signal the purpose does not cover", "/Vehicle/Cabin/Door/Row1/Left/IsOpen", "Bearer " + at, "Permission denied. Purpose does not match signals requested. "},
	} {
		if st, out := read(tc.path, tc.auth); st != 200 || tokenError(out) != tc.want {
			t.Errorf("%s: %d %v, want 200 with %q", tc.name, st, out, tc.want)
		}
	}
	if st, out := read("/Vehicle/Body/Lights/IsHighBeamOn", ""); st != 200 || out["data"] == nil {
		t.Errorf("a signal that needs no token: %d %v", st, out)
	}
	x.v.Restart()
	if _, out := read("/Vehicle/Speed", "Bearer "+at); tokenError(out) != "Invalid Access Token Signature. " {
		t.Errorf("after a restart: %v, want the token refused", out)
	}
	x.clock.Advance(2 * time.Hour)
	out = exchange(atReq("pay-how-you-drive", p.pop("vissv2/agts", strIat(x.clock.Now()), "b6")))
	x.clock.Advance(61 * time.Minute)
	if _, got := read("/Vehicle/Speed", "Bearer "+out["aToken"]); tokenError(got) != "Invalid exp claim. Token Expired. " {
		t.Errorf("an expired token: %v", got)
	}
}
