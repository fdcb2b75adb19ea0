package h2relay

import (
	"context"
	"errors"
	"sync"
)

// pool holds the upstream connections to one scheme and address.
type pool struct {
	r       *Relay
	mu      sync.Mutex
	conns   []*conn
	dialing chan struct{} // closed when a dial in progress ends
	dialErr error
}

// upstream returns a connection to scheme://addr with a stream slot
// reserved for the caller, dialing one when none has room.
func (r *Relay) upstream(ctx context.Context, scheme, addr string) (*conn, error) {
	key := scheme + "://" + addr
	r.mu.Lock()
	if r.poolsClosed {
		r.mu.Unlock()
		return nil, errors.New("relay shut down")
	}
	if r.pools == nil {
		r.pools = map[string]*pool{}
	}
	p := r.pools[key]
	if p == nil {
		p = &pool{r: r}
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
		c, err := p.dial(ctx, scheme, addr)
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
func (r *Relay) ready(scheme, addr string) *conn {
	r.mu.Lock()
	p := r.pools[scheme+"://"+addr]
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

func (p *pool) dial(ctx context.Context, scheme, addr string) (*conn, error) {
	// Not the stream's context: other streams may wait for this dial. The
	// dialer has its own timeouts.
	nc, err := p.r.Dial(context.WithoutCancel(ctx), scheme, addr)
	if err != nil {
		return nil, err
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
