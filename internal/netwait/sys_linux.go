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
func sysRead(fd uintptr, p []byte) (int, error) { return rawIO(syscall.SYS_READ, fd, p) }

func sysWrite(fd uintptr, p []byte) (int, error) { return rawIO(syscall.SYS_WRITE, fd, p) }

func rawIO(trap, fd uintptr, p []byte) (int, error) {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	for {
		n, _, e := syscall.RawSyscall(trap, fd, uintptr(ptr), uintptr(len(p)))
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return -1, e
		}
		return int(n), nil
	}
}
