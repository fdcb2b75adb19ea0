package h2relay

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// stream is one client stream and its current upstream leg.
type stream struct {
	r      *Relay
	req    *Request
	cancel context.CancelFunc
	client *half

	began time.Time    // when its head arrived
	in    int64        // DATA bytes from the client, under mu
	out   atomic.Int64 // DATA bytes to the client

	mu          sync.Mutex
	status      int   // the final status the client got (0: none yet)
	up          *half // the current upstream leg; nil while it opens
	target      *Target
	answered    bool // a final response head (or a local reply) went to the client
	finished    bool // the client's leg is over
	retried     bool
	reqEnded    bool
	pre         []byte // request data that came before the upstream leg
	preEnd      bool
	preTrailer  []hpack.HeaderField
	keep        bool   // keep the request body for a retry
	replay      []byte // the request body so far, while keep
	replayEnded bool
	held        *heldResponse // a response head (and body so far) kept for Observe
	tap         *tapState     // reads the response's gRPC messages (Target.Tap)
	waiting     *waitingRetry // a complete held response whose retry waits for the request body's end

	// The client's leg and the first upstream leg, allocated with the
	// stream (a retry's leg is a half of its own).
	legs [2]half
}

// waitingRetry is a retry asked for before the client finished sending:
// the request goes again once its (kept) body is complete, or the held
// response goes to the client if the body outgrows the replay bound.
type waitingRetry struct {
	b   *half
	h   *heldResponse
	end bool
}

// heldResponse is a response the relay holds until its body is complete,
// so that Target.Observe can read it (at most PeekBytes). Its bytes are not
// credited to the upstream until they leave to the client.
type heldResponse struct {
	code   int
	status string              // its :status, as the upstream sent it
	fields []hpack.HeaderField // the upstream's other fields (a copy)
	header http.Header
	size   int64 // its content-length
	limit  int   // the most body bytes held
	body   []byte
	retry  bool // Observe has seen the head and asked for a retry
}

