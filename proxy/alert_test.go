package proxy

import (
	"bytes"
	"errors"
	"testing"
)

// lastBytes keeps the last 7 bytes of whatever sequence of writes it gets.
func FuzzLastBytes(f *testing.F) {
	f.Add([]byte("\x16\x03\x01hello\x15\x03\x03\x00\x02\x02\x30"), uint8(3))
	f.Add([]byte("ab"), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		var l lastBytes
		for rest, k := data, 0; len(rest) > 0; k++ {
			n := min(len(rest), 1+int(step+uint8(k))%11)
			l.Write(rest[:n])
			rest = rest[n:]
		}
		want := data[max(0, len(data)-7):]
		if !bytes.Equal(l.b[:l.n], want) {
			t.Fatalf("kept %x, want %x", l.b[:l.n], want)
		}
	})
}

func TestClientAlertInTheClear(t *testing.T) {
	mac := errors.New("local error: tls: bad record MAC")
	for tail, want := range map[string]string{
		"\x15\x03\x03\x00\x02\x02\x30":         "unknown certificate authority (sent in the clear)",
		"xx\x15\x03\x01\x00\x02\x02\x2a":       "bad certificate (sent in the clear)",
		"\x17\x03\x03\x00\x02\x02\x30":         "none", // application data
		"\x15\x03\x03\x00\x03\x02\x30":         "none", // length 3
		"\x03\x00\x02\x02\x30":                 "none", // too short
		"\x15\x03\x03\x00\x02\x02\x30\x00\x00": "none", // not the last record
	} {
		if got := clientAlert(mac, []byte(tail)); got != want {
			t.Errorf("%x: %q, want %q", tail, got, want)
		}
	}
}
