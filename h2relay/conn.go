package h2relay

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/authproxy/authproxy/internal/netwait"
)

// conn is one HTTP/2 connection: a client's (server is true: the relay
// serves it) or an upstream's. Its goroutine reads frames and acts on them;
// any goroutine may write, holding mu (the state) and then wmu (the
// encoder and the buffered writer), never another conn's mu.
type conn struct {
	r      *Relay
	nc     net.Conn
	server bool
	pool   *pool  // upstream connections only
	data   any    // client connections: ServeConnWith's data
	remote string // the peer's address
	br     *connReader
	fr     *http2.Framer
	hr     *headerReader // decodes fr's header blocks

	wmu       sync.Mutex
	lazy      *time.Timer         // flushSoon's
	lazyArmed bool                // lazy waits to flush an acknowledgement (under wmu)
	head      []hpack.HeaderField // a request head being written (under wmu)
	bw        *connWriter
	enc       *hpack.Encoder
	hbuf      bytes.Buffer

	mu         sync.Mutex
	streams    map[uint32]*half
	sendWin    int64  // connection-level send window
	initWin    int64  // the peer's initial stream window
	maxFrame   uint32 // the peer's largest frame
	maxStreams uint32 // the peer's concurrency limit (upstream)
	recvWin    int64  // what the peer may still send us
	unacked    int64  // received and passed on, not yet granted back
	nextID     uint32 // upstream: the next stream ID
	reserved   int    // upstream: streams being opened
	lastID     uint32 // client connections: the highest stream ID seen
	goingAway  bool   // no new streams
	closed     bool
	blocked    map[*half]struct{} // halves with data waiting for window
	idle       *time.Timer

	// Client connections: the budget of resets of open streams (rapid
	// reset, CVE-2023-44487), read and written by the reading goroutine only.
	resetTokens float64
	resetAt     time.Time
	throttled   int
	refilled    float64 // tokens the budget regained since the connection began
	// The streams the client closed most recently (its RST_STREAM or
	// END_STREAM), for DATA that follows (RFC 9113 §5.1: STREAM_CLOSED); a
	// ring, read and written by the reading goroutine.
	clientClosed [16]uint32
	closedAt     int
	// The budget's clock where the socket can tell it is empty: the time
	// the connection spent waiting for its client (idleAt: since when it
	// waits, zero while it has frames to handle; idleFor: waited since the
	// last charge).
	idleClock bool
	idleAt    time.Time
	idleFor   time.Duration
}

// half is one stream's leg on one connection.
type half struct {
	c  *conn
	id uint32 // 0 until HEADERS are sent (upstream)
	s  *stream

	// Sending on c, under c.mu.
	started bool                // HEADERS sent
	sendWin int64               // stream-level send window
	queue   []byte              // data waiting to be sent (an owned copy)
	src     *half               // the leg the queued data came from, credited as it leaves; nil for a replay
	endQ    bool                // END_STREAM once the queue is sent
	trailer []hpack.HeaderField // sent with END_STREAM after the queue
	sentEnd bool

	// Receiving on c, under c.mu.
	recvWin int64
	unacked int64
	debt    int64 // bytes a tap added to what it received, not to be credited
	recvEnd bool
	reset   bool
	// bodyLeft is a client leg's declared content-length less the DATA
	// received; -1 without one (RFC 9113 §8.1.1). Upstream legs do not
	// use it.
	bodyLeft int64
}

func newConn(r *Relay, nc net.Conn, server bool) *conn {
	c := &conn{
		r: r, nc: nc, server: server, remote: nc.RemoteAddr().String(),
		bw:       &connWriter{nc: nc},
		streams:  map[uint32]*half{},
		sendWin:  65535,
		initWin:  65535,
		maxFrame: 16384,
		recvWin:  65535,
		nextID:   1,
		blocked:  map[*half]struct{}{},
	}
	c.br = &connReader{nc: nc, idle: c.idleForRead, rearm: c.rearmRead}
	c.maxStreams = 100 // until the upstream's SETTINGS say
	c.resetTokens = resetBurst
	c.fr = http2.NewFramer(c.bw, c.br)
	c.fr.SetMaxReadFrameSize(frameSize)
	c.fr.SetReuseFrames() // a DATA frame is handled before the next read, and not kept
	c.hr = newHeaderReader(r.maxHeaderBytes())
	c.enc = hpack.NewEncoder(&c.hbuf)
	return c
}