// onRequestHeaders opens a stream, or takes a client's trailers.
func (c *conn) onRequestHeaders(f *http2.MetaHeadersFrame, fl *flusher) error {
	id := f.StreamID
	c.mu.Lock()
	if h := c.streams[id]; h != nil {
		if h.recvEnd { // half-closed (remote): RFC 9113 §5.1
			c.mu.Unlock()
			c.resetStream(id, http2.ErrCodeStreamClosed, fl)
			return nil
		}
		if !f.StreamEnded() || h.bodyLeft > 0 { // trailers end the stream, and its body (§8.1.1)
			c.mu.Unlock()
			c.resetStream(id, http2.ErrCodeProtocol, fl)
			return nil
		}
		h.recvEnd = true
		c.mu.Unlock()
		c.closedByClient(id)
		h.s.requestTrailers(f.RegularFields(), fl)
		c.settle(h)
		return nil
	}
	if id%2 == 0 || id <= c.lastID {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.lastID = id
	if f.HasPriority() && f.Priority.StreamDep == id { // RFC 9113 §5.3.1
		c.mu.Unlock()
		c.writeReset(id, http2.ErrCodeProtocol, fl)
		return nil
	}
	if c.goingAway || c.closed || uint32(len(c.streams)) >= c.r.maxStreams() {
		reason := "max_streams"
		if c.goingAway || c.closed {
			reason = "going_away"
		}
		c.mu.Unlock()
		c.writeReset(id, http2.ErrCodeRefusedStream, fl)
		if fn := c.r.OnRefused; fn != nil {
			fn(reason)
		}
		return nil
	}
	req, err := requestOf(f)
	var bodyLeft int64 = -1
	if err == nil {
		bodyLeft, err = declaredLength(req.Header)
	}
	if err == nil && f.StreamEnded() && bodyLeft > 0 {
		err = errors.New("a content-length with no body") // RFC 9113 §8.1.1
	}
	if err != nil {
		c.mu.Unlock()
		c.writeReset(id, http2.ErrCodeProtocol, fl)
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	req.Context, req.RemoteAddr, req.ConnData = ctx, c.remote, c.data
	s := &stream{r: c.r, req: req, cancel: cancel, reqEnded: f.StreamEnded(), preEnd: f.StreamEnded(), began: time.Now()}
	a := &s.legs[0]
	*a = half{c: c, id: id, s: s, sendWin: c.initWin, recvWin: streamWindow, recvEnd: f.StreamEnded(), bodyLeft: bodyLeft}
	s.client = a
	c.streams[id] = a
	if c.idle != nil {
		c.idle.Stop()
	}
	c.mu.Unlock()
	if f.StreamEnded() {
		c.closedByClient(id)
	}
	if f.Truncated {
		go s.replyLocal(nil, ErrHeaderTooLarge)
		return nil
	}
	req.Inline = true
	t, err := c.r.Handler.Open(req)
	req.Inline = false
	switch {
	case errors.Is(err, ErrWouldBlock):
		go s.open()
	case err != nil:
		go s.replyLocal(nil, err)
	default:
		// On this goroutine only if a connection is ready: a dial waits.
		if uc := c.r.ready(t); uc != nil {
			s.startOn(uc, t, false, fl)
		} else {
			go s.startLeg(t, false)
		}
	}
	return nil
}

// declaredLength is a request's content-length (-1 without one); several
// that differ, or one that is not a number, make it malformed.
func declaredLength(h http.Header) (int64, error) {
	vs := h["Content-Length"]
	if len(vs) == 0 {
		return -1, nil
	}
	n, err := strconv.ParseInt(vs[0], 10, 64)
	if err != nil || n < 0 {
		return 0, errors.New("a content-length that is not a length")
	}
	for _, v := range vs[1:] {
		if v != vs[0] {
			return 0, errors.New("differing content-lengths")
		}
	}
	return n, nil
}

// ErrHeaderTooLarge is the error Reply gets for a request header block
// over MaxHeaderBytes.
var ErrHeaderTooLarge = errors.New("h2relay: request header block too large")

// requestOf reads a request head, refusing what HTTP/2 forbids in one.
func requestOf(f *http2.MetaHeadersFrame) (*Request, error) {
	req := &Request{
		Method:    f.PseudoValue("method"),
		Scheme:    f.PseudoValue("scheme"),
		Authority: f.PseudoValue("authority"),
		Path:      f.PseudoValue("path"),
	}
	if req.Method == "" || req.Method == http.MethodConnect || req.Path == "" || req.Scheme == "" ||
		f.PseudoValue("protocol") != "" {
		return nil, errors.New("bad pseudo-header fields")
	}
	fields := f.RegularFields()
	req.Header = make(http.Header, len(fields))
	vals := make([]string, 0, len(fields)) // one array for the values of every key
	for _, hf := range fields {
		switch {
		case hf.Name == "host":
			if req.Authority == "" {
				req.Authority = hf.Value
			}
			continue
		case hopByHop(hf.Name):
			return nil, errors.New("connection-specific header field")
		case hf.Name == "te" && hf.Value != "trailers":
			return nil, errors.New("te other than trailers")
		}
		k := canonicalKey(hf.Name)
		if vs, ok := req.Header[k]; ok {
			req.Header[k] = append(vs, hf.Value) // a repeated key: its own array
			continue
		}
		vals = append(vals, hf.Value)
		req.Header[k] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	return req, nil
}

// hopByHop are header fields that never travel on HTTP/2.
func hopByHop(name string) bool {
	switch name {
	case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade", "host":
		return true
	}
	return false
}

// appendFields appends a Target's request head, as HPACK fields, to out.
// Credentials are marked never-indexed, so they stay out of both sides'
// tables.
func appendFields(out []hpack.HeaderField, t *Target) []hpack.HeaderField {
	scheme := "https"
	if t.Scheme == "http" {
		scheme = "http"
	}
	out = append(out,
		hpack.HeaderField{Name: ":method", Value: t.Method},
		hpack.HeaderField{Name: ":scheme", Value: scheme},
		hpack.HeaderField{Name: ":authority", Value: t.Authority},
		hpack.HeaderField{Name: ":path", Value: t.Path})
	for k, vs := range t.Header {
		lk := lowerKey(k)
		if hopByHop(lk) || (lk == "te" && !(len(vs) == 1 && vs[0] == "trailers")) {
			continue
		}
		sensitive := lk == "authorization" || lk == "proxy-authorization" || lk == "cookie" || lk == "session"
		for _, v := range vs {
			out = append(out, hpack.HeaderField{Name: lk, Value: v, Sensitive: sensitive})
		}
	}
	return out
}

// open asks the Handler where the stream goes and starts its upstream leg.
func (s *stream) open() {
	t, err := s.r.Handler.Open(s.req)
	if err != nil {
		s.replyLocal(nil, err)
		return
	}
	s.startLeg(t, false)
}

// startLeg opens an upstream stream to t and sends what the client has
// sent so far (replay: the whole kept body, for a retry).
func (s *stream) startLeg(t *Target, replay bool) {
	uc, err := s.r.upstream(s.req.Context, t)
	if err != nil {
		s.replyLocal(t, &upstreamErr{err})
		return
	}
	s.startOn(uc, t, replay, nil)
}

// startOn is startLeg on uc, a connection with a stream reserved. With a
// flusher (on a reading goroutine), the HEADERS leave with its batch.
func (s *stream) startOn(uc *conn, t *Target, replay bool, fl *flusher) {
	b := &s.legs[1] // the first leg: replay is false once per stream
	if replay {
		b = new(half)
	}
	*b = half{c: uc, s: s, recvWin: streamWindow}
	s.mu.Lock()
	if s.finished || s.answered {
		s.mu.Unlock()
		uc.release()
		return
	}
	s.target = t
	if replay {
		b.queue, b.endQ = s.replay, s.replayEnded
		s.replay = nil
	} else {
		b.src = s.client
		b.queue, b.endQ, b.trailer = s.pre, s.preEnd, t.filterTrailers(s.preTrailer)
		s.pre, s.preTrailer = nil, nil
		if t.Observe != nil && t.Retry != nil && len(b.queue) <= s.r.maxReplay() {
			s.keep = true
			s.replay = append([]byte(nil), b.queue...)
			s.replayEnded = b.endQ
		}
	}
	s.up = b
	s.mu.Unlock()
	a := s.client
	a.c.mu.Lock()
	a.src = b // response data is credited to this leg as it leaves
	a.c.mu.Unlock()
	sent, err := uc.startStream(b, t, fl)
	if err != nil {
		s.legFailed(b, http2.ErrCodeInternal, &upstreamErr{err}, false, nil)
		return
	}
	if b.src != nil && sent > 0 {
		b.src.c.credit(b.src, sent, fl)
	}
}

func (r *Relay) maxReplay() int {
	if r.MaxReplayBytes == 0 {
		return 1 << 20
	}
	return r.MaxReplayBytes
}

// startStream gives b a stream ID and sends its HEADERS and whatever it
// has queued. It returns how many queued bytes left.
func (c *conn) startStream(b *half, t *Target, fl *flusher) (int, error) {
	c.mu.Lock()
	c.reserved--
	if c.closed || c.goingAway {
		c.mu.Unlock()
		return 0, errors.New("upstream connection is going away")
	}
	if b.reset { // the client went away meanwhile
		c.armIdle()
		c.mu.Unlock()
		return 0, nil
	}
	b.id = c.nextID
	c.nextID += 2
	b.sendWin = c.initWin
	b.started = true
	c.streams[b.id] = b
	if c.idle != nil {
		c.idle.Stop()
	}
	endNow := len(b.queue) == 0 && b.endQ && b.trailer == nil
	c.wmu.Lock()
	c.head = appendFields(c.head[:0], t)
	err := c.writeHeaders(b.id, c.head, endNow)
	clear(c.head) // no credential stays referenced until the next stream
	c.wmu.Unlock()
	if err != nil {
		c.mu.Unlock()
		_ = c.nc.Close()
		return 0, err
	}
	sent := 0
	if endNow {
		b.sentEnd = true
		b.endQ = false
	} else {
		sent = c.drainLocked(b)
	}
	c.mu.Unlock()
	c.wrote(fl)
	return sent, nil
}

// release gives back a stream slot reserved by Relay.upstream; a
// connection left without streams starts its idle timer.
func (c *conn) release() {
	c.mu.Lock()
	c.reserved--
	c.armIdle()
	c.mu.Unlock()
}

// onData passes a DATA frame on to the other leg.
func (c *conn) onData(f *http2.DataFrame, fl *flusher) error {
	id := f.StreamID
	n := int64(f.Length)
	data := f.Data()
	c.mu.Lock()
	if n > c.recvWin {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	c.recvWin -= n
	h := c.streams[id]
	if h == nil || h.recvEnd || h.reset {
		c.mu.Unlock()
		c.creditConn(n, fl) // a stream that is over: only the connection's window
		if h == nil && ((c.server && id > c.lastID) || (!c.server && id >= c.nextID)) {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if h != nil && h.recvEnd || h == nil && c.server && c.clientClosedIt(id) {
			// DATA after the client's own END_STREAM or RST_STREAM
			// (RFC 9113 §5.1); DATA for a stream the relay closed may
			// still be in flight, and is ignored.
			c.resetStream(id, http2.ErrCodeStreamClosed, fl)
		}
		return nil
	}
	if n > h.recvWin {
		c.mu.Unlock()
		c.creditConn(n, fl)
		c.resetStream(id, http2.ErrCodeFlowControl, fl)
		return nil
	}
	h.recvWin -= n
	end := f.StreamEnded()
	if c.server && h.bodyLeft >= 0 { // a client leg with a content-length: RFC 9113 §8.1.1
		h.bodyLeft -= int64(len(data))
		if h.bodyLeft < 0 || end && h.bodyLeft != 0 {
			c.mu.Unlock()
			c.creditConn(n, fl)
			c.resetStream(id, http2.ErrCodeProtocol, fl) // the client's malformed request
			return nil
		}
	}
	if end {
		h.recvEnd = true
	}
	c.mu.Unlock()
	if end && c.server {
		c.closedByClient(id)
	}
	if pad := n - int64(len(data)); pad > 0 {
		c.credit(h, int(pad), fl)
	}
	if h == h.s.client {
		h.s.requestData(data, end, fl)
	} else {
		h.s.responseData(h, data, end, fl)
	}
	if end {
		c.settle(h)
	}
	return nil
}

// requestData sends request data on the upstream leg, or keeps it until
// the leg opens.
func (s *stream) requestData(data []byte, end bool, fl *flusher) {
	s.mu.Lock()
	s.in += int64(len(data))
	if end {
		s.reqEnded = true
	}
	if s.keep {
		if len(s.replay)+len(data) > s.r.maxReplay() {
			s.keep, s.replay = false, nil
		} else {
			s.replay = append(s.replay, data...)
			s.replayEnded = end
		}
	}
	if w := s.waiting; w != nil {
		// The upstream leg is over: the data goes only into the replay
		// copy (bounded by the replay limit), and is credited now.
		done := end || !s.keep
		if done {
			s.waiting = nil
		}
		s.mu.Unlock()
		s.client.c.credit(s.client, len(data), fl)
		if done && !s.retryFor(w.b, s.target, true, w.end, len(w.h.body), fl) { // the body outgrew the bound
			s.sendHeld(w.b, w.h, w.end, fl)
		}
		return
	}
	b := s.up
	if b == nil {
		if s.answered || s.finished {
			s.mu.Unlock()
			s.client.c.creditConn(int64(len(data)), fl)
			return
		}
		s.pre = append(s.pre, data...)
		s.preEnd = end
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	b.c.send(b, data, end, fl)
}

// requestTrailers sends a client's trailers after its data.
func (s *stream) requestTrailers(fields []hpack.HeaderField, fl *flusher) {
	s.mu.Lock()
	s.reqEnded = true
	s.keep, s.replay = false, nil // trailers are not replayed
	b := s.up
	if b == nil {
		s.preTrailer, s.preEnd = slices.Clone(fields), true // kept past the frame they came in
		s.mu.Unlock()
		return
	}
	t := s.target
	s.mu.Unlock()
	b.c.sendTrailers(b, t.filterTrailers(fields), fl)
}

// filterTrailers drops the fields t strips from request trailers.
func (t *Target) filterTrailers(fields []hpack.HeaderField) []hpack.HeaderField {
	if t == nil || len(t.StripTrailers) == 0 || fields == nil {
		return fields
	}
	out := make([]hpack.HeaderField, 0, len(fields))
	for _, f := range fields {
		if !slices.Contains(t.StripTrailers, f.Name) {
			out = append(out, f)
		}
	}
	return out
}

// responseData passes the current leg's response data to the client (or
// to the held response, until it is complete).
func (s *stream) responseData(b *half, data []byte, end bool, fl *flusher) {
	s.mu.Lock()
	if h := s.held; h != nil && b == s.up {
		h.body = append(h.body, data...)
		if !end && int64(len(h.body)) < h.size && len(h.body) <= h.limit {
			s.mu.Unlock()
			return
		}
		s.held = nil
		s.mu.Unlock()
		s.decideHeld(b, h, end, fl)
		return
	}
	current := b == s.up && s.answered
	if current && s.tap != nil {
		s.tapData(b, data, end, fl) // unlocks s.mu
		return
	}
	s.mu.Unlock()
	if !current {
		b.c.creditConn(int64(len(data)), fl)
		return
	}
	a := s.client
	a.c.send(a, data, end, fl)
}

// tapData passes response data through the stream's tap; s.mu is held
// and released. The upstream is credited per hop: for what the tap holds
// back, once it leaves; for bytes a rewrite removed, at once; bytes a
// rewrite added are owed (half.debt) and withheld from later credits.
func (s *stream) tapData(b *half, data []byte, end bool, fl *flusher) {
	ts := s.tap
	before := ts.held()
	out := ts.feed(data)
	if end {
		out = append(out, ts.flush()...)
		s.tap = nil
	}
	passed := len(data) - (ts.held() - before)
	s.mu.Unlock()
	if d := passed - len(out); d > 0 {
		b.c.credit(b, d, fl)
	} else if d < 0 {
		b.c.owe(b, -d)
	}
	a := s.client
	if len(out) > 0 || end {
		a.c.send(a, out, end, fl)
	}
	if end {
		ts.end(nil)
	}
}

// onResponseHeaders takes an upstream's response head or trailers.
func (c *conn) onResponseHeaders(f *http2.MetaHeadersFrame, fl *flusher) error {
	c.mu.Lock()
	b := c.streams[f.StreamID]
	if b == nil || b.recvEnd || b.reset {
		c.mu.Unlock()
		return nil // a stream the relay has reset
	}
	if f.Truncated { // over the relay's header limit: not passed on in part
		c.mu.Unlock()
		c.failLeg(b, http2.ErrCodeCancel, &upstreamErr{errors.New("response header block too large")}, fl)
		return nil
	}
	end := f.StreamEnded()
	if end {
		b.recvEnd = true
	}
	c.mu.Unlock()
	b.s.responseHead(b, f, end, fl)
	if end {
		c.settle(b)
	}
	return nil
}

func (s *stream) responseHead(b *half, f *http2.MetaHeadersFrame, end bool, fl *flusher) {
	a := s.client
	s.mu.Lock()
	if b != s.up {
		s.mu.Unlock()
		return
	}
	if h := s.held; h != nil { // trailers after a held response: it is complete
		s.held = nil
		s.mu.Unlock()
		if s.decideHeld(b, h, false, fl) {
			a.c.sendTrailers(a, f.RegularFields(), fl)
		}
		return
	}
	if s.answered { // trailers
		ts := s.tap
		var rest []byte
		if ts != nil {
			rest, s.tap = ts.flush(), nil
		}
		s.mu.Unlock()
		if len(rest) > 0 {
			a.c.send(a, rest, false, fl)
		}
		if ts != nil {
			ts.end(headerOf(f.RegularFields()))
		}
		a.c.sendTrailers(a, f.RegularFields(), fl)
		return
	}
	status := f.PseudoValue("status")
	code, err := strconv.Atoi(status)
	if err != nil || code < 100 || code > 999 {
		s.mu.Unlock()
		b.c.failLeg(b, http2.ErrCodeProtocol, &upstreamErr{errors.New("upstream sent an invalid :status")}, fl)
		return
	}
	if code < 200 { // informational: passed on, the final head follows
		s.mu.Unlock()
		a.c.sendHead(a, status, f.RegularFields(), false, fl)
		return
	}
	t := s.target
	if t.Observe != nil {
		header := headerOf(f.RegularFields())
		n, err := strconv.ParseInt(header.Get("Content-Length"), 10, 64)
		sized := err == nil && n > 0
		if !end && t.PeekBytes > 0 && sized && n <= int64(t.PeekBytes) {
			s.held = &heldResponse{code: code, status: status, fields: slices.Clone(f.RegularFields()), header: header, size: n, limit: t.PeekBytes}
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		retry := t.Observe(code, header, nil)
		if s.retryFor(b, t, retry, end, 0, fl) {
			return
		}
		s.mu.Lock()
		// A retry asked for on the head alone while the client is still
		// sending a body the relay keeps (an upstream may answer before it
		// reads the body): the response, if small and sized, is held like
		// a peeked one, so that the retry can wait for the body's end.
		if limit := s.r.maxReplay(); retry && b == s.up && !s.retried && s.keep && !s.finished && (end || sized && n <= int64(limit)) {
			h := &heldResponse{code: code, status: status, fields: slices.Clone(f.RegularFields()), header: header, size: n, limit: limit, retry: true}
			if !end {
				s.held = h
				s.mu.Unlock()
				return
			}
			s.mu.Unlock()
			s.decideHeld(b, h, end, fl)
			return
		}
	}
	s.answered, s.status = true, code
	s.keep, s.replay = false, nil
	var tap *Tap
	if t.Tap != nil {
		if tap = t.Tap(code, headerOf(f.RegularFields())); tap != nil && !end {
			s.tap = &tapState{t: tap}
		}
	}
	s.mu.Unlock()
	a.c.sendHead(a, status, f.RegularFields(), end, fl)
	if tap != nil && end && tap.End != nil { // Trailers-Only
		tap.End(headerOf(f.RegularFields()))
	}
}

// retryFor sends the request once more if Observe asked and it can be
// replayed, and reports whether it did; the current leg, with held bytes
// of response data not yet credited, is given up.
func (s *stream) retryFor(b *half, t *Target, retry, end bool, held int, fl *flusher) bool {
	s.mu.Lock()
	if !retry || s.retried || !s.keep || !s.reqEnded || !s.replayEnded || s.finished {
		s.mu.Unlock()
		return false
	}
	s.retried, s.up, s.pre = true, nil, nil
	s.mu.Unlock()
	if held > 0 {
		b.c.creditConn(int64(held), fl)
	}
	if !end {
		b.c.resetHalf(b, http2.ErrCodeCancel, fl)
	}
	go s.retryLeg(t)
	return true
}

// decideHeld shows a held response to Observe and then retries or sends
// it on; it reports whether the client got it. A retry asked for while
// the client is still sending a body the relay keeps waits for its end.
func (s *stream) decideHeld(b *half, h *heldResponse, end bool, fl *flusher) bool {
	t := s.target
	retry := h.retry || t.Observe(h.code, h.header, h.body)
	s.mu.Lock()
	if retry && end && !s.retried && s.keep && !s.finished && !(s.reqEnded && s.replayEnded) {
		s.waiting = &waitingRetry{b: b, h: h, end: end}
		s.up = nil
		s.mu.Unlock()
		b.c.resetHalf(b, http2.ErrCodeCancel, fl) // answered whole; the rest of the request is not sent on it
		return false
	}
	s.mu.Unlock()
	if s.retryFor(b, t, retry, end, len(h.body), fl) {
		return false
	}
	return s.sendHeld(b, h, end, fl)
}

// sendHeld sends a held response to the client; it reports whether it did.
func (s *stream) sendHeld(b *half, h *heldResponse, end bool, fl *flusher) bool {
	a := s.client
	s.mu.Lock()
	if s.finished || s.answered || (b != s.up && s.up != nil) {
		s.mu.Unlock()
		b.c.creditConn(int64(len(h.body)), fl)
		return false
	}
	s.answered, s.status = true, h.code
	s.keep, s.replay, s.pre = false, nil, nil
	s.mu.Unlock()
	a.c.sendHead(a, h.status, h.fields, false, fl)
	a.c.send(a, h.body, end, fl) // credited to b as it leaves, as any response data
	return true
}

// retryLeg sends the request once more, with what Retry gives.
func (s *stream) retryLeg(t *Target) {
	t2, err := t.Retry()
	if err != nil {
		s.replyLocal(t, err)
		return
	}
	s.startLeg(t2, true)
}

func headerOf(fields []hpack.HeaderField) http.Header {
	h := make(http.Header, len(fields))
	for _, hf := range fields {
		k := canonicalKey(hf.Name)
		h[k] = append(h[k], hf.Value)
	}
	return h
}

// replyLocal answers the client with the Handler's Reply for err, unless
// a response has already started (then the stream is reset).
func (s *stream) replyLocal(t *Target, err error) {
	a := s.client
	s.mu.Lock()
	if s.finished {
		s.mu.Unlock()
		return
	}
	if s.answered {
		s.mu.Unlock()
		a.c.resetHalf(a, http2.ErrCodeInternal, nil)
		return
	}
	s.answered = true
	drop := s.dropHeldLocked()
	s.up = nil
	s.keep, s.replay, s.pre = false, nil, nil
	s.mu.Unlock()
	drop()
	rep := s.r.Handler.Reply(s.req, t, err)
	s.mu.Lock()
	s.status = rep.Status
	s.mu.Unlock()
	fields := []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(rep.Status)}}
	for k, vs := range rep.Header {
		for _, v := range vs {
			fields = append(fields, hpack.HeaderField{Name: strings.ToLower(k), Value: v})
		}
	}
	a.c.sendHead(a, "", fields, rep.Body == "", nil)
	if rep.Body != "" {
		a.c.send(a, []byte(rep.Body), true, nil)
	}
	// Whatever else the client sends is not wanted (RFC 9113, 8.1).
	a.c.mu.Lock()
	stop := !a.recvEnd && a.sentEnd && len(a.queue) == 0
	a.c.mu.Unlock()
	if stop {
		a.c.resetHalf(a, http2.ErrCodeNo, nil)
	}
	a.c.settle(a)
}

// legFailed handles a leg that ended before its stream did: reset (code,
// by the peer or by the relay), its connection gone, or never opened. A
// client's leg ends the stream. For the current upstream leg, the client
// gets err as the proxy's reply when no answer has started; otherwise its
// stream is reset with code. A refused stream is reset too: the upstream
// did nothing with it, so the client may send it again.
//
// An upstream's own RST_STREAM (peer) reaches the client as an RST_STREAM
// with the same code, answered or not, as it would without the proxy: a
// gRPC client sees CANCELLED, INTERNAL or RESOURCE_EXHAUSTED, not a
// retryable UNAVAILABLE. Only the proxy's own failures (a connection that
// broke, a stream it could not open, the HTTP/1.1 bridge's failures: an
// HTTP/1.1 upstream has no resets) are answered by the proxy, before the
// answer began.
func (s *stream) legFailed(h *half, code http2.ErrCode, err error, peer bool, fl *flusher) {
	if h == s.client {
		s.end()
		return
	}
	s.mu.Lock()
	current, answered := h == s.up, s.answered
	s.mu.Unlock()
	switch {
	case !current:
	case answered || code == http2.ErrCodeRefusedStream || peer:
		s.client.c.resetHalf(s.client, code, fl)
		s.end()
	default:
		s.replyLocal(s.target, err)
	}
}

// dropHeldLocked (s.mu held) forgets a held response, or one whose retry
// waits, and returns what gives its bytes back to the upstream connection
// (to run once s.mu is released).
func (s *stream) dropHeldLocked() func() {
	b, h := s.up, s.held
	if w := s.waiting; w != nil {
		b, h = w.b, w.h
	}
	var n int64
	if h != nil {
		n = int64(len(h.body))
	}
	if s.tap != nil {
		n += int64(s.tap.held())
	}
	s.held, s.waiting, s.tap = nil, nil, nil
	if b == nil || n == 0 {
		return func() {}
	}
	return func() { b.c.creditConn(n, nil) }
}

// end finishes a stream whose client leg is over: its context ends and
// its upstream leg is reset if it is still open.
func (s *stream) end() {
	s.mu.Lock()
	if s.finished {
		s.mu.Unlock()
		return
	}
	s.finished = true
	b := s.up
	drop := s.dropHeldLocked()
	s.pre, s.replay = nil, nil
	status, t, in := s.status, s.target, s.in
	s.mu.Unlock()
	drop()
	s.cancel()
	if fn := s.r.OnStreamEnd; fn != nil {
		fn(s.req, t, StreamEnd{Status: status, Began: s.began, In: in, Out: s.out.Load()})
	}
	if b != nil {
		b.c.resetHalf(b, http2.ErrCodeCancel, nil)
	}
}

// onReset takes a peer's RST_STREAM (or a GOAWAY's refusal) of stream id.
func (c *conn) onReset(id uint32, code http2.ErrCode, fl *flusher) {
	c.mu.Lock()
	h := c.streams[id]
	c.mu.Unlock()
	if h != nil && c.endHalf(h, code, false, fl) {
		// An HTTP/2 upstream's own reset; the bridge's stand for an
		// HTTP/1.1 upstream's failure, which the proxy answers.
		peer := c.pool != nil && !c.pool.bridge
		h.s.legFailed(h, code, &upstreamErr{http2.StreamError{StreamID: id, Code: code}}, peer, fl)
	}
}

// resetStream resets a stream after a stream error on c, and tells its
// stream, which answers or resets the client.
func (c *conn) resetStream(id uint32, code http2.ErrCode, fl *flusher) {
	c.mu.Lock()
	h := c.streams[id]
	c.mu.Unlock()
	if h == nil {
		c.writeReset(id, code, fl)
		return
	}
	c.failLeg(h, code, &upstreamErr{http2.StreamError{StreamID: id, Code: code}}, fl)
}

// failLeg resets h, which the relay found broken, and tells its stream.
func (c *conn) failLeg(h *half, code http2.ErrCode, err error, fl *flusher) {
	if c.endHalf(h, code, true, fl) {
		h.s.legFailed(h, http2.ErrCodeInternal, err, false, fl)
	}
}

func (c *conn) writeReset(id uint32, code http2.ErrCode, fl *flusher) {
	c.wmu.Lock()
	c.writeErr(c.fr.WriteRSTStream(id, code))
	c.wmu.Unlock()
	c.wrote(fl)
}

// resetHalf sends RST_STREAM for h (once) and drops what it had queued.
func (c *conn) resetHalf(h *half, code http2.ErrCode, fl *flusher) {
	c.endHalf(h, code, true, fl)
}

// endHalf ends h once and reports whether it was still open: its queue is
// dropped (the connection window it held goes back to the leg it came
// from), RST_STREAM is sent if send is set (not when the peer reset it),
// and h is forgotten.
func (c *conn) endHalf(h *half, code http2.ErrCode, send bool, fl *flusher) bool {
	c.mu.Lock()
	if h.reset || (h.sentEnd && h.recvEnd) || c.closed {
		c.mu.Unlock()
		return false
	}
	h.reset = true
	dropped, src := c.dropQueue(h), h.src
	send = send && (h.started || c.server)
	if send {
		c.wmu.Lock()
		c.writeErr(c.fr.WriteRSTStream(h.id, code))
		c.wmu.Unlock()
	}
	c.mu.Unlock()
	if send {
		c.wrote(fl)
	}
	if dropped > 0 && src != nil {
		src.c.creditConn(dropped, fl)
	}
	c.settle(h)
	return true
}

// dropQueue empties h's queue (c.mu held) and returns its size.
func (c *conn) dropQueue(h *half) int64 {
	n := int64(len(h.queue))
	h.queue, h.trailer, h.endQ = nil, nil, false
	delete(c.blocked, h)
	return n
}

// settle forgets h once both of its directions are over; a client
// connection that is going away closes with its last stream.
func (c *conn) settle(h *half) {
	c.mu.Lock()
	if !(h.reset || (h.sentEnd && h.recvEnd)) || c.streams[h.id] != h {
		c.mu.Unlock()
		return
	}
	delete(c.streams, h.id)
	delete(c.blocked, h)
	empty := len(c.streams) == 0
	if empty {
		c.armIdle()
	}
	closeNow := empty && c.goingAway
	c.mu.Unlock()
	if empty && !closeNow {
		c.br.kick() // the reader gives its buffer back while the connection idles
	}
	if h == h.s.client {
		h.s.end()
	}
	if closeNow {
		c.finish()
	}
}

// onGoAway takes a peer's GOAWAY: no new streams; on an upstream, the
// streams after its last one were not processed, so the client may send
// them again.
func (c *conn) onGoAway(last uint32, fl *flusher) {
	c.mu.Lock()
	c.goingAway = true
	var refused []*half
	if !c.server {
		for id, h := range c.streams {
			if id > last {
				refused = append(refused, h)
			}
		}
	}
	empty := len(c.streams) == 0
	c.mu.Unlock()
	if c.pool != nil {
		c.pool.remove(c)
	}
	for _, b := range refused {
		b.c.onReset(b.id, http2.ErrCodeRefusedStream, fl)
		if fn := c.r.OnRefused; fn != nil {
			fn("upstream_goaway")
		}
	}
	if empty {
		c.finish()
	}
}
