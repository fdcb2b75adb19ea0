package sim

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// VISS simulates W3C VISS v2 access control as the reference
// implementation (WAII, github.com/w3c/automotive-viss2) runs it: an
// Access Grant Token Server (AGTS), an Access Token Server (ATS) and a data
// server, each its own handler (the reference runs each on its own port).
// Every rule below names the reference file and function it mirrors:
//
//   - agt_server.go = server/agt_server/agt_server.go
//   - atServer.go = server/vissv2server/atServer/atServer.go
//   - datatypes.go = utils/datatypes.go (PopToken)
//   - managerhandlers.go = utils/managerhandlers.go, vissv2server.go =
//     server/vissv2server/vissv2server.go (the data server)
//   - purposelist.json = server/vissv2server/atServer/purposelist.json
//
// Build it with NewVISS. It is safe for concurrent use, except that with
// SharedChannel set it reproduces the reference AGTS's fault under
// concurrent requests on purpose.
type VISS struct {
	// Proof is the proof of context the AGTS accepts (agt_server.go
	// authenticateClient: "ABC").
	Proof string
	// Validated are the VSS paths (dotted) the data server wants a token
	// for: the reference marks them `validate` in its VSS tree. Default:
	// every signal of the purpose list.
	Validated []string
	// SharedChannel makes the AGTS pass each request's body and PoP through
	// one unbuffered channel to one loop, as agt_server.go main and
	// makeAgtServerHandler do: concurrent requests then get each other's
	// answers or hang. Close stops its loop.
	SharedChannel bool
	// Lifetimes: agt_server.go ST_DURATION 4 h and LT_DURATION 4 days,
	// atServer.go AT_DURATION 1 h.
	ShortLife, LongLife, ATLife time.Duration
	Now                         func() time.Time

	key      *rsa.PrivateKey
	atSecret []byte

	mu      sync.Mutex
	agtsJTI map[string]time.Time // PoP jtis the AGTS has seen, and when
	atsJTI  map[string]time.Time // PoP jtis the ATS has seen
	active  []string             // access tokens issued (atServer.go activeList, LISTSIZE 100)

	chOnce sync.Once
	ch     chan string
	stop   chan struct{}

	agtCalls, atsCalls, dataCalls, atIssued atomic.Int64
}

// NewVISS returns a simulator with the reference's proof ("ABC") and
// lifetimes.
func NewVISS() *VISS {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	return &VISS{Proof: "ABC", ShortLife: 4 * time.Hour, LongLife: 96 * time.Hour, ATLife: time.Hour,
		key: k, atSecret: secret, agtsJTI: map[string]time.Time{}, atsJTI: map[string]time.Time{}, stop: make(chan struct{})}
}

// AGTRequests and ATSRequests count POSTs that reached each server.
func (s *VISS) AGTRequests() int64 { return s.agtCalls.Load() }
func (s *VISS) ATSRequests() int64 { return s.atsCalls.Load() }

// AccessTokensIssued counts ATS answers that carried an access token.
func (s *VISS) AccessTokensIssued() int64 { return s.atIssued.Load() }

// DataRequests counts data requests served with a value.
func (s *VISS) DataRequests() int64 { return s.dataCalls.Load() }

// PublicKey verifies the AGTs it signs.
func (s *VISS) PublicKey() *rsa.PublicKey { return &s.key.PublicKey }

// Restart forgets every access token issued and every PoP jti seen, as a
// restart of the reference server does (its activeList and jtiCache live in
// memory): tokens issued before are refused from then on.
func (s *VISS) Restart() {
	s.mu.Lock()
	s.active = nil
	s.agtsJTI, s.atsJTI = map[string]time.Time{}, map[string]time.Time{}
	s.mu.Unlock()
}

// Close stops the SharedChannel loop, if one runs.
func (s *VISS) Close() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
}

func (s *VISS) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// ServeHTTP serves all three on one address, for tests that need only
// one: /agts, /ats, and every other path as the data server.
func (s *VISS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/agts":
		s.AGTS().ServeHTTP(w, r)
	case "/ats":
		s.ATS().ServeHTTP(w, r)
	default:
		s.Data().ServeHTTP(w, r)
	}
}

