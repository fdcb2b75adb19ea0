//go:build unix

package ca

import (
	"fmt"
	"os"
	"slices"
	"syscall"
)

// keyModeOK says whether a CA key file with st's mode and ownership is
// private enough to use. Others may have no access at all. Its group may
// read it (nothing more) only when that group is one of the proxy's own:
// Kubernetes mounts a Secret root-owned, in the pod's fsGroup, and always
// readable by that group, which only the pod's containers hold.
func keyModeOK(st os.FileInfo) error {
	perm := st.Mode().Perm()
	switch {
	case perm&0o007 != 0:
		return fmt.Errorf("can be read or written by other users (mode %04o)", perm)
	case perm&0o070 == 0:
		return nil
	case perm&0o030 != 0:
		return fmt.Errorf("can be written by its group (mode %04o)", perm)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("can be read by its group (mode %04o)", perm)
	}
	if !ownGroup(int(sys.Gid)) {
		return fmt.Errorf("can be read by its group %d, which is not the proxy's (mode %04o)", sys.Gid, perm)
	}
	return nil
}

// ownGroup reports whether gid is the process's group or one of its
// supplementary groups.
func ownGroup(gid int) bool {
	if gid == os.Getegid() {
		return true
	}
	groups, err := os.Getgroups()
	return err == nil && slices.Contains(groups, gid)
}
