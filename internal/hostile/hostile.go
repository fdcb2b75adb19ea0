// Package hostile has an HTTP/1.1 upstream for tests that answers one
// request with bytes of the test's choosing: a body where none may be, two
// answers for one request, framing that contradicts itself, or bytes sent
// while the connection sits idle. Every other request gets a clean answer
// that carries a marker of the caller's, so a test can tell whose answer a
// client received.
package hostile

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Planted is a whole answer that a hostile upstream leaves queued behind
// the one it was asked for; no later request may read it as its own.
const Planted = "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nX-Marker: planted\r\n\r\nplanted"

// Trigger is an answer an upstream may give to one request.
type Trigger struct {
	Name, Method, Answer string
}

// Late splits the trigger's answer where Planted starts: the answer
// without it, and Planted as a tail to send while the connection is idle.
// A trigger whose planted answer is read as its own request's final
// answer (behind a 1xx) is returned whole.
func (tr Trigger) Late() (answer, tail string) {
	i := strings.LastIndex(tr.Answer, Planted)
	if i < 0 || strings.Contains(tr.Answer[:i], " 103 ") {
		return tr.Answer, ""
	}
	return tr.Answer[:i] + tr.Answer[i+len(Planted):], Planted
}

// Triggers are the answers that leave an answer queued behind the one
// asked for, or frame themselves ambiguously.
var Triggers = []Trigger{
	{"a body on HEAD", http.MethodHead, "HTTP/1.1 200 OK\r\nContent-Length: 67\r\n\r\n" + Planted},
	{"a body on 204", http.MethodGet, "HTTP/1.1 204 No Content\r\n\r\n" + Planted},
	{"a body on 304", http.MethodGet, "HTTP/1.1 304 Not Modified\r\n\r\n" + Planted},
	{"a Content-Length on 204", http.MethodGet, "HTTP/1.1 204 No Content\r\nContent-Length: 67\r\n\r\n" + Planted},
	{"a body on 1xx", http.MethodGet, "HTTP/1.1 103 Early Hints\r\nContent-Length: 67\r\n\r\n" + Planted + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
	{"two answers", http.MethodGet, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + Planted},
	// Over TLS the second answer stays in the TLS layer's buffer, in the
	// record that ends the first: the body's last read asks for more than
	// the response reader's buffer holds and goes past it.
	{"two answers, the first long", http.MethodGet, "HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n" + strings.Repeat("x", 10000) + Planted},
	{"chunked with a Content-Length past the last chunk", http.MethodGet, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 74\r\n\r\n0\r\n\r\n" + Planted},
	{"differing Content-Lengths", http.MethodGet, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 69\r\n\r\nok" + Planted},
}

// Server is an HTTP/1.1 upstream on loopback, over TLS or not. A request
// whose path has a segment /m/<marker> gets a clean answer that carries
// the marker (X-Marker, and the body but for HEAD); any other request gets
// the answer as it is written, then the tail once SendTail is called for
// it. Count says how many connections it accepted.
type Server struct {
	ln     net.Listener
	tls    bool
	answer []byte
	tail   []byte
	conns  atomic.Int64
	wg     sync.WaitGroup
	mu     sync.Mutex
	open   map[net.Conn]bool

	release chan struct{} // SendTail lets one tail go
	sent    chan struct{} // a tail was written
	done    chan struct{} // closed by Close
}

// Start serves on 127.0.0.1 (over TLS with cfg, if not nil; each write
// goes out as one TLS record).
func Start(cfg *tls.Config, answer, tail string) (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{ln: ln, answer: []byte(answer), tail: []byte(tail), release: make(chan struct{}), sent: make(chan struct{}), done: make(chan struct{}), open: map[net.Conn]bool{}}
	if cfg != nil {
		cfg = cfg.Clone()
		cfg.NextProtos = []string{"http/1.1"}
		cfg.DynamicRecordSizingDisabled = true
		s.ln, s.tls = tls.NewListener(ln, cfg), true
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			s.mu.Lock()
			s.open[c] = true
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serve(c)
			}()
		}
	}()
	return s, nil
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is the server's base URL.
func (s *Server) URL() string {
	if s.tls {
		return "https://" + s.Addr()
	}
	return "http://" + s.Addr()
}

// Count is the number of connections accepted so far.
func (s *Server) Count() int64 { return s.conns.Load() }

// SendTail lets the tail of the oldest answer whose tail is held go out,
// and waits up to 30 s until it has been written; it reports whether it
// was. With no tail it does nothing.
func (s *Server) SendTail() bool {
	if len(s.tail) == 0 {
		return true
	}
	timeout := time.After(30 * time.Second)
	select {
	case s.release <- struct{}{}:
	case <-timeout:
		return false
	}
	select {
	case <-s.sent:
		return true
	case <-timeout:
		return false
	}
}

// Close stops the server and closes its connections.
func (s *Server) Close() {
	s.ln.Close()
	close(s.done)
	s.mu.Lock()
	for c := range s.open {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *Server) serve(c net.Conn) {
	defer func() {
		c.Close()
		s.mu.Lock()
		delete(s.open, c)
		s.mu.Unlock()
	}()
	var wmu sync.Mutex
	write := func(b []byte) {
		wmu.Lock()
		defer wmu.Unlock()
		_, _ = c.Write(b)
	}
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if _, marker, ok := strings.Cut(req.URL.Path, "/m/"); ok {
			body := marker
			if req.Method == http.MethodHead {
				body = ""
			}
			write(fmt.Appendf(nil, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Marker: %s\r\n\r\n%s", len(marker), marker, body))
			continue
		}
		write(s.answer)
		if len(s.tail) > 0 {
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				select {
				case <-s.release:
				case <-s.done:
					return
				}
				write(s.tail)
				select {
				case s.sent <- struct{}{}:
				case <-s.done:
				}
			}()
		}
	}
}