// postOnly is the reference's handler preamble (agt_server.go
// makeAgtServerHandler, atServer.go makeAtServerHandler): another path is
// 404 text, a method other than POST 400 text (OPTIONS answers CORS).
func postOnly(w http.ResponseWriter, r *http.Request, path string) ([]byte, bool) {
	switch {
	case r.URL.Path != path:
		http.Error(w, "404 url path not found.", http.StatusNotFound)
		return nil, false
	case r.Method == http.MethodOptions:
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.Header().Set("Access-Control-Allow-Headers", "PoP")
		w.Header().Set("Access-Control-Allow-Methods", "POST")
		return nil, false
	case r.Method != http.MethodPost:
		http.Error(w, "400 bad request method.", http.StatusBadRequest)
		return nil, false
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "400 request unreadable.", http.StatusBadRequest)
		return nil, false
	}
	return body, true
}

// answer201 writes a JSON answer with status 201, success or not, as both
// reference servers do.
func answer201(w http.ResponseWriter, body string) {
	if body == "" {
		http.Error(w, "400 bad input.", http.StatusBadRequest)
		return
	}
	w.Header().Set("Access-Control-Allow-Origin", "*")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, body)
}

// AGTS is the Access Grant Token Server: POST /agts.
func (s *VISS) AGTS() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, ok := postOnly(w, r, "/agts")
		if !ok {
			return
		}
		s.agtCalls.Add(1)
		pop := r.Header.Get("PoP")
		if !s.SharedChannel {
			answer201(w, s.agtResponse(string(body), pop))
			return
		}
		// agt_server.go makeAgtServerHandler and main: body, then PoP, then
		// the answer, all through one unbuffered channel.
		s.chOnce.Do(func() { s.ch = make(chan string); go s.agtLoop() })
		for _, msg := range []string{string(body), pop} {
			select {
			case s.ch <- msg:
			case <-r.Context().Done():
				return
			case <-s.stop:
				return
			}
		}
		select {
		case resp := <-s.ch:
			answer201(w, resp)
		case <-r.Context().Done():
		case <-s.stop:
		}
	})
}

func (s *VISS) agtLoop() {
	for {
		var req, pop string
		for _, dst := range []*string{&req, &pop} {
			select {
			case *dst = <-s.ch:
			case <-s.stop:
				return
			}
		}
		select {
		case s.ch <- s.agtResponse(req, pop):
		case <-s.stop:
			return
		}
	}
}

// agtResponse is agt_server.go generateResponse.
func (s *VISS) agtResponse(input, pop string) string {
	var p struct{ Vin, Context, Proof, Key string }
	if json.Unmarshal([]byte(input), &p) != nil {
		return `{"action": "agt-request", "error": "Client request malformed"}`
	}
	// authenticateClient: the roles (checkRoles) and the proof.
	if !vissRolesOK(p.Context) || p.Proof != s.Proof {
		return `{"action": "agt-request", "error": "Client authentication failed"}`
	}
	now := s.now()
	claims := [][2]string{{"vin", p.Vin}, {"iat", strconv.FormatInt(now.Unix(), 10)},
		{"exp", strconv.FormatInt(now.Add(s.ShortLife).Unix(), 10)}, {"clx", p.Context}, {"aud", "w3org/gen2"}, {"jti", uuid()}}
	if pop != "" { // generateLTAgt: long-term only with a PoP header; a key alone is ignored
		tok, err := parsePoP(pop)
		if err != nil {
			return `{"action": "agt-request", "error": "Client request malformed"}`
		}
		if !s.addJTI(s.agtsJTI, tok.claims["jti"], 308*time.Second) { // recorded before validation; GAP+LIFETIME+5
			return `{"action": "agt-request", "error": "Repeated JTI"}`
		}
		if !tok.signatureOK() {
			return `{"action": "agt-request", "error": "Invalid POP signature"}`
		}
		if !tok.valid(p.Key, "vissv2/agts", 3, 300, now) { // Validate(key, "vissv2/agts", GAP, LIFETIME)
			return `{"action": "agt-request", "error": "Invalid POP Token"}`
		}
		claims[2][1] = strconv.FormatInt(now.Add(s.LongLife).Unix(), 10)
		claims = append(claims, [2]string{"pub", p.Key})
	}
	return `{"action": "agt-request", "token":"` + s.signRS256(claims) + `"}`
}

