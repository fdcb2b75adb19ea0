package injectors

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/openobd/pb"
	"github.com/authproxy/authproxy/tokencache"
	"github.com/authproxy/authproxy/transport"
)

// issuerKind builds an injector of one kind against an issuer at base (an
// https URL), and says which secrets it was given.
type issuerKind struct {
	name    string
	secrets []string
	build   func(t *testing.T, base string, env Env) Injector
}

// A secret with characters that every encoding changes.
const (
	echoSecret = `S3cr3t/+&="<é>%?\ long-enough`
	echoProof  = `Pr00f/+&="<é>%?\ of-context`
	echoSASKey = `SASkey/+&="<é>%?\ signing`
)

func issuerKinds() []issuerKind {
	oauth2 := func(style string) func(*testing.T, string, Env) Injector {
		return func(t *testing.T, base string, env Env) Injector {
			o, err := NewOAuth2("oauth2", OAuth2Config{TokenURL: base + "/oauth/v2/token?tenant=x",
				ClientID: secretValue("client:id"), ClientSecret: secretValue(echoSecret), AuthStyle: style}, env)
			if err != nil {
				t.Fatal(err)
			}
			return o
		}
	}
	return []issuerKind{
		{"oauth2 client_secret_basic", []string{echoSecret}, oauth2("client_secret_basic")},
		{"oauth2 client_secret_post", []string{echoSecret}, oauth2("client_secret_post")},
		{"oauth2 obelisk (raw basic, json body)", []string{echoSecret}, func(t *testing.T, base string, env Env) Injector {
			o, err := NewOAuth2("obelisk", OAuth2Config{Preset: "obelisk", TokenURL: base + "/api/v3/auth/token",
				ClientID: secretValue("clientid"), ClientSecret: secretValue(echoSecret)}, env)
			if err != nil {
				t.Fatal(err)
			}
			return o
		}},
		{"odil", []string{echoSecret, echoSASKey}, func(t *testing.T, base string, env Env) Injector {
			o, err := NewODIL("odil", ODILConfig{BaseURL: base, Username: secretValue("user"), Password: secretValue(echoSecret),
				SAS: SASConfig{KeyName: secretValue("keyname"), Key: secretValue(echoSASKey)}}, env)
			if err != nil {
				t.Fatal(err)
			}
			return o
		}},
		{"viss agts", []string{echoProof}, func(t *testing.T, base string, env Env) Injector {
			v, err := NewVISS("viss", VISSConfig{AGTSURL: base + "/agts", VIN: "VIN1", Context: "Independent+OEM+Cloud",
				Proof: secretValue(echoProof), LongTerm: &VISSLongTerm{KeyFile: filepath.Join(t.TempDir(), "pop.key")}}, env)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}},
		{"viss ats", []string{echoProof}, func(t *testing.T, base string, env Env) Injector {
			v, err := NewVISS("viss", VISSConfig{AGTSURL: base + "/agts-ok", ATSURL: base + "/ats", VIN: "VIN1",
				Context: "Independent+OEM+Cloud", Purpose: "fuel-status", Proof: secretValue(echoProof),
				LongTerm: &VISSLongTerm{KeyFile: filepath.Join(t.TempDir(), "pop.key")}}, env)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}},
	}
}

// fakeAGT is a JWT-shaped token that expires in an hour.
func fakeAGT() string {
	enc := base64.RawURLEncoding
	claims, _ := json.Marshal(map[string]string{"exp": strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)})
	return enc.EncodeToString([]byte(`{"alg":"RS256"}`)) + "." + enc.EncodeToString(claims) + ".c2ln"
}

