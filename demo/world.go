// Package demo runs authproxy's five systems offline: it starts the
// simulated upstreams of sim on loopback (openOBD, ODIL, OBH Mobility's
// Zitadel and API, Obelisk, a VISS server) and a TLS echo, writes a proxy
// configuration for them, and drives sample clients through the proxy's
// sidecar and forward listeners, reporting what each upstream received.
//
// The command (authproxy demo) runs the proxy itself, on the config
// written here, exactly as authproxy run would.
package demo

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/template"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	_ "embed"

	"github.com/authproxy/authproxy/sim"
)

// The demo's upstream host names; upstream.resolve sends each to 127.0.0.1.
const (
	hostOBD     = "grpc.openobd.demo.test"
	hostSession = "session.openobd.demo.test"
	hostODIL    = "odil.demo.test"
	hostOBH     = "obh.demo.test"
	hostObelisk = "obelisk.demo.test"
	hostVISS    = "viss.demo.test"
	hostEcho    = "echo.demo.test"
)

var hosts = []string{hostOBD, hostSession, hostODIL, hostOBH, hostObelisk, hostVISS, hostEcho}

// Timings, compressed so that a minute of the demo shows what hours of
// production would: openOBD rotates session tokens every ~2 minutes, here
// every RotateEvery.
const (
	RotateEvery   = 2 * time.Second
	obeliskIdle   = 8  // s, Obelisk's expires_in (its idle lifetime)
	obeliskValid  = 12 // s, Obelisk's max_valid_time (its absolute lifetime)
	obhLifetime   = 20 // s, Zitadel's expires_in
	vissATLife    = 15 * time.Second
	controllerTTL = "30s"
	minBackoff    = 250 * time.Millisecond // token_cache.min_backoff
)

//go:embed config.yaml.tmpl
var configTemplate string

// World is the set of simulated upstreams and the config written for them.
type World struct {
	// ConfigPath is the proxy configuration for the upstreams (in the
	// directory given to Start).
	ConfigPath string

	obd     *sim.OpenOBD
	odil    *sim.ODIL
	obh     *sim.TokenServer
	obelisk *sim.TokenServer
	viss    *sim.VISS

	// What each upstream last received, and its port, by system.
	seen  map[string]*recorder
	ports map[string]string

	secrets []string // every secret written for the proxy, for leak checks
	fileErr error    // the first secret file that could not be written
	closers []func()
}

