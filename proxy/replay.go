package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync"
)

// defaultMaxReplayBody is the default largest request body kept for a
// retry with a fresh credential (retry.max_body_bytes). Larger bodies stream
// through unrecorded and are not retried.
const defaultMaxReplayBody = 64 << 10

// replayer gives a request body to send again, when it can.
type replayer interface {
	replay() (io.ReadCloser, bool)
}

// replayable prepares out's body for a possible second send. A body whose
// length is known and at most limit bytes is read in full first (the
// upstream may answer before reading it, and the copy must be whole); any
// other body streams through a recordingBody. Bodies of unknown length are
// not read ahead: that would stall a bidirectional stream.
func replayable(out *http.Request, limit int64) (replayer, error) {
	if out.ContentLength > 0 && out.ContentLength <= limit {
		buf, err := io.ReadAll(io.LimitReader(out.Body, out.ContentLength+1))
		if err != nil {
			return nil, fmt.Errorf("reading the request body: %w", err)
		}
		if int64(len(buf)) != out.ContentLength {
			return nil, fmt.Errorf("the request body has %d bytes, not the %d of its Content-Length", len(buf), out.ContentLength)
		}
		out.Body = io.NopCloser(bytes.NewReader(buf))
		return bufferedBody(buf), nil
	}
	rec := &recordingBody{src: out.Body, limit: int(limit)}
	out.Body = rec
	return rec, nil
}

type bufferedBody []byte

func (b bufferedBody) replay() (io.ReadCloser, bool) { return io.NopCloser(bytes.NewReader(b)), true }

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
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.eof || b.over {
		return nil, false
	}
	return io.NopCloser(bytes.NewReader(b.buf)), true
}
