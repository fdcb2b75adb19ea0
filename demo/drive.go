package demo

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/authproxy/authproxy/openobd/pb"
	"github.com/authproxy/authproxy/sim"
)

// Proxy is where the running proxy listens.
type Proxy struct {
	Sidecars map[string]string // listener name -> host:port
	Forward  string            // the forward listener's host:port
	Admin    string            // the admin listener's host:port
	CACert   string            // the interception CA's certificate (PEM file)
}

// Options shape a run of Drive.
type Options struct {
	Once     bool          // one pass, then return its verdict
	Interval time.Duration // between passes (default 1 s)
	Live     bool          // redraw the table in place (a terminal)
}

// system is one upstream system and the client the demo drives for it.
type system struct {
	name, mode string
	rec        *recorder
	step       func(ctx context.Context, pass int) (string, error) // returns the last status
	issuer     func() string                                       // what the issuer side has handed out

	requests int
	last     string
	err      error
}

// Drive runs sample clients through the proxy: one pass with Once (it
// returns an error naming every system that failed), otherwise a pass per
// Interval until ctx ends. After each pass it prints the table to out.
func (w *World) Drive(ctx context.Context, p Proxy, opts Options, out io.Writer) error {
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	d, err := w.newDriver(p)
	if err != nil {
		return err
	}
	defer d.close()
	for pass := 0; ; pass++ {
		passCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
		var wg sync.WaitGroup
		for _, s := range d.systems {
			wg.Go(func() {
				s.last, s.err = s.step(passCtx, pass)
			})
		}
		wg.Wait()
		cancel()
		if ctx.Err() != nil && !opts.Once {
			return nil
		}
		d.print(out, pass, opts)
		if opts.Once {
			var errs []error
			for _, s := range d.systems {
				if s.err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", s.name, s.err))
				}
			}
			return errors.Join(errs...)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(opts.Interval):
		}
	}
}

type driver struct {
	odilExpiries atomic.Int64
	w            *World
	p            Proxy
	systems      []*system
	closers      []func()
}