func (r *Relay) maxStreams() uint32 {
	if r.MaxConcurrentStreams == 0 {
		return 250
	}
	return r.MaxConcurrentStreams
}

func (r *Relay) maxHeaderBytes() uint32 {
	if r.MaxHeaderBytes == 0 {
		return 1 << 20
	}
	return r.MaxHeaderBytes
}

// settings are what the relay says on both sides.
func (c *conn) settings() []http2.Setting {
	s := []http2.Setting{
		{ID: http2.SettingInitialWindowSize, Val: streamWindow},
		{ID: http2.SettingMaxHeaderListSize, Val: c.r.maxHeaderBytes()},
	}
	if c.server {
		s = append(s, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.r.maxStreams()})
	} else {
		s = append(s, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	}
	return s
}

// serverHandshake reads a client's preface and first SETTINGS, within the
// preface timeout, and sends the relay's.
func (c *conn) serverHandshake() error {
	if t := c.r.PrefaceTimeout; t > 0 {
		_ = c.nc.SetReadDeadline(time.Now().Add(t))
	}
	var pre [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(c.br, pre[:]); err != nil || string(pre[:]) != http2.ClientPreface {
		return errors.New("no HTTP/2 preface")
	}
	f, err := c.fr.ReadFrame()
	if err != nil {
		return err
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return errors.New("the preface is not followed by SETTINGS")
	}
	_ = c.nc.SetReadDeadline(time.Time{})
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.fr.WriteSettings(c.settings()...); err != nil {
		return err
	}
	if err := c.applySettings(sf); err != nil {
		return err
	}
	if err := c.fr.WriteWindowUpdate(0, connWindow-65535); err != nil {
		return err
	}
	c.recvWin = connWindow
	c.armIdle()
	return c.bw.Flush()
}

// clientHandshake sends the preface and the relay's SETTINGS upstream.
func (c *conn) clientHandshake() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := c.bw.WriteString(http2.ClientPreface); err != nil {
		return err
	}
	if err := c.fr.WriteSettings(c.settings()...); err != nil {
		return err
	}
	if err := c.fr.WriteWindowUpdate(0, connWindow-65535); err != nil {
		return err
	}
	c.recvWin = connWindow
	return c.bw.Flush()
}

// applySettings takes the peer's SETTINGS and acknowledges them; c.mu and
// c.wmu are held.
func (c *conn) applySettings(f *http2.SettingsFrame) error {
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.initWin
			c.initWin = int64(s.Val)
			for _, h := range c.streams {
				h.sendWin += delta
				if h.sendWin > 1<<31-1 {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
		case http2.SettingMaxFrameSize:
			c.maxFrame = s.Val
		case http2.SettingHeaderTableSize:
			c.enc.SetMaxDynamicTableSizeLimit(s.Val)
		case http2.SettingMaxConcurrentStreams:
			c.maxStreams = s.Val
		}
		return nil
	})
	if err != nil {
		return err
	}
	return c.fr.WriteSettingsAck()
}

// flusher collects the connections a reading goroutine wrote to, so that
// a batch of frames read together leaves in one write each.
type flusher struct {
	conns  []*conn
	frames int // frames handled since the last flush, while one is pending
}

// batchFrames bounds a batch: frames that keep arriving without a pause
// are flushed every batchFrames frames, so a busy connection cannot hold
// back what its frames caused.
const batchFrames = 64

func (fl *flusher) mark(c *conn) {
	for _, x := range fl.conns {
		if x == c {
			return
		}
	}
	fl.conns = append(fl.conns, c)
}

func (fl *flusher) flush() {
	for _, c := range fl.conns {
		c.flush()
	}
	fl.conns = fl.conns[:0]
	fl.frames = 0
}

// handled counts a frame; it reports whether the batch is due.
func (fl *flusher) handled() bool {
	if len(fl.conns) == 0 {
		return false
	}
	fl.frames++
	return fl.frames >= batchFrames
}

// wrote is called after frames were written to c: it flushes them now, or
// leaves them to fl.
func (c *conn) wrote(fl *flusher) {
	if fl != nil {
		fl.mark(c)
		return
	}
	c.flush()
}

