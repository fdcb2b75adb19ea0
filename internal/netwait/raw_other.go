//go:build !unix

package netwait

import "net"

// newRawFD returns nil where reads cannot see EAGAIN: reads and writes
// go to the connection and no hook is called.
type rawFD struct{}

func newRawFD(net.Conn) *rawFD { return nil }

func (*rawFD) read([]byte, func()) (int, error) {
	panic("netwait: no raw reads on this system")
}

func (*rawFD) waiting() (bool, bool) {
	panic("netwait: no raw reads on this system")
}

func (*rawFD) writeAll([]byte) (int, error) {
	panic("netwait: no raw writes on this system")
}
