package proxy_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

// inNetnsEnv marks a test binary re-run inside a network namespace of its
// own, where nothing but loopback exists: a test of what the proxy refuses
// to dial runs there, so that even if it dialled, nothing would leave the
// machine.
const inNetnsEnv = "AUTHPROXY_TEST_IN_NETNS"

// runInNetns re-runs test (this one) in a new network namespace and
// reports its result; it returns true when the caller is already inside
// and should run the test body.
func runInNetns(t *testing.T) bool {
	if os.Getenv(inNetnsEnv) == "1" {
		return true
	}
	attempts := []*syscall.SysProcAttr{
		{Cloneflags: syscall.CLONE_NEWNET}, // root, as CI runs
		{Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET, // an unprivileged developer
			UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
			GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}}},
	}
	var errs []error
	for _, attr := range attempts {
		cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), inNetnsEnv+"=1")
		cmd.SysProcAttr = attr
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) { // could not start: try the next way
			errs = append(errs, err)
			continue
		}
		if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
			t.Fatalf("in a network namespace: %v\n%s", err, out)
		}
		t.Logf("ran in a network namespace of its own:\n%s", lastLines(string(out), 30))
		return false
	}
	t.Fatalf("this test needs a network namespace of its own (root, or unprivileged user namespaces): %v", errors.Join(errs...))
	return false
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// loopbackUp brings up lo, which a new network namespace has down.
func loopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var ifr [40]byte // struct ifreq: name, then the flags (a short)
	copy(ifr[:], "lo")
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCGIFFLAGS, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		return fmt.Errorf("SIOCGIFFLAGS: %v", e)
	}
	flags := binary.NativeEndian.Uint16(ifr[16:]) | syscall.IFF_UP
	binary.NativeEndian.PutUint16(ifr[16:], flags)
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCSIFFLAGS, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		return fmt.Errorf("SIOCSIFFLAGS: %v", e)
	}
	return nil
}