// Start starts every simulated upstream on 127.0.0.1 (free ports), and
// writes into dir the secrets, the Zitadel key file and the proxy's
// configuration (World.ConfigPath). Close stops the upstreams.
func Start(dir string) (w *World, err error) {
	w = &World{seen: map[string]*recorder{}, ports: map[string]string{}}
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	pki, err := sim.NewPKI(dir)
	if err != nil {
		return nil, err
	}
	tlsCfg, err := pki.ServerTLS(hosts...)
	if err != nil {
		return nil, err
	}
	v := map[string]any{"Dir": dir, "UpstreamCA": pki.CAFile, "Hosts": hosts, "RotateEvery": RotateEvery.String(), "ControllerTTL": controllerTTL, "MinBackoff": minBackoff.String()}

	// openOBD: one gRPC server stands for the controller and the session
	// endpoint (sim.OpenOBD shares its state between them).
	obdSecret := w.secret()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	obdPort := portOf(ln.Addr())
	w.obd = &sim.OpenOBD{ClientID: "demo-garage", ClientSecret: obdSecret, ClusterID: "001",
		RotateEvery: RotateEvery, Grace: RotateEvery, Endpoints: []string{hostSession + ":" + obdPort}}
	w.seen["openOBD"] = &recorder{}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			w.seen["openOBD"].grpc(ctx, info.FullMethod)
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			w.seen["openOBD"].grpc(ss.Context(), info.FullMethod)
			return h(srv, ss)
		}))
	w.obd.Register(gs)
	go func() { _ = gs.Serve(ln) }()
	w.closers = append(w.closers, gs.Stop)
	v["OBDPort"], v["OBDClientID"], v["OBDSecret"] = obdPort, w.obd.ClientID, w.file(dir, "openobd-client-secret", obdSecret)

	// ODIL: a session bought with a SAS token, rolled on every response.
	w.odil = &sim.ODIL{KeyName: "odil-demo", Key: w.secret(), APICode: "TR:SB:OneDealer:OD", Username: "dealer-api", Password: w.secret()}
	w.seen["ODIL"] = &recorder{header: "Session"}
	if v["ODILPort"], err = w.serveAs("ODILPort", tlsCfg, w.seen["ODIL"].wrap(w.odil)); err != nil {
		return nil, err
	}
	v["ODILPassword"], v["ODILKey"] = w.file(dir, "odil-password", w.odil.Password), w.file(dir, "odil-sas-key", w.odil.Key)

	// OBH Mobility: Zitadel's JWT-bearer grant with a service user's key
	// file; the API accepts only live tokens from it.
	keyFile, pub, err := w.zitadelKey(dir, "demo-service-user")
	if err != nil {
		return nil, err
	}
	w.obh = &sim.TokenServer{Mode: "zitadel", UserID: "demo-service-user", KeyID: "demo-key", PublicKey: pub, ExpiresIn: obhLifetime}
	w.seen["OBH"] = &recorder{header: "Authorization"}
	obhMux := http.NewServeMux()
	obhMux.Handle("/oauth/v2/token", w.obh)
	obhMux.Handle("/", w.seen["OBH"].wrap(w.obh.RequireToken(&sim.Echo{})))
	if v["OBHPort"], err = w.serveAs("OBHPort", tlsCfg, obhMux); err != nil {
		return nil, err
	}
	w.obh.Issuer = fmt.Sprintf("https://%s:%s", hostOBH, v["OBHPort"])
	v["OBHKeyFile"] = keyFile

	// Obelisk: Basic client authentication, a JSON body, and a token with
	// an idle (expires_in) and an absolute (max_valid_time) lifetime.
	w.obelisk = &sim.TokenServer{ClientID: "demo-obelisk", ClientSecret: w.secret(), Auth: "basic-raw", JSONBody: true,
		Obelisk: true, ExpiresIn: obeliskIdle, MaxValid: obeliskValid}
	w.seen["Obelisk"] = &recorder{header: "Authorization"}
	obeliskMux := http.NewServeMux()
	obeliskMux.Handle("/api/v3/auth/token", w.obelisk)
	obeliskMux.Handle("/", w.seen["Obelisk"].wrap(w.obelisk.RequireToken(&sim.Echo{})))
	if v["ObeliskPort"], err = w.serveAs("ObeliskPort", tlsCfg, obeliskMux); err != nil {
		return nil, err
	}
	v["ObeliskClientID"], v["ObeliskSecret"] = w.obelisk.ClientID, w.file(dir, "obelisk-client-secret", w.obelisk.ClientSecret)

	// VISS: the AGTS, the ATS and the data server on ports of their own,
	// as the reference (WAII) runs them.
	w.viss = sim.NewVISS()
	w.viss.ATLife = vissATLife
	w.closers = append(w.closers, w.viss.Close)
	w.seen["VISS"] = &recorder{header: "Authorization"}
	if v["AGTSPort"], err = w.serveAs("AGTSPort", tlsCfg, w.viss.AGTS()); err != nil {
		return nil, err
	}
	if v["ATSPort"], err = w.serveAs("ATSPort", tlsCfg, w.viss.ATS()); err != nil {
		return nil, err
	}
	if v["VISSPort"], err = w.serveAs("VISSPort", tlsCfg, w.seen["VISS"].wrap(w.viss.Data())); err != nil {
		return nil, err
	}

	// A static header on everything else: a TLS echo that wants it.
	apiKey := w.secret()
	w.seen["static"] = &recorder{header: "X-Api-Key"}
	if v["EchoPort"], err = w.serveAs("EchoPort", tlsCfg, w.seen["static"].wrap(&sim.Echo{RequireHeader: "X-Api-Key", RequireValue: apiKey})); err != nil {
		return nil, err
	}
	v["EchoKey"] = w.file(dir, "echo-api-key", apiKey)

	if w.fileErr != nil {
		return nil, w.fileErr
	}
	var b strings.Builder
	tmpl := template.Must(template.New("config").Option("missingkey=error").Parse(configTemplate))
	if err := tmpl.Execute(&b, v); err != nil {
		return nil, err
	}
	w.ConfigPath = filepath.Join(dir, "authproxy-demo.yaml")
	if err := os.WriteFile(w.ConfigPath, []byte(b.String()), 0o600); err != nil {
		return nil, err
	}
	return w, nil
}