// vissRolesOK is agt_server.go checkRoles.
func vissRolesOK(context string) bool {
	roles := strings.Split(context, "+")
	return len(roles) == 3 &&
		slices.Contains([]string{"OEM", "Dealer", "Independent", "Owner", "Driver", "Passenger"}, roles[0]) &&
		slices.Contains([]string{"OEM", "Third party"}, roles[1]) &&
		slices.Contains([]string{"Vehicle", "Nomadic", "Cloud"}, roles[2])
}

// addJTI is addCheckJti of both servers: false if jti was seen within
// keep; the jti is recorded either way.
func (s *VISS) addJTI(seen map[string]time.Time, jti string, keep time.Duration) bool {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if at, ok := seen[jti]; ok && now.Sub(at) < keep {
		return false
	}
	seen[jti] = now
	return true
}

// ATS is the Access Token Server: POST /ats.
func (s *VISS) ATS() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, ok := postOnly(w, r, "/ats")
		if !ok {
			return
		}
		s.atsCalls.Add(1)
		answer201(w, s.atResponse(string(body)))
	})
}

// atResponse is atServer.go generateClientResponse and
// accessTokenResponse.
func (s *VISS) atResponse(input string) string {
	if !strings.Contains(input, "at-request") {
		return `{"action":"unknown","status":"401-Bad request"}`
	}
	var p struct {
		Token   string `json:"agToken"`
		Purpose string `json:"purpose"`
		Pop     string `json:"pop"`
	}
	if json.Unmarshal([]byte(input), &p) != nil {
		return `{"action": "at-request", "error": "Client request malformed"}`
	}
	agt, err := s.decodeJWT(p.Token)
	if err != nil {
		return `{"action": "at-request", "error":"AGT Malformed"}`
	}
	var pop *popToken
	if p.Pop != "" {
		if pop, err = parsePoP(p.Pop); err != nil {
			return `{"action": "at-request", "error":"POP malformed"}`
		}
	}
	// validateRequest.
	if !agt.rs256OK(&s.key.PublicKey) {
		return `{"error": "AG token signature validation failed"}`
	}
	iat, err1 := strconv.ParseInt(agt.claims["iat"], 10, 64)
	exp, err2 := strconv.ParseInt(agt.claims["exp"], 10, 64)
	if err1 != nil || err2 != nil {
		return `{"error": "AG token exp timestamp malformed"}`
	}
	now := s.now()
	if now.Before(time.Unix(iat, 0)) || now.After(time.Unix(exp, 0)) {
		return `{"error": "AG token timestamp validation failed"}`
	}
	if pub := agt.claims["pub"]; pub != "" { // validatePop
		if pop == nil { // an empty PopToken: its "" jti passes once, its signature never
			return `{"error": "Cannot validate POP signature"}`
		}
		if !s.addJTI(s.atsJTI, pop.claims["jti"], 13*time.Second) { // GAP+LIFETIME+5, recorded first
			return `{"error": "Repeated JTI"}`
		}
		if !pop.signatureOK() {
			return `{"error": "Cannot validate POP signature"}`
		}
		if !pop.iatOK(3, 5, now) { // CheckIat(GAP 3, LIFETIME 5)
			return `{"error": "Cannot validate POP iat"}`
		}
		if pop.thumb != pub {
			return `{"error": "Keys in POP and AGToken are not matching"}`
		}
		if pop.claims["aud"] != "vissv2/agts" { // the AGTS's audience, not vissv2/ats
			return `{"error": "Invalid aud"}`
		}
	}
	if !vissPurposeFits(p.Purpose, agt.claims["clx"]) {
		return `{"error": "Purpose validation failed"}`
	}
	// generateAt: HS256, claims as strings, no vin.
	at := s.signHS256([][2]string{{"iat", strconv.FormatInt(now.Unix(), 10)},
		{"exp", strconv.FormatInt(now.Add(s.ATLife).Unix(), 10)}, {"scp", p.Purpose}, {"clx", agt.claims["clx"]},
		{"aud", "w3org/gen2"}, {"jti", uuid()}})
	s.mu.Lock()
	s.active = append(s.active, at)
	if len(s.active) > 100 {
		s.active = s.active[len(s.active)-100:]
	}
	s.mu.Unlock()
	s.atIssued.Add(1)
	return `{"action": "at-request", "aToken":"` + at + `"}`
}

