package proxy

import (
	"bytes"
	"io"
	"sync"
)

// maxReplayBody is the largest request body kept for a retry with a fresh
// credential. Larger bodies stream through unrecorded and are not retried.
const maxReplayBody = 64 << 10

// recordingBody passes a request body through while keeping a copy of its
// first limit bytes, so the request can be sent again if — and only if —
// the whole body was read and fitted. A replay reads only the copy, so
// Close closes the source at once (unblocking a transport's body writer).
type recordingBody struct {
	mu    sync.Mutex
	src   io.ReadCloser
	buf   []byte
	limit int
	over  bool
	eof   bool
}

func (b *recordingBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.src.Read(p)
	if !b.over {
		if len(b.buf)+n > b.limit {
			b.over, b.buf = true, nil
		} else {
			b.buf = append(b.buf, p[:n]...)
		}
	}
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *recordingBody) Close() error { return b.src.Close() }

// replay returns the recorded body, if the whole of it was recorded.
func (b *recordingBody) replay() (io.ReadCloser, bool) {
	if b == nil {
		return nil, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.eof || b.over {
		return nil, false
	}
	return io.NopCloser(bytes.NewReader(b.buf)), true
}