// flushSoon leaves what is buffered (a PING acknowledgement) to the next
// write on c, or to a timer if none comes within a millisecond. gRPC peers
// ping on every message they receive (bandwidth estimation); a write of
// its own for each acknowledgement would double the system calls of a
// stream of small messages.
func (c *conn) flushSoon() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.lazyArmed = true
	if c.lazy == nil {
		c.lazy = time.AfterFunc(time.Millisecond, c.flush)
		return
	}
	c.lazy.Reset(time.Millisecond)
}

// flush writes what is buffered. A write that carries a lazy
// acknowledgement stops its timer: a timer that fires starts a goroutine,
// which, with a second P idle, wakes another thread to do nothing.
func (c *conn) flush() {
	c.wmu.Lock()
	if c.lazyArmed {
		c.lazyArmed = false
		c.lazy.Stop()
	}
	err := c.bw.Flush()
	c.wmu.Unlock()
	if err != nil {
		c.close(err)
	}
}

// writeErr handles an error of a write made under wmu: the connection is
// broken, and its reader will end.
func (c *conn) writeErr(err error) {
	if err != nil {
		_ = c.nc.Close()
	}
}

// readLoop reads and acts on frames until the connection ends.
func (c *conn) readLoop() {
	fl := &flusher{}
	// Where the connection can tell (a TCP socket, under TLS or not), a
	// batch ends when a read is about to wait for the network: every frame
	// already in the socket is handled first. Elsewhere it ends when the
	// read buffer is empty.
	wc := netwait.Find(c.nc)
	if wc != nil {
		hook := fl.flush
		if c.server { // the reset budget's clock runs while the client is awaited
			c.idleClock = true
			hook = func() {
				fl.flush()
				if c.idleAt.IsZero() {
					c.idleAt = time.Now()
				}
			}
		}
		wc.SetHook(hook)
	}
	defer func() {
		if wc != nil {
			wc.SetHook(nil)
		}
		fl.flush()
		c.br.release()
	}()
	for {
		f, err := c.readFrame()
		if !c.idleAt.IsZero() {
			c.idleFor += time.Since(c.idleAt)
			c.idleAt = time.Time{}
		}
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.resetStream(se.StreamID, se.Code, fl)
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				c.sendGoAway(http2.ErrCode(ce))
				c.logEnd(err)
			}
			c.close(err)
			return
		}
		if err := c.handle(f, fl); err != nil {
			code := http2.ErrCodeProtocol
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				code = http2.ErrCode(ce)
			}
			c.sendGoAway(code)
			c.logEnd(err)
			c.close(err)
			return
		}
		if fl.handled() || (wc == nil && c.br.Buffered() == 0) {
			fl.flush()
		}
	}
}

// closedByClient records that the client closed stream id (its
// RST_STREAM or END_STREAM); on the reading goroutine.
func (c *conn) closedByClient(id uint32) {
	c.clientClosed[c.closedAt%len(c.clientClosed)] = id
	c.closedAt++
}

// clientClosedIt reports whether the client closed stream id itself,
// lately; on the reading goroutine.
func (c *conn) clientClosedIt(id uint32) bool {
	for _, r := range c.clientClosed {
		if r == id {
			return true
		}
	}
	return false
}

// idleStream reports whether stream id is idle (RFC 9113 §5.1): one the
// peer that opens it has not opened yet, or a server-initiated one (push
// is off, so the relay's upstreams and clients never open any). Only the
// reading goroutine calls it; idleLocked is the same with c.mu held.
func (c *conn) idleStream(id uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.idleLocked(id)
}

func (c *conn) idleLocked(id uint32) bool {
	switch {
	case id == 0:
		return false
	case id%2 == 0:
		return true
	case c.server:
		return id > c.lastID
	}
	return id >= c.nextID
}

// logEnd logs a connection the relay ends for breaking the protocol.
func (c *conn) logEnd(err error) {
	c.r.log().Info("HTTP/2 connection ended: protocol error", "side", c.side(), "remote", c.remote, "err", err)
}

// side names the connection's side: client or upstream.
func (c *conn) side() string {
	if c.server {
		return "client"
	}
	return "upstream"
}

