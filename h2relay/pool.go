package h2relay

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// pool holds the upstream connections to one scheme and address, or to
// the HTTP/1.1 bridge for them.
type pool struct {
	r *Relay
	poolKey
	mu      sync.Mutex
	conns   []*conn
	dialing chan struct{} // closed when a dial in progress ends
	dialErr error
}

// poolKey names the pool of t's upstream connections: its scheme and
// address, and whether it goes through the HTTP/1.1 bridge.
type poolKey struct {
	scheme, addr string
	bridge       bool
	upstream     Upstream // Target.Upstream (nil: the relay's Dial and Bridge)
}

// poolKey returns the key of t's pool (r.mu held).
func (r *Relay) poolKey(t *Target) poolKey {
	bridge := t.HTTP1 && r.Bridge != nil
	if !bridge && t.Scheme == "https" && !t.Strict && r.Bridge != nil {
		if at, ok := r.h1only[t.Addr]; ok {
			if time.Since(at) < h1Memory {
				bridge = true
			} else {
				delete(r.h1only, t.Addr)
			}
		}
	}
	return poolKey{scheme: t.Scheme, addr: t.Addr, bridge: bridge, upstream: t.Upstream}
}

// upstream returns a connection to t's upstream with a stream slot
// reserved for the caller, dialing one when none has room. An https
// upstream found to speak only HTTP/1.1 is bridged from then on.
func (r *Relay) upstream(ctx context.Context, t *Target) (*conn, error) {
	c, err := r.upstreamOnce(ctx, t)
	if errors.Is(err, ErrNoHTTP2) && r.Bridge != nil && !t.Strict && !t.HTTP1 {
		r.mu.Lock()
		if r.h1only == nil {
			r.h1only = map[string]time.Time{}
		}
		if len(r.h1only) >= 1024 { // wildcard routes: forget what has expired
			for addr, at := range r.h1only {
				if time.Since(at) >= h1Memory {
					delete(r.h1only, addr)
				}
			}
		}
		r.h1only[t.Addr] = time.Now()
		r.mu.Unlock()
		r.log().Info("upstream speaks only HTTP/1.1: bridging its streams", "upstream", t.Addr)
		return r.upstreamOnce(ctx, t)
	}
	return c, err
}

func (r *Relay) upstreamOnce(ctx context.Context, t *Target) (*conn, error) {
	r.mu.Lock()
	if r.poolsClosed {
		r.mu.Unlock()
		return nil, errors.New("relay shut down")
	}
	key := r.poolKey(t)
	if r.pools == nil {
		r.pools = map[poolKey]*pool{}
	}
	p := r.pools[key]
	if p == nil {
		p = &pool{r: r, poolKey: key}
		r.pools[key] = p
	}
	r.mu.Unlock()
	for {
		p.mu.Lock()
		for _, c := range p.conns {
			if c.reserve() {
				p.mu.Unlock()
				return c, nil
			}
		}
		if wait := p.dialing; wait != nil {
			p.mu.Unlock()
			select {
			case <-wait:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			p.mu.Lock()
			err := p.dialErr
			p.mu.Unlock()
			if err != nil {
				return nil, err
			}
			continue
		}
		done := make(chan struct{})
		p.dialing = done
		p.mu.Unlock()
		c, err := p.dial(ctx)
		p.mu.Lock()
		p.dialing, p.dialErr = nil, err
		if err == nil {
			c.reserved++
			p.conns = append(p.conns, c)
		}
		p.mu.Unlock()
		close(done)
		if err != nil {
			return nil, err
		}
		go c.readLoop()
		return c, nil
	}
}

// ready is upstream without a dial: a connection with room, a stream
// reserved on it, or nil.
func (r *Relay) ready(t *Target) *conn {
	r.mu.Lock()
	p := r.pools[r.poolKey(t)]
	r.mu.Unlock()
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		if c.reserve() {
			return c
		}
	}
	return nil
}

// reserve takes a stream slot on c if it has room.
func (c *conn) reserve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	ok := !c.closed && !c.goingAway && uint32(len(c.streams)+c.reserved) < c.maxStreams
	if ok {
		c.reserved++
	}
	return ok
}

func (p *pool) dial(ctx context.Context) (*conn, error) {
	var nc net.Conn
	if p.bridge {
		nc = p.r.dialBridge(p.scheme, p.addr, p.upstream)
	} else {
		// Not the stream's context: other streams may wait for this dial.
		// The dialer has its own timeouts.
		var err error
		dial := p.r.Dial
		if p.upstream != nil {
			dial = p.upstream.Dial
		}
		if nc, err = dial(context.WithoutCancel(ctx), p.scheme, p.addr); err != nil {
			return nil, err
		}
	}
	c := newConn(p.r, nc, false)
	c.pool = p
	if err := c.clientHandshake(); err != nil {
		_ = nc.Close()
		return nil, err
	}
	return c, nil
}

// remove drops a connection that closed or is going away.
func (p *pool) remove(c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, x := range p.conns {
		if x == c {
			p.conns = append(p.conns[:i], p.conns[i+1:]...)
			return
		}
	}
}

// closePools closes every upstream connection.
func (r *Relay) closePools() {
	r.mu.Lock()
	r.poolsClosed = true
	var all []*conn
	for _, p := range r.pools {
		p.mu.Lock()
		all = append(all, p.conns...)
		p.mu.Unlock()
	}
	r.mu.Unlock()
	for _, c := range all {
		c.close(errors.New("relay shut down"))
	}
}

// dialBridge opens an in-memory HTTP/2 connection to the bridge for
// scheme://addr: an HTTP/2 server (x/net/http2) whose handler sends each
// stream on over HTTP/1.1. It ends when the relay closes its side.
func (r *Relay) dialBridge(scheme, addr string, up Upstream) net.Conn {
	client, server := net.Pipe()
	srv := &http2.Server{
		MaxConcurrentStreams:         r.maxStreams(),
		MaxReadFrameSize:             frameSize,
		MaxUploadBufferPerConnection: connWindow,
		MaxUploadBufferPerStream:     streamWindow,
	}
	bridge := r.Bridge
	if up != nil {
		bridge = up.Bridge
	}
	h := bridge(scheme, addr)
	go srv.ServeConn(server, &http2.ServeConnOpts{
		Handler:    h,
		BaseConfig: &http.Server{MaxHeaderBytes: int(r.maxHeaderBytes())},
	})
	return client
}