// Close stops every simulated upstream.
func (w *World) Close() {
	for i := len(w.closers) - 1; i >= 0; i-- {
		w.closers[i]()
	}
	w.closers = nil
}

// Secrets are the secrets the proxy was given, and Seen every credential
// the upstreams received: none may appear in what the demo prints.
func (w *World) Secrets() []string { return append([]string(nil), w.secrets...) }

// Seen returns every credential value the upstreams received.
func (w *World) Seen() []string {
	var out []string
	for _, r := range w.seen {
		out = append(out, r.all()...)
	}
	return out
}

func (w *World) secret() string {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	s := hex.EncodeToString(b)
	w.secrets = append(w.secrets, s)
	return s
}

// file writes a secret into dir (mode 0600) and returns its path.
// A failure is kept for Start to report (the first one).
func (w *World) file(dir, name, secret string) string {
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil && w.fileErr == nil {
		w.fileErr = err
	}
	return path
}

// serve starts an HTTPS server (HTTP/2 and HTTP/1.1) for h on a free
// loopback port and returns the port.
func (w *World) serve(tlsCfg *tls.Config, h http.Handler) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: h, TLSConfig: tlsCfg.Clone(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: discardLog}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	w.closers = append(w.closers, func() { _ = srv.Close() })
	return portOf(ln.Addr()), nil
}

// serveAs is serve, noting the port under name.
func (w *World) serveAs(name string, tlsCfg *tls.Config, h http.Handler) (string, error) {
	port, err := w.serve(tlsCfg, h)
	w.ports[name] = port
	return port, err
}

// zitadelKey writes a service user's key file as Zitadel issues it.
func (w *World) zitadelKey(dir, user string) (string, *rsa.PublicKey, error) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", nil, err
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
	b, err := json.Marshal(map[string]string{"type": "serviceaccount", "keyId": "demo-key", "key": string(pemKey), "userId": user})
	if err != nil {
		return "", nil, err
	}
	path := filepath.Join(dir, "obh-service-user.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", nil, err
	}
	w.secrets = append(w.secrets, string(pemKey))
	return path, &k.PublicKey, nil
}

func portOf(a net.Addr) string {
	_, p, _ := net.SplitHostPort(a.String())
	return p
}

// recorder notes the credential an upstream received, keeping the values
// only to prove they are never printed; what is shown is a fingerprint.
type recorder struct {
	header string // the HTTP header; "" for gRPC (authorization metadata)

	mu     sync.Mutex
	last   string
	method string // gRPC: the call that carried last
	values map[string]bool
}

func (r *recorder) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, req *http.Request) {
		r.note(req.Header.Get(r.header), "")
		h.ServeHTTP(rw, req)
	})
}

func (r *recorder) grpc(ctx context.Context, method string) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("authorization"); len(v) > 0 {
		r.note(v[0], method[strings.LastIndex(method, "/")+1:])
	}
}

func (r *recorder) note(v, method string) {
	if v == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.values == nil {
		r.values = map[string]bool{}
	}
	if len(r.values) < 10000 {
		r.values[v] = true
	}
	r.last, r.method = v, method
}

// shown is the last credential as the table prints it: the header, a
// scheme such as Bearer, and a fingerprint of the rest.
func (r *recorder) shown() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == "" {
		return "-"
	}
	name := r.header
	if name == "" {
		name = "authorization"
	}
	scheme, rest := "", r.last
	if s, t, ok := strings.Cut(r.last, " "); ok && !strings.ContainsAny(s, "=.") {
		scheme, rest = s+" ", t
	}
	out := name + ": " + scheme + Fingerprint(rest)
	if r.method != "" {
		out += " (" + r.method + ")"
	}
	return out
}

func (r *recorder) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.values)
}

func (r *recorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Collect(maps.Keys(r.values))
}

// Fingerprint names a credential without showing it: the first 8 hex
// digits of its SHA-256, enough to see it change.
func Fingerprint(v string) string {
	sum := sha256.Sum256([]byte(v))
	return "#" + hex.EncodeToString(sum[:4])
}

// discardLog silences the simulators' servers (a client that goes away
// mid-handshake is no news in a demo).
var discardLog = log.New(io.Discard, "", 0)
