// Package h2relay relays HTTP/2 streams frame by frame between client
// connections (cleartext HTTP/2 with prior knowledge, as a sidecar's
// applications speak it) and upstream HTTP/2 connections. Only HEADERS are
// decoded and encoded again; DATA frames pass from one connection to the
// other on the goroutine that read them, with flow control on each hop.
// There is no goroutine per stream except while a Handler decides where a
// new stream goes, so a relayed call costs a fraction of what an HTTP/2
// server and client stacked back to back cost (docs/benchmarks.md).
//
// A Handler sees each request head and returns the upstream and the header
// fields to send, or an error that the relay answers locally without
// sending anything upstream. It may also observe the response head and ask
// for the request to be sent once more (a fresh credential); the relay
// keeps a bounded copy of the request body for that.
package h2relay

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// Request is the head of a client's stream, as a Handler sees it.
type Request struct {
	Method, Scheme, Authority, Path string
	// Header holds the regular fields, with canonical keys.
	Header     http.Header
	RemoteAddr string
	// Context ends when the stream does (reset, finished, or its
	// connection closed).
	Context context.Context
	// Inline is set when Open runs on the connection's reading goroutine,
	// where it must not wait: it returns ErrWouldBlock instead, and is
	// called again on a goroutine of its own.
	Inline bool
	// Data is the Handler's own, kept from one call of Open to the next.
	Data any
	// ConnData is what ServeConnWith was given for the stream's connection
	// (an intercepted CONNECT's target, say).
	ConnData any
}

// Target is where a stream goes and what it sends.
type Target struct {
	// Scheme is https (TLS, HTTP/2 by ALPN) or http (cleartext HTTP/2
	// with prior knowledge); Addr is the host:port to dial.
	Scheme, Addr string
	// The request head sent upstream.
	Method, Authority, Path string
	Header                  http.Header
	// StripTrailers are header names (lower case) removed from the
	// client's request trailers, as they were from its head: a credential
	// sent as a trailer must not pass where the same header was stripped.
	StripTrailers []string
	// Observe, when set, sees the final response head before the client
	// does, and with PeekBytes set, the body of a response whose
	// content-length is at most PeekBytes (body is nil otherwise: the head
	// passes at once). Returning true asks for the request to be sent once
	// more, to Retry's target; the relay does so if it holds the whole
	// request body, and otherwise passes the response on. A retry asked
	// while the client is still sending a body the relay keeps waits for
	// that body's end, holding the response (if it has a content-length
	// within the replay bound) in case the body outgrows the bound.
	Observe   func(status int, header http.Header, body []byte) bool
	PeekBytes int
	Retry     func() (*Target, error)
	// Tap, when set, is called with the final response head that reaches
	// the client; the Tap it returns (nil: none) reads the response's gRPC
	// messages as they pass (see Tap).
	Tap func(status int, header http.Header) *Tap
	// Upstream, when set, opens the stream's upstream connections in place
	// of Relay.Dial and Relay.Bridge (a route that presents its own client
	// certificate). Streams with different Upstreams (compared as
	// interface values) never share a connection.
	Upstream Upstream
	// HTTP1 sends the stream to an HTTP/1.1 upstream through Relay.Bridge.
	// Without it an https upstream that does not negotiate h2 is bridged
	// too, if Bridge is set and Strict is not.
	HTTP1, Strict bool
	// Data is the Handler's own, handed back to Reply.
	Data any
}

// Tap reads the gRPC messages of one response as they stream to the
// client: the relay re-frames them, holding at most one message of up to
// MaxTapMessage bytes at a time (larger ones pass unread), and credits the
// upstream per hop for the bytes it took, whatever size Message returns.
type Tap struct {
	// Message sees one message (compressed is its flag) and returns what
	// is sent in its place: msg itself, or a replacement.
	Message func(compressed bool, msg []byte) []byte
	// End, when set, is called once the response has ended, with its
	// trailers (the head's fields for a Trailers-Only response, nil for
	// one that ends without trailers). It is not called for a stream that
	// is reset.
	End func(trailer http.Header)
}

// MaxTapMessage bounds the message a Tap sees: half a stream's receive
// window, so a message being read never stalls the upstream.
const MaxTapMessage = streamWindow / 2

// StreamEnd is what OnStreamEnd learns of a stream.
type StreamEnd struct {
	Status  int       // the final status the client got; 0: reset before one
	Began   time.Time // when its head arrived
	In, Out int64     // DATA bytes from the client, and to it
}

// Reply is a response the relay writes itself.
type Reply struct {
	Status int
	Header http.Header
	Body   string
}

// Handler decides on each new stream.
type Handler interface {
	// Open decides on a new stream: first on the connection's reading
	// goroutine (req.Inline), then, if it returned ErrWouldBlock, on a
	// goroutine of its own, where it may wait (a credential being
	// fetched). Any other error is answered with Reply, and nothing is
	// sent upstream.
	Open(req *Request) (*Target, error)
	// Reply turns a failure into the client's answer: Open's error (t is
	// nil then), or an upstream failure (an error wrapping ErrUpstream).
	Reply(req *Request, t *Target, err error) Reply
}

// ErrWouldBlock is what Open returns when it would have to wait on the
// connection's reading goroutine.
var ErrWouldBlock = errors.New("h2relay: deciding would block")

// ErrUpstream wraps every failure to reach an upstream or to complete a
// stream on it before its response started.
var ErrUpstream = errors.New("h2relay: upstream failed")

type upstreamErr struct{ err error }

