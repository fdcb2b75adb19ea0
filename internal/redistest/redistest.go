// Package redistest runs a real redis-server on loopback for tests.
package redistest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
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
}

// Start runs redis-server on a free port. A missing redis-server fails the
// test: .ci/run installs it (Debian's redis-server).
func Start(t testing.TB) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server is not installed (apt-get install redis-server; .ci/run does it)")
	}
	for attempt := 0; ; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		s := &Server{Addr: addr, t: t}
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
	s.cmd = exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--loglevel", "warning", "--databases", "1")
	if err := s.cmd.Start(); err != nil {
		return err
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
