package transport

import (
	"io"
	"sync"
)

// OnEOF returns body, calling fn once when a Read returns io.EOF: the
// moment an HTTP body's trailers are in.
func OnEOF(body io.ReadCloser, fn func()) io.ReadCloser {
	return &onEOF{ReadCloser: body, fn: fn}
}

type onEOF struct {
	io.ReadCloser
	fn   func()
	once sync.Once
}

func (b *onEOF) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.once.Do(b.fn)
	}
	return n, err
}