// vissPurpose is one entry of purposelist.json: the contexts that may ask
// for it (each a set of user, app and device roles) and its signals.
type vissPurpose struct {
	short    string
	contexts [][3][]string
	signals  []string
}

var (
	anyApp       = []string{"OEM", "Third party"}
	vissPurposes = []vissPurpose{
		{"pay-as-you-drive", [][3][]string{{{"Independent"}, anyApp, {"Cloud"}}},
			[]string{"Vehicle.Powertrain.Transmission.TravelledDistance"}},
		{"pay-how-you-drive", [][3][]string{{{"Independent"}, anyApp, {"Cloud"}}},
			[]string{"Vehicle.Speed", "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"}},
		{"fuel-status", [][3][]string{{{"Independent"}, anyApp, {"Cloud"}}, {{"Owner"}, {"Third party"}, {"Nomadic"}}, {{"Driver"}, {"OEM"}, {"Vehicle"}}},
			[]string{"Vehicle.Powertrain.FuelSystem.AbsoluteLevel", "Vehicle.Powertrain.FuelSystem.Range"}},
		{"engine-status", [][3][]string{{{"Driver"}, anyApp, {"Vehicle"}}, {{"Owner"}, anyApp, {"Cloud"}}},
			[]string{"Vehicle.Powertrain.CombustionEngine.ECT", "Vehicle.Powertrain.CombustionEngine.EngineOilLevel",
				"Vehicle.Powertrain.CombustionEngine.IsRunning", "Vehicle.Powertrain.CombustionEngine.Speed",
				"Vehicle.Powertrain.CombustionEngine.Torque", "Vehicle.Powertrain.CombustionEngine.Power"}},
		{"door-control", [][3][]string{{{"Driver"}, anyApp, {"Vehicle"}}, {{"Owner"}, {"OEM"}, {"Cloud"}}},
			[]string{"Vehicle.Cabin.Door.Row1.Left.IsOpen", "Vehicle.Cabin.Door.Row1.Right.IsOpen",
				"Vehicle.Cabin.Door.Row2.Left.IsOpen", "Vehicle.Cabin.Door.Row2.Right.IsOpen",
				"Vehicle.Cabin.Door.Row1.Left.IsLocked", "Vehicle.Cabin.Door.Row1.Right.IsLocked",
				"Vehicle.Cabin.Door.Row2.Left.IsLocked", "Vehicle.Cabin.Door.Row2.Right.IsLocked"}},
	}
)

// vissPurposeFits is atServer.go validatePurpose and checkAuthorization.
func vissPurposeFits(purpose, context string) bool {
	roles := strings.Split(context, "+")
	if len(roles) != 3 {
		return false
	}
	for _, p := range vissPurposes {
		if p.short != purpose {
			continue
		}
		for _, c := range p.contexts {
			if slices.Contains(c[0], roles[0]) && slices.Contains(c[1], roles[1]) && slices.Contains(c[2], roles[2]) {
				return true
			}
		}
	}
	return false
}

// vissPurposeCovers is atServer.go validatePurposeAndAccessPermission (read).
func vissPurposeCovers(purpose, path string) bool {
	for _, p := range vissPurposes {
		if p.short == purpose && slices.Contains(p.signals, path) {
			return true
		}
	}
	return false
}

