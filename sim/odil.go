package sim

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ODIL simulates the OneDealer integration layer: session/create checks a
// Service Bus SAS token (signature, expiry, key name), the API code and the
// user's credentials; every other /api/ call needs a live session in the
// Session header, answers with a renewed one, and describes the request
// (like Echo, plus the session it carried). Sessions idle longer than
// IdleTimeout expire. It is safe for concurrent use once configured.
type ODIL struct {
	KeyName, Key       string
	APICode            string
	Username, Password string
	IdleTimeout        time.Duration // default 20m
	Now                func() time.Time

	mu       sync.Mutex
	sessions map[string]time.Time // session -> last use
	creates  atomic.Int64
	calls    atomic.Int64
}

// ODILSeen is what the simulated API reports about a call.
type ODILSeen struct {
	Seen
	Session string `json:"session"` // the session the call carried
	Renewed string `json:"renewed"` // the session it handed out
}

// Creates reports how many session/create calls it received.
func (o *ODIL) Creates() int64 { return o.creates.Load() }

// Calls reports how many API calls succeeded.
func (o *ODIL) Calls() int64 { return o.calls.Load() }

// ExpireAll ends every session, as an idle timeout would.
func (o *ODIL) ExpireAll() {
	o.mu.Lock()
	for s := range o.sessions {
		o.sessions[s] = time.Time{}
	}
	o.mu.Unlock()
}

func (o *ODIL) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

func odilError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"Code": code, "Type": nil, "Source": 0, "Message": msg,
		"Details": nil, "ReferenceCode": "sim-ref", "ErrorData": nil})
}

func newSessionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (o *ODIL) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasSuffix(r.URL.Path, "/session/create") {
		o.create(w, r)
		return
	}
	o.api(w, r)
}

func (o *ODIL) create(w http.ResponseWriter, r *http.Request) {
	o.creates.Add(1)
	if r.Method != http.MethodPost {
		odilError(w, http.StatusMethodNotAllowed, "uri:TR:ErrorCodes:Common:MethodNotAllowed", "POST only")
		return
	}
	if !o.validSAS(r.Header.Get("Authorization")) {
		odilError(w, http.StatusUnauthorized, "uri:TR:ErrorCodes:Common:InvalidToken", "Invalid Token")
		return
	}
	var body struct {
		Target      struct{ ApiCode string }
		Credentials struct{ Username, Password string }
	}
	if json.NewDecoder(r.Body).Decode(&body) != nil || body.Target.ApiCode != o.APICode {
		odilError(w, http.StatusBadRequest, "uri:TR:ErrorCodes:Common:InvalidRequest", "Unknown ApiCode")
		return
	}
	if body.Credentials.Username != o.Username || body.Credentials.Password != o.Password {
		odilError(w, http.StatusBadRequest, "uri:TR:ErrorCodes:AuthenticationFailed", "Authentication failed")
		return
	}
	s := o.NewSession()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"BackendCode": "5E2D903E-0EC2-47E4-810D-D334A9335E84", "Session": s, "UserClaims": nil, "UserData": nil})
}

// validSAS checks a Service Bus SAS token the way the service does.
func (o *ODIL) validSAS(h string) bool {
	raw, ok := strings.CutPrefix(h, "SharedAccessSignature ")
	if !ok {
		return false
	}
	v, err := url.ParseQuery(raw)
	if err != nil {
		return false
	}
	se, err := strconv.ParseInt(v.Get("se"), 10, 64)
	if err != nil || time.Unix(se, 0).Before(o.now()) || v.Get("skn") != o.KeyName {
		return false
	}
	mac := hmac.New(sha256.New, []byte(o.Key))
	mac.Write([]byte(url.QueryEscape(v.Get("sr")) + "\n" + v.Get("se")))
	want := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	return hmac.Equal([]byte(want), []byte(v.Get("sig")))
}

func (o *ODIL) api(w http.ResponseWriter, r *http.Request) {
	session := r.Header.Get("Session")
	idle := o.IdleTimeout
	if idle == 0 {
		idle = 20 * time.Minute
	}
	now := o.now()
	o.mu.Lock()
	last, ok := o.sessions[session]
	switch {
	case !ok:
		o.mu.Unlock()
		odilError(w, http.StatusBadRequest, "uri:TR:ErrorCodes:Common:SessionInvalid", "Invalid Session")
		return
	case now.Sub(last) >= idle:
		delete(o.sessions, session)
		o.mu.Unlock()
		odilError(w, http.StatusBadRequest, "uri:TR:ErrorCodes:Common:SessionExpired", "Session Expired")
		return
	}
	// Renew: a new session value; the old one stays valid until it idles out.
	renewed := newSessionID()
	o.sessions[session] = now
	o.sessions[renewed] = now
	o.mu.Unlock()
	h := sha256.New()
	n, _ := io.Copy(h, r.Body)
	o.calls.Add(1)
	w.Header().Set("Session", renewed)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(ODILSeen{
		Seen: Seen{Method: r.Method, Host: r.Host, Path: r.URL.Path, Proto: r.Proto, TLS: r.TLS != nil,
			Header: r.Header, BodyBytes: n, BodySHA: hex.EncodeToString(h.Sum(nil))},
		Session: session, Renewed: renewed,
	})
}

// Valid reports whether session is one the server would take now.
func (o *ODIL) Valid(session string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, ok := o.sessions[session]
	return ok
}

// NewSession starts a session as session/create would, for a client that
// holds one already (a benchmark's direct path).
func (o *ODIL) NewSession() string {
	s := newSessionID()
	o.mu.Lock()
	if o.sessions == nil {
		o.sessions = map[string]time.Time{}
	}
	o.sessions[s] = o.now()
	o.mu.Unlock()
	return s
}
