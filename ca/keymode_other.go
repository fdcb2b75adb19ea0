//go:build !unix

package ca

import (
	"fmt"
	"os"
)

// keyModeOK says whether a CA key file with st's mode is private enough
// to use: no one but its owner may have any access.
func keyModeOK(st os.FileInfo) error {
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("can be read by other users (mode %04o)", perm)
	}
	return nil
}
