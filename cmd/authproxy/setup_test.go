package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// shBlock is a fenced ```sh block of a Markdown file.
var shBlock = regexp.MustCompile("(?ms)^```sh\n(.*?)^```")

// The README's first commands are the demo and the test command, and CI
// (.ci/run) runs that test command as written, after vet and gofmt.
func TestReadmeTestCommandIsWhatCIRuns(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := shBlock.FindAllSubmatch(readme, -1)
	if len(blocks) == 0 {
		t.Fatal("the README has no sh block")
	}
	var first []string
	for _, line := range strings.Split(string(blocks[0][1]), "\n") {
		if cmd, _, _ := strings.Cut(line, "#"); strings.TrimSpace(cmd) != "" {
			first = append(first, strings.TrimSpace(cmd))
		}
	}
	const testCommand = "bash .ci/deps && go test -race ./..."
	want := []string{"go run ./cmd/authproxy demo", testCommand}
	if strings.Join(first, "\n") != strings.Join(want, "\n") {
		t.Fatalf("the README's first commands are %q, want %q", first, want)
	}
	if h := bytes.Index(readme, []byte("\n## ")); h < bytes.Index(readme, blocks[0][0]) {
		t.Error("the set-up commands are not the first thing the README shows, before any section")
	}
	ci, err := os.ReadFile("../../.ci/run")
	if err != nil {
		t.Fatal(err)
	}
	var cmds []string
	for _, line := range strings.Split(string(ci), "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			cmds = append(cmds, l)
		}
	}
	if !slices.Contains(cmds, testCommand) {
		t.Errorf(".ci/run does not run the README's test command as written, %q:\n%s", testCommand, ci)
	}
	if !strings.Contains(string(readme), "```sh\n"+testCommand+"\n```") {
		t.Errorf("the README's test section does not show %q", testCommand)
	}
}

// On a machine without the programs the tests drive, the test command run
// by a user who cannot install them stops at once with one line naming
// them, before it builds or runs anything (its PATH has no go: reaching
// go would print something else).
func TestTestCommandNamesWhatIsMissing(t *testing.T) {
	bin := t.TempDir()
	for _, d := range []string{bin, filepath.Dir(bin)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, tool := range []string{"bash", "id", "dirname"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(p, filepath.Join(bin, tool)); err != nil {
			t.Fatal(err)
		}
	}
	script, err := filepath.Abs("../../.ci/deps")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "bash"), script)
	cmd.Env = []string{"PATH=" + bin, "HOME=" + bin}
	cmd.Dir = bin
	if os.Geteuid() == 0 { // as root it would install them: run it as nobody
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	exit, ok := err.(*exec.ExitError)
	if !ok || exit.ExitCode() != 2 {
		t.Fatalf("the test command without its tools: %v, want exit 2\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	if stdout.Len() != 0 {
		t.Errorf("it printed on stdout: %q", stdout.String())
	}
	msg := stderr.String()
	if strings.Count(msg, "\n") != 1 {
		t.Errorf("want one line, got %q", msg)
	}
	for _, pkg := range []string{"curl", "chromium", "redis-server", "prometheus", "python3-requests", "nodejs", "npm"} {
		if !strings.Contains(msg, pkg) {
			t.Errorf("the line does not name %s: %q", pkg, msg)
		}
	}
	if !strings.Contains(msg, "apt-get install curl chromium redis-server prometheus python3-requests nodejs npm") {
		t.Errorf("the line does not say how to install them: %q", msg)
	}
}