// Data is the data server: GET /<VSS path with / for .>, such as
// /Vehicle/Speed.
func (s *VISS) Data() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := strings.ReplaceAll(strings.Trim(r.URL.Path, "/"), "/", ".")
		reply := func(body map[string]any) { // backendHttpAppSession: always 200, with a length
			body["ts"] = s.now().UTC().Format(time.RFC3339)
			b, _ := json.Marshal(body)
			w.Header().Set("Access-Control-Allow-Origin", "*")
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			_, _ = w.Write(b)
		}
		// setTokenErrorResponse: ErrorInfoList[3] with the message of the
		// validation code (getTokenErrorMessage).
		tokenError := func(msg string) {
			reply(map[string]any{"error": map[string]string{"number": "401", "reason": "invalid_token", "message": msg}})
		}
		if r.Method != http.MethodGet {
			reply(map[string]any{"error": map[string]string{"number": "400", "reason": "bad_request", "message": "Unsupported HTTP method"}})
			return
		}
		handle := ""
		if s.validated(path) {
			tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ") // frontendHttpAppSession: the prefix is optional
			if tok == "" {
				tokenError("Access Token not found. ")
				return
			}
			// tokenValidationResponse: only a token in the active list has a
			// signature to check (getCompleteToken), then purpose, then expiry.
			s.mu.Lock()
			known := slices.Contains(s.active, tok)
			s.mu.Unlock()
			claims, err := s.decodeJWT(tok)
			if !known || err != nil || !claims.hs256OK(s.atSecret) {
				tokenError("Invalid Access Token Signature. ")
				return
			}
			if !vissPurposeCovers(claims.claims["scp"], path) {
				tokenError("Permission denied. Purpose does not match signals requested. ")
				return
			}
			exp, _ := strconv.ParseInt(claims.claims["exp"], 10, 64)
			if s.now().After(time.Unix(exp, 0)) {
				tokenError("Invalid exp claim. Token Expired. ")
				return
			}
			handle = tok[strings.LastIndexByte(tok, '.')+1:] // extractSignature
		}
		s.dataCalls.Add(1)
		out := map[string]any{"data": map[string]any{"path": path, "dp": map[string]string{"value": "42", "ts": s.now().UTC().Format(time.RFC3339)}}}
		if handle != "" {
			out["authorization"] = handle
		}
		reply(out)
	})
}

func (s *VISS) validated(path string) bool {
	if s.Validated != nil {
		return slices.Contains(s.Validated, path)
	}
	for _, p := range vissPurposes {
		if slices.Contains(p.signals, path) {
			return true
		}
	}
	return false
}

// jwt is a decoded token whose claims are read as the reference reads
// them: every raw JSON value with its first and last character cut off
// (datatypes.go PopToken.Unmarshal), so "123" is 123 and a number loses
// its first and last digit.
type jwt struct {
	header, payload, sig []byte
	signingInput         string
	claims               map[string]string
}

func (s *VISS) decodeJWT(tok string) (*jwt, error) { return decodeJWT(tok) }

func decodeJWT(tok string) (*jwt, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("not a JWT")
	}
	enc := base64.RawURLEncoding
	h, err1 := enc.DecodeString(parts[0])
	p, err2 := enc.DecodeString(parts[1])
	sig, err3 := enc.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil {
		return nil, fmt.Errorf("not base64url")
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(p, &raw); err != nil {
		return nil, err
	}
	claims := map[string]string{}
	for k, v := range raw {
		if len(v) >= 2 {
			claims[k] = string(v[1 : len(v)-1])
		}
	}
	return &jwt{header: h, payload: p, sig: sig, signingInput: parts[0] + "." + parts[1], claims: claims}, nil
}

func (t *jwt) rs256OK(pub *rsa.PublicKey) bool {
	d := sha256.Sum256([]byte(t.signingInput))
	return rsa.VerifyPKCS1v15(pub, crypto.SHA256, d[:], t.sig) == nil
}

func (t *jwt) hs256OK(secret []byte) bool {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(t.signingInput))
	return hmac.Equal(m.Sum(nil), t.sig)
}

// popToken is datatypes.go PopToken: a dpop+jwt whose header carries the
// EC P-256 key it is signed with.
type popToken struct {
	*jwt
	pub   *ecdsa.PublicKey
	thumb string
}