// serveAGT answers /agts-ok with an AGT, for the kinds that get to the ATS.
func serveAGT(w http.ResponseWriter, r *http.Request) bool {
	if r.URL.Path != "/agts-ok" {
		return false
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"action":"agt-request","token":%q}`, fakeAGT())
	return true
}

// An issuer that redirects gets no second request anywhere: not over
// plain HTTP, not to another TLS host, and not even to itself after the
// backoff window the failure opens.
func TestIssuerRedirectsAreNeverFollowed(t *testing.T) {
	var sunk atomic.Int64
	sink := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sunk.Add(1)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"access_token":"stolen","token":"stolen","Session":"stolen","expires_in":3600}`)
	})
	plainSink := httptest.NewServer(sink)
	defer plainSink.Close()
	tlsSink := httptest.NewTLSServer(sink) // httptest's certificate: trusted by the issuer's client too
	defer tlsSink.Close()

	for _, kind := range issuerKinds() {
		for _, target := range []*httptest.Server{plainSink, tlsSink} {
			for _, code := range []int{http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
				t.Run(fmt.Sprintf("%s/%d to %s", kind.name, code, target.URL[:5]), func(t *testing.T) {
					sunk.Store(0)
					var asked atomic.Int64
					issuer := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						if serveAGT(w, r) {
							return
						}
						asked.Add(1)
						http.Redirect(w, r, target.URL+"/steal?code=secret-query", code)
					}))
					defer issuer.Close()
					env := Env{Cache: tokencache.New(tokencache.Options{FetchTimeout: 2 * time.Second, MinBackoff: time.Minute}),
						HTTPClient: issuer.Client()}
					inj := kind.build(t, issuer.URL, env)
					for range 3 {
						err := inj.Inject(newRequest(t, "https://api.example.com/x", nil))
						if !errors.Is(err, ErrCredentialRejected) {
							t.Fatalf("got %v, want a rejection", err)
						}
						msg := err.Error()
						if !strings.Contains(msg, strconv.Itoa(code)) || !strings.Contains(msg, "redirect to "+target.URL) {
							t.Errorf("the error should name the status and the Location's scheme and host: %s", msg)
						}
						if strings.Contains(msg, "steal") || strings.Contains(msg, "secret-query") {
							t.Errorf("the error shows the Location's path or query: %s", msg)
						}
					}
					if n := sunk.Load(); n != 0 {
						t.Errorf("the redirect target received %d requests", n)
					}
					if n := asked.Load(); n != 1 {
						t.Errorf("the issuer was asked %d times; a redirect must be backed off like any failure", n)
					}
				})
			}
		}
	}
}

// echoRequest writes the whole request, head and body, after pad bytes of
// padding, as an error body.
func echoRequest(w http.ResponseWriter, r *http.Request, pad int, status int) {
	body, _ := io.ReadAll(r.Body)
	var b strings.Builder
	b.WriteString(strings.Repeat("x", pad))
	fmt.Fprintf(&b, "%s %s\n", r.Method, r.URL.RequestURI())
	for k, vs := range r.Header {
		for _, v := range vs {
			fmt.Fprintf(&b, "%s: %s\n", k, v)
		}
	}
	b.Write(body)
	w.WriteHeader(status)
	_, _ = io.WriteString(w, b.String())
}

// leaks reports the first piece of a secret (8 characters or more) found
// in out.
func leaks(out string, secrets ...string) string {
	for _, s := range secrets {
		for i := 0; i+8 <= len(s); i++ {
			if strings.Contains(out, s[i:i+8]) {
				return s[i : i+8]
			}
		}
	}
	return ""
}

// An issuer that echoes its whole request into its error, with padding
// that moves the secret across the excerpt's cut byte by byte, never gets
// a piece of a secret into the error, in any encoding the proxy sent it.
func TestIssuerEchoesNeverLeakASecret(t *testing.T) {
	var pad atomic.Int64
	var asJSON atomic.Bool
	var lastAuth atomic.Value
	issuer := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if serveAGT(w, r) {
			return
		}
		lastAuth.Store(r.Header.Get("Authorization") + " " + r.Header.Get("Pop"))
		if asJSON.Load() { // the echo inside an OAuth2 error description
			var b strings.Builder
			echoRequest(&recorder{w: &b}, r, int(pad.Load()), 0)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "invalid_request", "error_description": b.String()})
			return
		}
		echoRequest(w, r, int(pad.Load()), http.StatusBadRequest)
	}))
	defer issuer.Close()
	for _, kind := range issuerKinds() {
		for _, js := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s json=%v", kind.name, js), func(t *testing.T) {
				asJSON.Store(js)
				for p := 0; p <= 250; p++ {
					pad.Store(int64(p))
					env := Env{Cache: tokencache.New(tokencache.Options{FetchTimeout: 2 * time.Second}), HTTPClient: issuer.Client()}
					err := kind.build(t, issuer.URL, env).Inject(newRequest(t, "https://api.example.com/x", nil))
					if err == nil {
						t.Fatal("the echoing issuer gave a credential")
					}
					sent, _ := lastAuth.Load().(string)
					if piece := leaks(err.Error(), append(kind.secrets, signatures(sent)...)...); piece != "" {
						t.Fatalf("padding %d: the error holds %q: %s", p, piece, err)
					}
					for _, tok := range strings.Fields(sent) {
						if len(tok) > 20 && strings.Contains(err.Error(), tok) {
							t.Fatalf("padding %d: the error holds the credential sent: %s", p, err)
						}
					}
				}
			})
		}
	}
}

