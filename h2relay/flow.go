package h2relay

import (
	"slices"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// send writes data on h, now if its windows allow and nothing is queued
// before it, or queues a copy until they do. The leg it came from is
// credited as it leaves.
func (c *conn) send(h *half, data []byte, end bool, fl *flusher) {
	n := int64(len(data))
	if h == h.s.client {
		h.s.out.Add(n)
	}
	c.mu.Lock()
	if c.closed || h.reset || h.sentEnd {
		c.mu.Unlock()
		if h.src != nil {
			h.src.c.creditConn(n, fl)
		}
		return
	}
	if !h.started || len(h.queue) > 0 || h.trailer != nil || n > h.sendWin || n > c.sendWin {
		h.queue = append(h.queue, data...)
		if end {
			h.endQ = true
		}
		sent := 0
		if h.started {
			sent = c.drainLocked(h)
		}
		c.mu.Unlock()
		c.wrote(fl)
		if sent > 0 && h.src != nil {
			h.src.c.credit(h.src, sent, fl)
		}
		return
	}
	h.sendWin -= n
	c.sendWin -= n
	c.wmu.Lock()
	c.writeErr(c.fr.WriteData(h.id, end, data))
	c.wmu.Unlock()
	if end {
		h.sentEnd = true
	}
	c.mu.Unlock()
	c.wrote(fl)
	if h.src != nil && n > 0 {
		h.src.c.credit(h.src, int(n), fl)
	}
	if end {
		c.settle(h)
	}
}

// sendTrailers ends h with trailers, after what it has queued.
func (c *conn) sendTrailers(h *half, fields []hpack.HeaderField, fl *flusher) {
	c.mu.Lock()
	if c.closed || h.reset || h.sentEnd {
		c.mu.Unlock()
		return
	}
	if !h.started || len(h.queue) > 0 { // kept: the caller's fields may be a frame's
		h.trailer, h.endQ = slices.Clone(fields), true
		c.mu.Unlock()
		return
	}
	c.wmu.Lock()
	c.writeErr(c.writeHeaders(h.id, fields, true))
	c.wmu.Unlock()
	h.sentEnd = true
	c.mu.Unlock()
	c.wrote(fl)
	c.settle(h)
}

// sendHead writes a response head (or an informational one) on a client's
// leg: status and the upstream's fields (see writeHead), or with status ""
// a head built whole. Nothing is queued on the leg before its head:
// response data follows the head on the same reading goroutine.
func (c *conn) sendHead(h *half, status string, fields []hpack.HeaderField, end bool, fl *flusher) {
	c.mu.Lock()
	if c.closed || h.reset || h.sentEnd {
		c.mu.Unlock()
		return
	}
	c.wmu.Lock()
	c.writeErr(c.writeHead(h.id, status, fields, end))
	c.wmu.Unlock()
	h.started = true
	if end {
		h.sentEnd = true
	}
	c.mu.Unlock()
	c.wrote(fl)
	if end {
		c.settle(h)
	}
}

// drainLocked writes as much of h's queue as the windows allow, then its
// end; c.mu is held. It returns the bytes written, which the caller
// credits to h.src once c.mu is released.
func (c *conn) drainLocked(h *half) int {
	sent := 0
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for len(h.queue) > 0 {
		n := min(int64(len(h.queue)), h.sendWin, c.sendWin, int64(c.maxFrame))
		if n <= 0 {
			c.blocked[h] = struct{}{}
			return sent
		}
		last := n == int64(len(h.queue))
		if err := c.fr.WriteData(h.id, last && h.endQ && h.trailer == nil, h.queue[:n]); err != nil {
			c.writeErr(err)
			return sent
		}
		h.queue = h.queue[n:]
		h.sendWin -= n
		c.sendWin -= n
		sent += int(n)
		if last && h.endQ && h.trailer == nil {
			h.sentEnd, h.endQ = true, false
		}
	}
	h.queue = nil
	delete(c.blocked, h)
	if h.endQ {
		if h.trailer != nil {
			c.writeErr(c.writeHeaders(h.id, h.trailer, true))
		} else {
			c.writeErr(c.fr.WriteData(h.id, true, nil))
		}
		h.sentEnd, h.endQ, h.trailer = true, false, nil
	}
	return sent
}

// drainAll drains every blocked half after the windows grew; c.mu is
// held. Credits to their sources are made after c.mu is released, by the
// returned function.
func (c *conn) drainAll(fl *flusher) (after func()) {
	type credit struct {
		h *half
		n int
	}
	if len(c.blocked) == 0 {
		return nil
	}
	var credits []credit
	var ended []*half
	for h := range c.blocked {
		if n := c.drainLocked(h); n > 0 && h.src != nil {
			credits = append(credits, credit{h.src, n})
		}
		if h.sentEnd {
			ended = append(ended, h)
		}
	}
	return func() {
		for _, cr := range credits {
			cr.h.c.credit(cr.h, cr.n, fl)
		}
		for _, h := range ended {
			c.settle(h)
		}
	}
}

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame, fl *flusher) error {
	inc := int64(f.Increment)
	c.mu.Lock()
	var after func()
	if f.StreamID == 0 {
		c.sendWin += inc
		if c.sendWin > 1<<31-1 {
			c.mu.Unlock()
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		after = c.drainAll(fl)
	} else if h := c.streams[f.StreamID]; h != nil {
		h.sendWin += inc
		if h.sendWin > 1<<31-1 {
			c.mu.Unlock()
			c.resetStream(f.StreamID, http2.ErrCodeFlowControl, fl)
			return nil
		}
		if _, ok := c.blocked[h]; ok {
			n := c.drainLocked(h)
			src, ended := h.src, h.sentEnd
			after = func() {
				if n > 0 && src != nil {
					src.c.credit(src, n, fl)
				}
				if ended {
					c.settle(h)
				}
			}
		}
	} else if c.idleLocked(f.StreamID) { // RFC 9113 §5.1
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.mu.Unlock()
	if after != nil {
		c.wrote(fl)
		after()
	}
	return nil
}

// credit records that n bytes h received have been passed on, and gives
// the windows back to the peer once a quarter of them is spent.
func (c *conn) credit(h *half, n int, fl *flusher) {
	c.mu.Lock()
	if d := min(h.debt, int64(n)); d > 0 { // bytes a tap added, never received
		h.debt -= d
		n -= int(d)
	}
	if c.closed || n <= 0 {
		c.mu.Unlock()
		return
	}
	c.unacked += int64(n)
	var connInc, streamInc int64
	if c.unacked >= connWindow/4 {
		connInc, c.unacked = c.unacked, 0
		c.recvWin += connInc
	}
	if !h.recvEnd && !h.reset {
		h.unacked += int64(n)
		if h.unacked >= streamWindow/4 {
			streamInc, h.unacked = h.unacked, 0
			h.recvWin += streamInc
		}
	}
	if connInc > 0 || streamInc > 0 {
		c.wmu.Lock()
		if connInc > 0 {
			c.writeErr(c.fr.WriteWindowUpdate(0, uint32(connInc)))
		}
		if streamInc > 0 {
			c.writeErr(c.fr.WriteWindowUpdate(h.id, uint32(streamInc)))
		}
		c.wmu.Unlock()
	}
	c.mu.Unlock()
	if connInc > 0 || streamInc > 0 {
		c.wrote(fl)
	}
}

// creditConn gives back connection window for data that was dropped.
func (c *conn) creditConn(n int64, fl *flusher) {
	if n <= 0 {
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.unacked += n
	var inc int64
	if c.unacked >= connWindow/4 {
		inc, c.unacked = c.unacked, 0
		c.recvWin += inc
		c.wmu.Lock()
		c.writeErr(c.fr.WriteWindowUpdate(0, uint32(inc)))
		c.wmu.Unlock()
	}
	c.mu.Unlock()
	if inc > 0 {
		c.wrote(fl)
	}
}

// owe records that n bytes more will leave to the client than h received
// (a tap's rewrite made a message longer): they are not credited to h.
func (c *conn) owe(h *half, n int) {
	c.mu.Lock()
	h.debt += int64(n)
	c.mu.Unlock()
}
