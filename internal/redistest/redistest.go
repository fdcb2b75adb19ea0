// Package redistest runs a real redis-server on loopback for tests.
package redistest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a redis-server process on 127.0.0.1, stopped at the test's
// cleanup. It keeps nothing on disk.
type Server struct {
	Addr string
	t    testing.TB
	cmd  *exec.Cmd
	tls  []string // redis-server's TLS arguments, if it speaks TLS
}

// StartTLS runs redis-server speaking only TLS, with the certificate and
// key files given (clients are not asked for certificates).
func StartTLS(t testing.TB, certFile, keyFile, caFile string) *Server {
	t.Helper()
	return start(t, []string{"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-ca-cert-file", caFile, "--tls-auth-clients", "no"})
}

// Start runs redis-server on a free port. A missing redis-server fails the
// test: .ci/deps installs it as root (Debian's redis-server).
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, nil)
}

func start(t testing.TB, tlsArgs []string) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server is not installed (apt-get install redis-server; bash .ci/deps does it as root)")
	}
	for attempt := 0; ; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		s := &Server{Addr: addr, t: t, tls: tlsArgs}
		if err := s.run(); err == nil {
			t.Cleanup(s.Stop)
			return s
		} else if attempt == 4 {
			t.Fatal(err)
		}
	}
}

func (s *Server) run() error {
	_, port, _ := net.SplitHostPort(s.Addr)
	args := []string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning", "--databases", "1"}
	if s.tls != nil {
		args = append([]string{"--port", "0", "--tls-port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--loglevel", "warning", "--databases", "1"}, s.tls...)
	}
	s.cmd = exec.Command("redis-server", args...)
	if err := s.cmd.Start(); err != nil {
		return err
	}
	if s.tls != nil { // answered once it accepts TLS connections
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if c, err := net.DialTimeout("tcp", s.Addr, 200*time.Millisecond); err == nil {
				c.Close()
				return nil
			}
		}
		s.Stop()
		return fmt.Errorf("redis-server (TLS) on %s did not listen", s.Addr)
	}
	c := s.Client()
	defer c.Close()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if s.cmd.ProcessState != nil {
			break
		}
	}
	s.Stop()
	return fmt.Errorf("redis-server on %s did not answer", s.Addr)
}

// Dump is every key of a plain-TCP server and its value, as redis-cli
// prints them (--scan, then GET or HGETALL by type): what anyone with
// access to the store sees.
func (s *Server) Dump() string {
	s.t.Helper()
	_, port, _ := net.SplitHostPort(s.Addr)
	cli := func(args ...string) string {
		out, err := exec.Command("redis-cli", append([]string{"-h", "127.0.0.1", "-p", port, "--no-raw"}, args...)...).Output()
		if err != nil {
			s.t.Fatalf("redis-cli %v: %v", args, err)
		}
		return string(out)
	}
	var b strings.Builder
	keys := strings.Fields(cli("--scan"))
	if len(keys) == 0 {
		s.t.Fatal("redis-cli --scan found no key")
	}
	for _, k := range keys {
		k = strings.Trim(k, `"`)
		b.WriteString(k + "\n")
		switch strings.TrimSpace(cli("TYPE", k)) {
		case "hash":
			b.WriteString(cli("HGETALL", k))
		default:
			b.WriteString(cli("GET", k))
		}
	}
	return b.String()
}

// Client is a plain client of the server, for a test to look inside.
func (s *Server) Client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: s.Addr, DialTimeout: time.Second, MaxRetries: -1})
}

// Stop kills the server (its data is gone).
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		s.cmd = nil
	}
}

// Restart starts the server again on the same address, empty.
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.run(); err != nil {
		s.t.Fatal(err)
	}
}

// Port is the server's port.
func (s *Server) Port() int {
	_, p, _ := net.SplitHostPort(s.Addr)
	n, _ := strconv.Atoi(p)
	return n
}