func (c *conn) handle(f http2.Frame, fl *flusher) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return c.onData(f, fl)
	case *http2.MetaHeadersFrame:
		if c.server {
			return c.onRequestHeaders(f, fl)
		}
		return c.onResponseHeaders(f, fl)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f, fl)
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		c.mu.Lock()
		c.wmu.Lock()
		err := c.applySettings(f)
		c.wmu.Unlock()
		after := c.drainAll(fl)
		c.mu.Unlock()
		c.wrote(fl) // the acknowledgement
		if after != nil {
			after()
		}
		return err
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		c.wmu.Lock()
		c.writeErr(c.fr.WritePing(true, f.Data))
		c.wmu.Unlock()
		c.flushSoon()
	case *http2.RSTStreamFrame:
		if c.idleStream(f.StreamID) { // RFC 9113 §5.1
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if c.server && c.isOpen(f.StreamID) {
			if err := c.chargeReset(fl); err != nil {
				return err
			}
		}
		if c.server {
			c.closedByClient(f.StreamID)
		}
		c.onReset(f.StreamID, f.ErrCode, fl)
	case *http2.GoAwayFrame:
		if fn := c.r.OnGoAway; fn != nil {
			fn(c.side(), "received", f.ErrCode)
		}
		c.onGoAway(f.LastStreamID, fl)
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // push is off
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID { // RFC 9113 §5.3.1: a stream cannot depend on itself
			c.resetStream(f.StreamID, http2.ErrCodeProtocol, fl)
		}
	}
	return nil
}

// The rapid-reset defence (CVE-2023-44487), per client connection: every
// reset of a stream the relay still serves costs a token from a bucket of
// resetBurst, refilled at resetRate for each second the connection spent
// waiting for its client (its socket found empty; where a connection
// cannot tell, each second of wall time). Past the bucket, each reset
// holds the connection's reading goroutine for one token's time
// (throttled; the wait refills nothing), and resetDebt such resets before
// the bucket is half full again end the connection with GOAWAY
// ENHANCE_YOUR_CALM.
//
// The bound is on work, not time: a client that sends resets faster than
// the relay serves them keeps its socket full, so the relay never waits
// for it and the bucket never refills, however slowly the relay runs (a
// relay starved of CPU used to refill by the second while it read, and
// let thousands through). Such a client gets at most
// resetBurst+resetDebt streams to the upstream. A client that paces its
// resets gets at most about resetRate a second; one that cancels calls
// at 1,000 a second, the relay idle between them, never empties the
// bucket.
const (
	resetBurst = 250
	resetRate  = 2000.0
	resetDebt  = 250
)

// ErrTooManyResets is the error of a connection ended for resetting
// streams faster than they complete.
var ErrTooManyResets = errors.New("h2relay: the client resets streams faster than they complete")

// isOpen reports whether stream id is one the relay is still serving.
func (c *conn) isOpen(id uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id] != nil
}

// chargeReset takes a reset from the budget; on the reading goroutine.
func (c *conn) chargeReset(fl *flusher) error {
	now := time.Now()
	before := c.resetTokens
	switch {
	case c.idleClock:
		c.resetTokens = min(resetBurst, c.resetTokens+c.idleFor.Seconds()*resetRate)
		c.idleFor = 0
	case !c.resetAt.IsZero():
		c.resetTokens = min(resetBurst, c.resetTokens+now.Sub(c.resetAt).Seconds()*resetRate)
	}
	c.refilled += c.resetTokens - before
	c.resetAt = now
	if c.resetTokens >= resetBurst/2 {
		c.throttled = 0
	}
	if c.resetTokens >= 1 {
		c.resetTokens--
		return nil
	}
	c.throttled++
	if c.throttled > resetDebt {
		return fmt.Errorf("%w (%d refilled while the relay waited for it): %w", ErrTooManyResets, int(c.refilled), http2.ConnectionError(http2.ErrCodeEnhanceYourCalm))
	}
	fl.flush() // what this goroutine wrote leaves before it waits
	time.Sleep(time.Duration(float64(time.Second) / resetRate))
	c.resetAt = time.Now() // the wait is a penalty, not a refill
	return nil
}

// sendGoAway tells the peer the connection is ending.
func (c *conn) sendGoAway(code http2.ErrCode) {
	if fn := c.r.OnGoAway; fn != nil {
		fn(c.side(), "sent", code)
	}
	c.mu.Lock()
	last := c.lastID
	c.goingAway = true
	c.mu.Unlock()
	c.wmu.Lock()
	_ = c.fr.WriteGoAway(last, code, nil)
	_ = c.bw.Flush()
	c.wmu.Unlock()
}