func (e *upstreamErr) Error() string   { return e.err.Error() }
func (e *upstreamErr) Unwrap() []error { return []error{ErrUpstream, e.err} }

// Relay serves client connections. Set its fields before the first
// ServeConn; they are not changed afterwards.
type Relay struct {
	Handler Handler
	// Dial opens an upstream connection: for https a TLS connection that
	// negotiated h2, for http a plain one. An error wrapping ErrNoHTTP2
	// says the upstream speaks only HTTP/1.1.
	Dial func(ctx context.Context, scheme, addr string) (net.Conn, error)
	// Bridge, when set, carries streams to HTTP/1.1 upstreams (Target.HTTP1,
	// and https upstreams that do not negotiate h2): it returns the handler
	// that sends one request to scheme://addr over HTTP/1.1. The relay
	// reaches it over in-memory HTTP/2 connections, so flow control, limits,
	// retries and taps work as for any upstream.
	Bridge func(scheme, addr string) http.Handler
	// MaxConcurrentStreams per client connection (default 250).
	MaxConcurrentStreams uint32
	// MaxHeaderBytes bounds a request's header block (default 1 MiB).
	MaxHeaderBytes uint32
	// MaxReplayBytes bounds the copy of a request body kept for a retry
	// (default 1 MiB).
	MaxReplayBytes int
	// PrefaceTimeout bounds a new connection's preface and SETTINGS;
	// IdleTimeout closes a client connection without streams;
	// UpstreamIdleTimeout closes an upstream connection without streams.
	PrefaceTimeout, IdleTimeout, UpstreamIdleTimeout time.Duration
	Log                                              *slog.Logger
	// OnStreamEnd, when set, is called once a client's stream is over; t
	// is nil when no upstream was chosen.
	OnStreamEnd func(req *Request, t *Target, end StreamEnd)
	// OnConn, when set, is told of client connections opening (+1) and
	// closing (-1).
	OnConn func(delta int)
	// OnGoAway, when set, is told of each GOAWAY the relay sends or
	// receives, on the client side or the upstream side.
	OnGoAway func(side, direction string, code http2.ErrCode)
	// OnRefused, when set, is told of each client stream refused with
	// REFUSED_STREAM: max_streams, going_away, or upstream_goaway (the
	// upstream did not take it).
	OnRefused func(reason string)

	mu          sync.Mutex
	clients     map[*conn]struct{}
	pools       map[poolKey]*pool
	shutdown    bool
	poolsClosed bool
	idle        chan struct{}        // closed when the last client connection goes, after Shutdown
	h1only      map[string]time.Time // https addresses that did not negotiate h2, and when
}

// Upstream opens a target's upstream connections: Dial as Relay.Dial,
// Bridge as Relay.Bridge. Its dynamic type must be comparable.
type Upstream interface {
	Dial(ctx context.Context, scheme, addr string) (net.Conn, error)
	Bridge(scheme, addr string) http.Handler
}

// ErrNoHTTP2 is wrapped by Dial's error for an upstream that negotiated
// HTTP/1.1 rather than h2.
var ErrNoHTTP2 = errors.New("h2relay: the upstream does not speak HTTP/2")

// h1Memory is how long an https upstream that did not negotiate h2 is
// bridged without asking again.
const h1Memory = 10 * time.Minute

// Our receive windows, on both sides: what a peer may send before the data
// has been passed on. They bound the memory a connection can hold.
const (
	streamWindow = 256 << 10
	connWindow   = 1 << 20
	frameSize    = 16 << 10 // the largest frame we accept (the default)
)

func (r *Relay) log() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

// ServeConn serves one client connection until it closes. The connection
// starts with the HTTP/2 client preface.
func (r *Relay) ServeConn(nc net.Conn) { r.ServeConnWith(nc, nil) }

// ServeConnWith is ServeConn, with data given to the Handler as each of
// the connection's streams' Request.ConnData.
func (r *Relay) ServeConnWith(nc net.Conn, data any) {
	c := newConn(r, nc, true)
	c.data = data
	r.mu.Lock()
	if r.shutdown {
		r.mu.Unlock()
		_ = nc.Close()
		return
	}
	if r.clients == nil {
		r.clients = map[*conn]struct{}{}
	}
	r.clients[c] = struct{}{}
	r.mu.Unlock()
	if r.OnConn != nil {
		r.OnConn(1)
		defer r.OnConn(-1)
	}
	defer func() {
		r.mu.Lock()
		delete(r.clients, c)
		if r.shutdown && len(r.clients) == 0 && r.idle != nil {
			close(r.idle)
			r.idle = nil
		}
		r.mu.Unlock()
	}()
	if err := c.serverHandshake(); err != nil {
		_ = nc.Close()
		return
	}
	c.readLoop()
}

// Shutdown sends GOAWAY on every client connection, lets their streams
// finish until ctx ends, then closes what remains, and the upstream
// connections. Connections served after Shutdown are closed at once.
func (r *Relay) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	r.shutdown = true
	clients := make([]*conn, 0, len(r.clients))
	for c := range r.clients {
		clients = append(clients, c)
	}
	var idle chan struct{}
	if len(r.clients) > 0 {
		idle = make(chan struct{})
		r.idle = idle
	}
	r.mu.Unlock()
	for _, c := range clients {
		c.goAway()
	}
	var err error
	if idle != nil {
		select {
		case <-idle:
		case <-ctx.Done():
			err = ctx.Err()
			for _, c := range clients {
				c.close(errors.New("shutting down"))
			}
			<-idle
		}
	}
	r.closePools()
	return err
}