// signatures are the secret parts of the per-request credentials in an
// Authorization or PoP header: a SAS token's signature, a JWT's.
func signatures(header string) []string {
	var out []string
	for _, f := range strings.Fields(header) {
		for _, kv := range strings.Split(f, "&") {
			if v, ok := strings.CutPrefix(kv, "sig="); ok {
				out = append(out, v)
				if u, err := url.QueryUnescape(v); err == nil {
					out = append(out, u)
				}
			}
		}
		if parts := strings.Split(f, "."); len(parts) == 3 {
			out = append(out, parts[2])
		}
	}
	return out
}

// recorder is a minimal ResponseWriter into a builder.
type recorder struct{ w *strings.Builder }

func (r *recorder) Header() http.Header         { return http.Header{} }
func (r *recorder) Write(b []byte) (int, error) { return r.w.Write(b) }
func (r *recorder) WriteHeader(int)             {}

// echoController is an openOBD session controller that refuses every
// token request with a status message echoing the request.
type echoController struct {
	pb.UnimplementedSessionControllerServer
	pad int
}

func (e *echoController) GetSessionControllerToken(ctx context.Context, a *pb.Authenticate) (*pb.SessionControllerToken, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	return nil, status.Errorf(codes.Unauthenticated, "%s client_id=%s client_secret=%s cluster=%s md=%v",
		strings.Repeat("x", e.pad), a.ClientId, a.ClientSecret, a.ClusterId, md)
}

func TestOpenOBDControllerEchoNeverLeaksTheSecret(t *testing.T) {
	srv := httptest.NewUnstartedServer(nil)
	srv.StartTLS() // for httptest's certificate and the client that trusts it
	roots := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	cert := srv.TLS.Certificates[0]
	srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctl := &echoController{}
	gs := grpc.NewServer(grpc.Creds(credentials.NewServerTLSFromCert(&cert)))
	pb.RegisterSessionControllerServer(gs, ctl)
	go gs.Serve(ln)
	defer gs.Stop()
	tr, err := transport.New(config.Upstream{})
	if err != nil {
		t.Fatal(err)
	}
	tr.TLS.TLSClientConfig.RootCAs = roots
	for p := 0; p <= 250; p++ {
		ctl.pad = p
		o, err := NewOpenOBD("obd", OpenOBDConfig{Endpoint: ln.Addr().String(), ClientID: secretValue("id"),
			ClientSecret: secretValue(echoSecret), ClusterID: "001"},
			Env{Cache: tokencache.New(tokencache.Options{FetchTimeout: 2 * time.Second}), Transport: tr})
		if err != nil {
			t.Fatal(err)
		}
		r := newRequest(t, "https://grpc.openobd.com/openOBD.v1.sessionController/startSessionOnTicket", nil)
		err = o.Inject(r)
		if !errors.Is(err, ErrCredentialRejected) {
			t.Fatalf("got %v, want a rejection", err)
		}
		if piece := leaks(err.Error(), echoSecret); piece != "" {
			t.Fatalf("padding %d: the error holds %q: %s", p, piece, err)
		}
	}
}

func TestScrubberEncodings(t *testing.T) {
	var s scrubber
	s.add(echoSecret)
	s.addBasic("client:id", echoSecret)
	for _, enc := range append(encodings(echoSecret),
		base64.StdEncoding.EncodeToString([]byte("client:id:"+echoSecret)),
		base64.StdEncoding.EncodeToString([]byte("client%3Aid:"+strings.ReplaceAll(url.QueryEscape(echoSecret), "%20", "+")))) {
		if out := s.scrub("before " + enc + " after"); out != "before REDACTED after" {
			t.Errorf("%q scrubbed to %q", enc, out)
		}
	}
	if out := s.scrub("the SAS was tok-123456", "tok-123456"); out != "the SAS was REDACTED" {
		t.Errorf("extras not scrubbed: %q", out)
	}
}
