//go:build linux && !race

package netwait

import (
	"syscall"
	"unsafe"
)

// sysRead and sysWrite are read(2) and write(2) made without telling the
// scheduler (RawSyscall). The descriptor is non-blocking, so the call
// returns at once and the goroutine keeps its P; a call made through
// syscall.Read instead wakes the runtime's sysmon thread whenever the
// process was idle, which on a loaded proxy is after nearly every batch.
// Under the race detector (sys_other.go) the calls go through package
// syscall, which tells the detector that I/O orders goroutines.
func sysRead(fd uintptr, p []byte) (int, error) {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(bufPtr(p)), uintptr(len(p)))
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return -1, e
		}
		return int(n), nil
	}
}

func sysWrite(fd uintptr, p []byte) (int, error) {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(bufPtr(p)), uintptr(len(p)))
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return -1, e
		}
		return int(n), nil
	}
}

func bufPtr(p []byte) unsafe.Pointer {
	if len(p) == 0 {
		return nil
	}
	return unsafe.Pointer(&p[0])
}
