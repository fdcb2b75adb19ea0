package sim

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// VISS simulates W3C VISS v2 access control as the reference (WAII)
// servers run it: an AGTS (POST /agts), an ATS (POST /ats) and a data
// endpoint (anything else) that needs a live access token. Like the
// reference, the AGTS answers errors with HTTP 201 and an "error" field,
// reads PoP claims as JSON strings (unless NumericClaims), rejects a
// repeated jti and an iat more than 3 s ahead or 300 s old, and signs
// RS256 AGTs whose iat/exp are strings. Build it with NewVISS.
type VISS struct {
	Proof         string   // accepted proof of context (reference: "ABC")
	Purposes      []string // purposes the ATS accepts
	NumericClaims bool     // accept numeric PoP claims as well as strings
	AcceptAGT     bool     // the data endpoint also accepts AGTs (deployments without an ATS)
	ShortLife     time.Duration
	LongLife      time.Duration
	ATLife        time.Duration
	Now           func() time.Time

	key       *rsa.PrivateKey
	mu        sync.Mutex
	jtis      map[string]bool
	ats       map[string]time.Time
	agtCalls  atomic.Int64
	atsCalls  atomic.Int64
	dataCalls atomic.Int64
	atIssued  atomic.Int64
}

// NewVISS returns a simulator with the reference lifetimes (AGT 4 h,
// long-term 4 days, access token 1 h) and proof "ABC".
func NewVISS() *VISS {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return &VISS{Proof: "ABC", Purposes: []string{"fuel-status"}, ShortLife: 4 * time.Hour, LongLife: 96 * time.Hour,
		ATLife: time.Hour, key: k, jtis: map[string]bool{}, ats: map[string]time.Time{}}
}

// AGTRequests and ATSRequests count requests to each server.
func (s *VISS) AGTRequests() int64 { return s.agtCalls.Load() }
func (s *VISS) ATSRequests() int64 { return s.atsCalls.Load() }

// AccessTokensIssued counts ATS requests that ended with an access token
// (ATSRequests counts them as they arrive, before validation).
func (s *VISS) AccessTokensIssued() int64 { return s.atIssued.Load() }

// DataRequests counts data requests that carried a live access token.
func (s *VISS) DataRequests() int64 { return s.dataCalls.Load() }

// PublicKey verifies the AGTs it signs.
func (s *VISS) PublicKey() *rsa.PublicKey { return &s.key.PublicKey }

func (s *VISS) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *VISS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/agts":
		s.agts(w, r)
	case "/ats":
		s.atsHandler(w, r)
	default:
		s.data(w, r)
	}
}

func vissAnswer(w http.ResponseWriter, action string, fields map[string]string) {
	out := map[string]string{"action": action}
	for k, v := range fields {
		out[k] = v
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated) // as the reference server, success or not
	_ = json.NewEncoder(w).Encode(out)
}

func (s *VISS) agts(w http.ResponseWriter, r *http.Request) {
	s.agtCalls.Add(1)
	fail := func(msg string) { vissAnswer(w, "agt-request", map[string]string{"error": msg}) }
	var req struct{ Vin, Context, Proof, Key string }
	if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&req) != nil {
		fail("Request parse failed")
		return
	}
	roles := strings.Split(req.Context, "+")
	if len(roles) != 3 || !slices.Contains([]string{"OEM", "Dealer", "Independent", "Owner", "Driver", "Passenger"}, roles[0]) ||
		!slices.Contains([]string{"OEM", "Third party"}, roles[1]) || !slices.Contains([]string{"Vehicle", "Nomadic", "Cloud"}, roles[2]) {
		fail("Invalid context")
		return
	}
	if req.Proof != s.Proof {
		fail("Client authentication failed")
		return
	}
	now := s.now()
	claims := map[string]string{"vin": req.Vin, "clx": req.Context, "aud": "w3org/gen2", "jti": uuid(),
		"iat": strconv.FormatInt(now.Unix(), 10), "exp": strconv.FormatInt(now.Add(s.ShortLife).Unix(), 10)}
	if pop := r.Header.Get("PoP"); pop != "" || req.Key != "" {
		thumb, err := s.checkPoP(pop, "vissv2/agts")
		if err != nil {
			fail("PoP validation failed: " + err.Error())
			return
		}
		if thumb != req.Key {
			fail("PoP key does not match the key claim")
			return
		}
		claims["pub"] = thumb
		claims["exp"] = strconv.FormatInt(now.Add(s.LongLife).Unix(), 10)
	}
	vissAnswer(w, "agt-request", map[string]string{"token": s.sign(claims)})
}

func (s *VISS) atsHandler(w http.ResponseWriter, r *http.Request) {
	s.atsCalls.Add(1)
	fail := func(msg string) { vissAnswer(w, "at-request", map[string]string{"error": msg}) }
	var req struct{ Purpose, AgToken, Pop string }
	if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&req) != nil {
		fail("Request parse failed")
		return
	}
	claims, err := s.verifyAGT(req.AgToken)
	if err != nil {
		fail("AGT invalid: " + err.Error())
		return
	}
	if !slices.Contains(s.Purposes, req.Purpose) {
		fail("Purpose not allowed")
		return
	}
	if pub := claims["pub"]; pub != "" {
		thumb, err := s.checkPoP(req.Pop, "vissv2/ats")
		if err != nil || thumb != pub {
			fail("PoP for the long-term AGT invalid")
			return
		}
	}
	now := s.now()
	at := s.sign(map[string]string{"vin": claims["vin"], "scp": req.Purpose, "aud": "w3org/gen2", "jti": uuid(),
		"iat": strconv.FormatInt(now.Unix(), 10), "exp": strconv.FormatInt(now.Add(s.ATLife).Unix(), 10)})
	s.mu.Lock()
	s.ats[at] = now.Add(s.ATLife)
	s.mu.Unlock()
	s.atIssued.Add(1)
	vissAnswer(w, "at-request", map[string]string{"token": at})
}