func parsePoP(tok string) (*popToken, error) {
	t, err := decodeJWT(tok)
	if err != nil {
		return nil, err
	}
	var h struct {
		Typ, Alg string
		Jwk      struct{ Kty, Crv, X, Y string }
	}
	if err := json.Unmarshal(t.header, &h); err != nil {
		return nil, err
	}
	enc := base64.RawURLEncoding
	x, errx := enc.DecodeString(h.Jwk.X)
	y, erry := enc.DecodeString(h.Jwk.Y)
	if errx != nil || erry != nil || h.Jwk.Crv != "P-256" || h.Alg != "ES256" {
		return nil, fmt.Errorf("can not decode key in poptoken")
	}
	canon := `{"crv":"P-256","kty":"EC","x":"` + h.Jwk.X + `","y":"` + h.Jwk.Y + `"}` // RFC 7638
	sum := sha256.Sum256([]byte(canon))
	return &popToken{jwt: t, pub: &ecdsa.PublicKey{Curve: elliptic.P256(), X: new(big.Int).SetBytes(x), Y: new(big.Int).SetBytes(y)},
		thumb: enc.EncodeToString(sum[:])}, nil
}

// signatureOK is CheckSignature: a raw r‖s ES256 signature, 32 bytes each.
func (p *popToken) signatureOK() bool {
	if len(p.sig) != 64 {
		return false
	}
	d := sha256.Sum256([]byte(p.signingInput))
	return ecdsa.Verify(p.pub, d[:], new(big.Int).SetBytes(p.sig[:32]), new(big.Int).SetBytes(p.sig[32:]))
}

// iatOK is CheckIat(gap, lifetime): now < iat+gap+lifetime and now > iat-gap,
// in whole seconds.
func (p *popToken) iatOK(gap, lifetime int64, now time.Time) bool {
	iat, err := strconv.ParseInt(p.claims["iat"], 10, 64)
	act := now.Unix()
	return err == nil && act < iat+gap+lifetime && act > iat-gap
}

// valid is Validate: iat, aud, the key's thumbprint, the signature.
func (p *popToken) valid(thumb, aud string, gap, lifetime int64, now time.Time) bool {
	return p.iatOK(gap, lifetime, now) && p.claims["aud"] == aud && thumb != "" && thumb == p.thumb && p.signatureOK()
}

// signRS256 signs claims (in order, all strings) as the reference's
// JsonWebToken does for AGTs.
func (s *VISS) signRS256(claims [][2]string) string {
	input := jwtInput(`{"alg":"RS256","typ":"JWT"}`, claims)
	d := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, d[:])
	if err != nil {
		panic(err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func (s *VISS) signHS256(claims [][2]string) string {
	input := jwtInput(`{"alg":"HS256","typ":"JWT"}`, claims)
	m := hmac.New(sha256.New, s.atSecret)
	m.Write([]byte(input))
	return input + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func jwtInput(header string, claims [][2]string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, c := range claims {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(c[0])
		v, _ := json.Marshal(c[1])
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(b.String()))
}

func uuid() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return hex.EncodeToString(b[:4]) + "-" + hex.EncodeToString(b[4:6]) + "-" + hex.EncodeToString(b[6:8]) + "-" +
		hex.EncodeToString(b[8:10]) + "-" + hex.EncodeToString(b[10:])
}

// WAIIClientAuth is how the reference servers treat client certificates
// (transportSec.json's serverCertOpt, read by utils.CertOptToInt and applied
// by utils.GetTLSConfig in w3c/automotive-viss2): NoClientCert asks for
// none; ClientCertNoVerification requires one and verifies nothing
// (tls.RequireAnyClientCert); ClientCertVerification, and any other value
// ("if unclear, apply max security"), requires one that chains to the CA
// (tls.RequireAndVerifyClientCert, ClientCAs from caSecPath's Root.CA.crt).
// The reference applies it to the ATS (atServer.go) and the HTTP and
// WebSocket managers (managerhandlers.go), not to the AGT server, whose
// TLSConfig is commented out (agt_server.go initAgtServer).
func WAIIClientAuth(serverCertOpt string, rootCA *x509.CertPool) (tls.ClientAuthType, *x509.CertPool) {
	switch serverCertOpt {
	case "NoClientCert":
		return tls.NoClientCert, nil
	case "ClientCertNoVerification":
		return tls.RequireAnyClientCert, nil
	}
	return tls.RequireAndVerifyClientCert, rootCA
}