// goAway stops a client connection from opening streams; it closes once
// those it has end.
func (c *conn) goAway() {
	c.sendGoAway(http2.ErrCodeNo)
	c.mu.Lock()
	empty := len(c.streams) == 0
	c.mu.Unlock()
	if empty {
		c.finish()
	}
}

// finish ends a connection that has no stream left after GOAWAY: what is
// buffered is written, the write side closed, and the reader ends at the
// peer's close (or after a second), so the last frames are not lost to a
// reset.
func (c *conn) finish() {
	c.wmu.Lock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	err := c.bw.Flush()
	c.wmu.Unlock()
	type closeWriter interface{ CloseWrite() error }
	if cw, ok := c.nc.(closeWriter); ok && err == nil {
		_ = cw.CloseWrite()
		_ = c.nc.SetReadDeadline(time.Now().Add(time.Second))
		return
	}
	c.close(errors.New("going away"))
}

// close ends the connection and every stream on it.
func (c *conn) close(err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	if c.idle != nil {
		c.idle.Stop()
	}
	halves := make([]*half, 0, len(c.streams))
	for _, h := range c.streams {
		halves = append(halves, h)
	}
	c.mu.Unlock()
	c.wmu.Lock()
	if c.lazy != nil {
		c.lazy.Stop()
	}
	c.wmu.Unlock()
	_ = c.nc.Close()
	if c.pool != nil {
		c.pool.remove(c)
	}
	for _, h := range halves {
		h.s.legFailed(h, http2.ErrCodeInternal, &upstreamErr{fmt.Errorf("connection closed: %v", err)}, false, nil)
	}
}

// armIdle (c.mu held) closes a client connection that has had no stream
// for the idle timeout, and an upstream one for the upstream idle timeout.
func (c *conn) armIdle() {
	d := c.r.IdleTimeout
	if !c.server {
		d = c.r.UpstreamIdleTimeout
	}
	if d <= 0 || c.busy() || c.closed {
		return
	}
	if c.idle == nil {
		c.idle = time.AfterFunc(d, func() {
			c.mu.Lock()
			busy := c.busy()
			c.mu.Unlock()
			if !busy {
				if c.server {
					c.sendGoAway(http2.ErrCodeNo)
				}
				c.close(errors.New("idle"))
			}
		})
		return
	}
	c.idle.Reset(d)
}

// busy (c.mu held): a stream is open, or one is being opened on a slot
// Relay.upstream reserved.
func (c *conn) busy() bool { return len(c.streams)+c.reserved > 0 }

// rearmRead sets the read deadline after a kick: none, or the second a
// finishing connection waits for its peer's close.
func (c *conn) rearmRead() {
	c.mu.Lock()
	finishing := c.goingAway
	c.mu.Unlock()
	var d time.Time
	if finishing {
		d = time.Now().Add(time.Second)
	}
	_ = c.nc.SetReadDeadline(d)
}

// idleForRead tells the reader whether it may read without a buffer.
func (c *conn) idleForRead() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.busy()
}

// writeHeaders encodes fields and writes them as HEADERS and
// CONTINUATION frames no larger than the peer takes; c.mu and c.wmu are
// held.
func (c *conn) writeHeaders(id uint32, fields []hpack.HeaderField, end bool) error {
	return c.writeHead(id, "", fields, end)
}

// writeHead is writeHeaders for a response head given as its status and
// the upstream's fields, whose connection-specific ones it leaves out;
// with status "", fields are written as they are. No field slice is built.
func (c *conn) writeHead(id uint32, status string, fields []hpack.HeaderField, end bool) error {
	c.hbuf.Reset()
	if status != "" {
		if err := c.enc.WriteField(hpack.HeaderField{Name: ":status", Value: status}); err != nil {
			return err
		}
	}
	for _, f := range fields {
		if status != "" && hopByHop(f.Name) {
			continue
		}
		if err := c.enc.WriteField(f); err != nil {
			return err
		}
	}
	block := c.hbuf.Bytes()
	first := true
	for {
		n := min(len(block), int(c.maxFrame))
		frag, rest := block[:n], block[n:]
		var err error
		if first {
			err = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: end, EndHeaders: len(rest) == 0})
			first = false
		} else {
			err = c.fr.WriteContinuation(id, len(rest) == 0, frag)
		}
		if err != nil || len(rest) == 0 {
			return err
		}
		block = rest
	}
}