func (s *VISS) data(w http.ResponseWriter, r *http.Request) {
	tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ") // the prefix is optional
	s.mu.Lock()
	exp, ok := s.ats[tok]
	s.mu.Unlock()
	live := ok && s.now().Before(exp)
	if !live && s.AcceptAGT {
		_, err := s.verifyAGT(tok)
		live = err == nil
	}
	if !live {
		http.Error(w, `{"action":"get","error":{"number":"401","reason":"invalid_token"}}`, http.StatusUnauthorized)
		return
	}
	s.dataCalls.Add(1)
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"action":"get","data":{"path":%q,"dp":{"value":"42","ts":%q}}}`, r.URL.Path, s.now().UTC().Format(time.RFC3339))
}

func (s *VISS) sign(claims map[string]string) string {
	enc := base64.RawURLEncoding
	h, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT"})
	c, _ := json.Marshal(claims)
	input := enc.EncodeToString(h) + "." + enc.EncodeToString(c)
	d := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, d[:])
	if err != nil {
		panic(err)
	}
	return input + "." + enc.EncodeToString(sig)
}

func (s *VISS) verifyAGT(tok string) (map[string]string, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("not a JWT")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	d := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err != nil || rsa.VerifyPKCS1v15(&s.key.PublicKey, crypto.SHA256, d[:], sig) != nil {
		return nil, fmt.Errorf("signature")
	}
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var claims map[string]string
	if json.Unmarshal(payload, &claims) != nil {
		return nil, fmt.Errorf("claims")
	}
	exp, _ := strconv.ParseInt(claims["exp"], 10, 64)
	if !s.now().Before(time.Unix(exp, 0)) {
		return nil, fmt.Errorf("expired")
	}
	return claims, nil
}

// checkPoP validates a proof-of-possession JWT and returns the RFC 7638
// thumbprint of its key.
func (s *VISS) checkPoP(pop, aud string) (string, error) {
	parts := strings.Split(pop, ".")
	if len(parts) != 3 {
		return "", fmt.Errorf("not a JWT")
	}
	enc := base64.RawURLEncoding
	hb, err1 := enc.DecodeString(parts[0])
	cb, err2 := enc.DecodeString(parts[1])
	sig, err3 := enc.DecodeString(parts[2])
	var header struct {
		Typ, Alg string
		Jwk      struct{ Kty, Crv, X, Y string }
	}
	var claims map[string]any
	if err1 != nil || err2 != nil || err3 != nil || json.Unmarshal(hb, &header) != nil || json.Unmarshal(cb, &claims) != nil {
		return "", fmt.Errorf("does not decode")
	}
	if header.Typ != "dpop+jwt" || header.Alg != "ES256" || header.Jwk.Kty != "EC" || header.Jwk.Crv != "P-256" {
		return "", fmt.Errorf("header must be dpop+jwt, ES256, an EC P-256 jwk")
	}
	x, errx := enc.DecodeString(header.Jwk.X)
	y, erry := enc.DecodeString(header.Jwk.Y)
	if errx != nil || erry != nil || len(x) != 32 || len(y) != 32 || len(sig) != 64 {
		return "", fmt.Errorf("key or signature has the wrong size")
	}
	pub := &ecdsa.PublicKey{Curve: elliptic.P256(), X: new(big.Int).SetBytes(x), Y: new(big.Int).SetBytes(y)}
	d := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if !ecdsa.Verify(pub, d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return "", fmt.Errorf("signature does not verify")
	}
	str := func(name string) (string, error) {
		switch v := claims[name].(type) {
		case string:
			return v, nil
		case float64:
			if s.NumericClaims {
				return strconv.FormatInt(int64(v), 10), nil
			}
		}
		return "", fmt.Errorf("claim %s must be a JSON string", name)
	}
	gotAud, err := str("aud")
	if err != nil || gotAud != aud {
		return "", fmt.Errorf("aud must be %s", aud)
	}
	iatS, err := str("iat")
	if err != nil {
		return "", err
	}
	iat, err := strconv.ParseInt(iatS, 10, 64)
	now := s.now().Unix()
	if err != nil || iat > now+3 || iat < now-300 {
		return "", fmt.Errorf("iat outside the accepted window")
	}
	jti, err := str("jti")
	if err != nil || jti == "" {
		return "", fmt.Errorf("jti missing")
	}
	s.mu.Lock()
	seen := s.jtis[jti]
	s.jtis[jti] = true
	s.mu.Unlock()
	if seen {
		return "", fmt.Errorf("jti replayed")
	}
	canon := `{"crv":"P-256","kty":"EC","x":"` + header.Jwk.X + `","y":"` + header.Jwk.Y + `"}`
	sum := sha256.Sum256([]byte(canon))
	return enc.EncodeToString(sum[:]), nil
}

func uuid() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:4]) + "-" + hex.EncodeToString(b[4:6]) + "-" + hex.EncodeToString(b[6:8]) + "-" +
		hex.EncodeToString(b[8:10]) + "-" + hex.EncodeToString(b[10:])
}