func (w *World) newDriver(p Proxy) (*driver, error) {
	d := &driver{w: w, p: p}
	caPEM, err := os.ReadFile(p.CACert)
	if err != nil {
		return nil, fmt.Errorf("the proxy's CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("the proxy's CA: %s holds no certificate", p.CACert)
	}
	fwd, err := url.Parse("http://" + p.Forward)
	if err != nil {
		return nil, err
	}
	// Clients as applications would have them: plain to a sidecar, and
	// through HTTPS_PROXY (trusting the proxy's CA) to real host names.
	h1, h2, h2c := new(http.Protocols), new(http.Protocols), new(http.Protocols)
	h1.SetHTTP1(true)
	h2.SetHTTP2(true)
	h2c.SetUnencryptedHTTP2(true)
	client := func(proxy *url.URL, protos *http.Protocols) *http.Client {
		tr := &http.Transport{Protocols: protos, TLSClientConfig: &tls.Config{RootCAs: roots}}
		if proxy != nil {
			tr.Proxy = http.ProxyURL(proxy)
		}
		d.closers = append(d.closers, tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 10 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	sidecarH1, sidecarH2C := client(nil, h1), client(nil, h2c)
	forwardH1, forwardH2 := client(fwd, h1), client(fwd, h2)

	obd, err := d.openOBD()
	if err != nil {
		return nil, err
	}
	d.systems = []*system{obd, {
		name: "ODIL", mode: "forward, CONNECT, h1", rec: w.seen["ODIL"],
		issuer: func() string {
			return fmt.Sprintf("sessions created %d (%d expired upstream)", w.odil.Creates(), d.odilExpiries.Load())
		},
	}, {
		name: "OBH Mobility", mode: "sidecar, h1", rec: w.seen["OBH"],
		issuer: func() string {
			return fmt.Sprintf("tokens %d (JWT-bearer, %d mounts)", w.obh.Calls(), len(w.obh.Scopes()))
		},
	}, {
		name: "Obelisk", mode: "forward, CONNECT, h2", rec: w.seen["Obelisk"],
		issuer: func() string {
			return fmt.Sprintf("tokens %d (idle %ds, absolute %ds)", w.obelisk.Calls(), obeliskIdle, obeliskValid)
		},
	}, {
		name: "VISS", mode: "sidecar, h2c", rec: w.seen["VISS"],
		issuer: func() string {
			return fmt.Sprintf("AGT %d (long-term, PoP), AT %d", w.viss.AGTRequests(), w.viss.AccessTokensIssued())
		},
	}, {
		name: "static", mode: "forward, CONNECT, h1", rec: w.seen["static"],
		issuer: func() string { return "fixed header" },
	}}
	odil, obh, obelisk, viss, static := d.systems[1], d.systems[2], d.systems[3], d.systems[4], d.systems[5]

	odilURL := fmt.Sprintf("https://%s:%s/api/od/vehicles", hostODIL, w.ports["ODILPort"])
	odil.step = func(ctx context.Context, pass int) (string, error) {
		st, err := d.get(ctx, odil, forwardH1, odilURL, nil, "")
		if err != nil || pass%15 != 0 {
			return st, err
		}
		// The session expires upstream (an idle timeout): the next
		// request must still succeed, on a session the proxy re-created.
		// (The proxy keeps a session younger than token_cache.min_backoff
		// whatever ODIL says, so that a confused server cannot make it
		// create sessions in a loop: this one has lived longer.)
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(2 * minBackoff):
		}
		before := w.odil.Creates()
		w.odil.ExpireAll()
		d.odilExpiries.Add(1)
		if st, err = d.get(ctx, odil, forwardH1, odilURL, nil, ""); err != nil {
			return st, fmt.Errorf("after the session expired: %w", err)
		}
		if w.odil.Creates() != before+1 {
			return st, fmt.Errorf("the expired session was not re-created (%d creates, want %d)", w.odil.Creates(), before+1)
		}
		return st, nil
	}

	mounts := []string{"BgfBtrPrRPaz7pQU", "Mq3xZ9e1", "K7pL0dWa"}
	obh.step = func(ctx context.Context, pass int) (string, error) {
		var st string
		for _, m := range mounts {
			var err error
			if st, err = d.get(ctx, obh, sidecarH1, "http://"+p.Sidecars["obh"]+"/api/mounts/"+m+"/status", nil, ""); err != nil {
				return st, fmt.Errorf("mount %s: %w", m, err)
			}
		}
		if n := len(w.obh.Scopes()); n != len(mounts) {
			return st, fmt.Errorf("Zitadel saw %d scope sets, want one per mount (%d)", n, len(mounts))
		}
		return st, nil
	}

	obeliskURL := fmt.Sprintf("https://%s:%s/api/v3/things/42", hostObelisk, w.ports["ObeliskPort"])
	obelisk.step = func(ctx context.Context, pass int) (string, error) {
		return d.get(ctx, obelisk, forwardH2, obeliskURL, nil, "")
	}

	viss.step = func(ctx context.Context, pass int) (string, error) {
		return d.get(ctx, viss, sidecarH2C, "http://"+p.Sidecars["viss"]+"/Vehicle/Speed",
			http.Header{"X-Vin": {"DEMO0VIN000000001"}}, `"value":"42"`)
	}

	echoURL := fmt.Sprintf("https://%s:%s/hello", hostEcho, w.ports["EchoPort"])
	static.step = func(ctx context.Context, pass int) (string, error) {
		return d.get(ctx, static, forwardH1, echoURL, nil, "")
	}
	return d, nil
}

// get sends one GET and checks that it succeeded (and that the body holds
// want, if set); it returns the status line's code and text.
func (d *driver) get(ctx context.Context, s *system, c *http.Client, u string, h http.Header, want string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	for k, v := range h {
		req.Header[k] = v
	}
	s.requests++
	resp, err := c.Do(req)
	if err != nil {
		return "error", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	st := fmt.Sprintf("%d %s", resp.StatusCode, resp.Proto)
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("%s: %s", resp.Status, short(string(body)))
	}
	if want != "" && !strings.Contains(string(body), want) {
		return st, fmt.Errorf("the answer lacks %s: %s", want, short(string(body)))
	}
	return st, nil
}

// openOBD drives a garage application that never holds a token: it starts
// a session on the controller through the sidecar, dials the endpoint the
// (rewritten) SessionInfo names — the sidecar again — and talks ISO-TP on
// it while the proxy's own token stream rotates the session token.
func (d *driver) openOBD() (*system, error) {
	w, addr := d.w, d.p.Sidecars["openobd"]
	s := &system{name: "openOBD", mode: "sidecar, gRPC h2c", rec: w.seen["openOBD"],
		issuer: func() string {
			return fmt.Sprintf("controller tokens %d, session token rotations %d (every %v)", w.obd.ControllerTokensIssued(), w.obd.Rotations(), RotateEvery)
		}}
	ctl, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithNoProxy())
	if err != nil {
		return nil, err
	}
	d.closers = append(d.closers, func() { ctl.Close() })
	var session *grpc.ClientConn
	d.closers = append(d.closers, func() {
		if session != nil {
			session.Close()
		}
	})
	s.step = func(ctx context.Context, pass int) (string, error) {
		if session == nil {
			s.requests++
			info, err := pb.NewSessionControllerClient(ctl).StartSessionOnTicket(ctx, &pb.TicketId{Value: "demo-ticket"})
			if err != nil {
				return status.Code(err).String(), fmt.Errorf("startSessionOnTicket: %w", err)
			}
			if info.GrpcEndpoint != addr {
				return "OK", fmt.Errorf("SessionInfo names %q, not the sidecar", info.GrpcEndpoint)
			}
			if session, err = grpc.NewClient(info.GrpcEndpoint, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithNoProxy()); err != nil {
				return "", err
			}
		}
		// The first pass outlives a rotation: the call after it carries
		// the session token the proxy's stream delivered.
		rotations := w.obd.Rotations()
		deadline := time.Now().Add(3 * RotateEvery)
		for i := 0; ; i++ {
			s.requests++
			if err := sim.ISOTPRoundTrip(ctx, pb.NewCanClient(session), fmt.Sprintf("22 F1 90 #%d.%d", pass, i)); err != nil {
				return status.Code(err).String(), fmt.Errorf("openIsotpStream: %w", err)
			}
			if pass > 0 || w.obd.Rotations() > rotations {
				return "OK", nil
			}
			if time.Now().After(deadline) {
				return "OK", fmt.Errorf("no session token rotation within %v", 3*RotateEvery)
			}
			select {
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(RotateEvery / 4):
			}
		}
	}
	return s, nil
}

func (d *driver) close() {
	for _, c := range d.closers {
		c()
	}
}

// print writes the table: per system, how it is reached, the requests
// sent, the last status, the credential the upstream last received (a
// fingerprint) and how many distinct ones it has seen, and what the
// issuer has handed out.
func (d *driver) print(out io.Writer, pass int, opts Options) {
	var b strings.Builder
	if opts.Live {
		b.WriteString("\x1b[H\x1b[2J")
	}
	fmt.Fprintf(&b, "authproxy demo: five systems and a static header, on simulated upstreams (offline)\n")
	fmt.Fprintf(&b, "status page: http://%s/status   config: %s\n", d.p.Admin, d.w.ConfigPath)
	if opts.Once {
		fmt.Fprintf(&b, "one pass (-once)\n\n")
	} else {
		fmt.Fprintf(&b, "pass %d at %s; Ctrl-C stops\n\n", pass+1, time.Now().Format("15:04:05"))
	}
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SYSTEM\tMODE\tREQUESTS\tLAST\tUPSTREAM RECEIVED (fingerprint)\tDISTINCT\tISSUER")
	for _, s := range d.systems {
		last := s.last
		if s.err != nil {
			last = "FAILED " + last
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\t%s\n", s.name, s.mode, s.requests, last, s.rec.shown(), s.rec.distinct(), s.issuer())
	}
	tw.Flush()
	b.WriteString("\n#…: the first 8 hex digits of the credential's SHA-256, never the credential. DISTINCT: how many\n" +
		"different credentials the upstream has received (rolling sessions, rotations, refreshes).\n")
	for _, s := range d.systems {
		if s.err != nil {
			fmt.Fprintf(&b, "\n%s: %v", s.name, s.err)
		}
	}
	b.WriteString("\n")
	_, _ = io.WriteString(out, b.String())
}

func short(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
