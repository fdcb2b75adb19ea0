package sim

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
)

// Echo is an HTTP upstream for proxy tests. It serves, on any path:
//
//	?size=N       a body of N deterministic bytes (Pattern), streamed
//	(otherwise)   JSON describing the request: method, host, path, proto,
//	              headers, and the byte count and SHA-256 of its body
//
// When RequireHeader is set, requests without that header value get 401.
// Echo is safe for concurrent use.
type Echo struct {
	RequireHeader, RequireValue string
	requests                    atomic.Int64
}

// Seen is what Echo reports about a request.
type Seen struct {
	Method    string      `json:"method"`
	Host      string      `json:"host"`
	Path      string      `json:"path"`
	RawQuery  string      `json:"raw_query"`
	Proto     string      `json:"proto"`
	TLS       bool        `json:"tls"`
	Header    http.Header `json:"header"`
	BodyBytes int64       `json:"body_bytes"`
	BodySHA   string      `json:"body_sha256"`
}

// Requests reports how many requests Echo has served.
func (e *Echo) Requests() int64 { return e.requests.Load() }

func (e *Echo) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.requests.Add(1)
	if e.RequireHeader != "" && r.Header.Get(e.RequireHeader) != e.RequireValue {
		http.Error(w, "sim: missing or wrong "+e.RequireHeader, http.StatusUnauthorized)
		return
	}
	if s := r.URL.Query().Get("size"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "sim: bad size", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		_, _ = io.Copy(w, io.LimitReader(&Pattern{}, n))
		return
	}
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, "sim: reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(Seen{
		Method: r.Method, Host: r.Host, Path: r.URL.Path, RawQuery: r.URL.RawQuery,
		Proto: r.Proto, TLS: r.TLS != nil, Header: r.Header,
		BodyBytes: n, BodySHA: hex.EncodeToString(h.Sum(nil)),
	})
}

// Pattern is an endless reader of deterministic bytes (i mod 251), for
// large bodies that need no memory.
type Pattern struct{ off int64 }

func (p *Pattern) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = byte((p.off + int64(i)) % 251)
	}
	p.off += int64(len(b))
	return len(b), nil
}
