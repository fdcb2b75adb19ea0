// Package proctest runs a command for a test (the built authproxy binary)
// and follows what it logs on stderr.
package proctest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/authproxy/authproxy/internal/syncbuf"
)

// Proc is a started command whose stderr lines are kept.
type Proc struct {
	Cmd   *exec.Cmd
	logs  syncbuf.Buffer
	lines chan string
}

// Start starts cmd and follows its stderr; at the test's cleanup the
// command gets SIGTERM and is waited for.
func Start(t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()
	p := &Proc{Cmd: cmd, lines: make(chan string, 4096)}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			p.logs.WriteString(sc.Text() + "\n")
			select {
			case p.lines <- sc.Text():
			default: // nobody reads them: Logs still has them
			}
		}
	}()
	return p
}

// Logs is everything the command logged so far.
func (p *Proc) Logs() string { return p.logs.String() }

// Await returns the submatches of the first line not yet looked at by an
// Await that matches re, waiting up to d; it fails the test if the command
// ends or the time runs out first. (Lines past 4,096 that no Await has
// looked at are kept only in Logs.)
func (p *Proc) Await(t testing.TB, re *regexp.Regexp, d time.Duration) []string {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("the command ended before a line matching %s:\n%s", re, p.Logs())
			}
			if m := re.FindStringSubmatch(l); m != nil {
				return m
			}
		case <-timeout:
			t.Fatalf("no line matching %s within %v:\n%s", re, d, p.Logs())
		}
	}
}

// Stop sends SIGTERM and waits up to d for the command to close its
// stderr (it has logged all it will); then Logs is complete.
func (p *Proc) Stop(t testing.TB, d time.Duration) {
	t.Helper()
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	timeout := time.After(d)
	for {
		select {
		case _, ok := <-p.lines:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatalf("the command did not end within %v of SIGTERM:\n%s", d, p.Logs())
		}
	}
}

// Tool finds a program the tests drive that bash .ci/deps installs with go
// install, into $(go env GOPATH)/bin, which may not be on PATH; the test
// fails, naming it, when it is nowhere.
func Tool(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	gopath, _ := exec.Command("go", "env", "GOPATH").Output()
	p := filepath.Join(strings.TrimSpace(string(gopath)), "bin", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is needed (bash .ci/deps installs it with go install)", name)
	}
	return p
}
