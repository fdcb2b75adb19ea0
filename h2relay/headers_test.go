package h2relay

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// headerCase is a header block as a peer sends it: fields encoded with
// HPACK (or raw bytes), split into a HEADERS frame and CONTINUATIONs.
type headerCase struct {
	name   string
	fields []hpack.HeaderField
	raw    []byte // sent instead of fields' encoding
	split  int    // fragment size; 0: one HEADERS frame
	max    uint32 // the header list bound
}

func (hc headerCase) frames(t *testing.T) []byte {
	t.Helper()
	block := hc.raw
	if block == nil {
		var b bytes.Buffer
		enc := hpack.NewEncoder(&b)
		for _, f := range hc.fields {
			if err := enc.WriteField(f); err != nil {
				t.Fatal(err)
			}
		}
		block = b.Bytes()
	}
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	first := block
	if hc.split > 0 && len(block) > hc.split {
		first = block[:hc.split]
	}
	rest := block[len(first):]
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: first, EndStream: true, EndHeaders: len(rest) == 0}); err != nil {
		t.Fatal(err)
	}
	for len(rest) > 0 {
		n := min(hc.split, len(rest))
		if err := fr.WriteContinuation(1, n == len(rest), rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	// A PING after the block: both readers must stop at the same place.
	if err := fr.WritePing(false, [8]byte{1}); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// outcome is what a reader made of a block, in comparable form.
type outcome struct {
	fields    []hpack.HeaderField
	truncated bool
	ended     bool
	err       string // the error's kind and code, not its words
	next      string // the frame read after the block
}

func kindOf(err error) string {
	var se http2.StreamError
	var ce http2.ConnectionError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &se):
		return fmt.Sprintf("stream %d %v", se.StreamID, se.Code)
	case errors.As(err, &ce):
		return fmt.Sprintf("connection %v", http2.ErrCode(ce))
	}
	return "other: " + err.Error()
}

func readWith(t *testing.T, wire []byte, max uint32, ours bool) outcome {
	t.Helper()
	fr := http2.NewFramer(nil, bytes.NewReader(wire))
	var f http2.Frame
	var err error
	if ours {
		c := &conn{fr: fr, hr: newHeaderReader(max)}
		f, err = c.readFrame()
	} else {
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		fr.MaxHeaderListSize = max
		f, err = fr.ReadFrame()
	}
	var o outcome
	if err != nil {
		o.err = kindOf(err)
	} else {
		mh := f.(*http2.MetaHeadersFrame)
		o.fields, o.truncated, o.ended = append([]hpack.HeaderField(nil), mh.Fields...), mh.Truncated, mh.StreamEnded()
	}
	if _, isConn := err.(http2.ConnectionError); !isConn {
		nf, nerr := fr.ReadFrame()
		if nerr != nil {
			o.next = kindOf(nerr)
		} else {
			o.next = fmt.Sprintf("%T", nf)
		}
	}
	return o
}

// The relay's header reader decides every block as x/net's Framer does
// with ReadMetaHeaders: the same fields, truncation, and kind of error.
func TestHeaderReaderMatchesFramer(t *testing.T) {
	req := []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: "svc"}, {Name: ":path", Value: "/pkg.Svc/Call"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
		{Name: "authorization", Value: "Bearer secret", Sensitive: true},
	}
	with := func(extra ...hpack.HeaderField) []hpack.HeaderField {
		return append(append([]hpack.HeaderField(nil), req...), extra...)
	}
	long := strings.Repeat("v", 3000) // over any string bound below
	mid := strings.Repeat("m", 400)
	mids := with(hpack.HeaderField{Name: "x-a", Value: mid}, hpack.HeaderField{Name: "x-b", Value: mid},
		hpack.HeaderField{Name: "x-c", Value: mid}, hpack.HeaderField{Name: "x-d", Value: mid})
	cases := []headerCase{
		{name: "request", fields: req, max: 1 << 20},
		{name: "request in continuations", fields: req, split: 7, max: 1 << 20},
		{name: "response", fields: []hpack.HeaderField{{Name: ":status", Value: "200"}, {Name: "content-type", Value: "text/plain"}}, max: 1 << 20},
		{name: "trailers", fields: []hpack.HeaderField{{Name: "grpc-status", Value: "0"}, {Name: "grpc-message", Value: ""}}, max: 1 << 20},
		{name: "upper-case name", fields: with(hpack.HeaderField{Name: "X-Up", Value: "1"}), max: 1 << 20},
		{name: "bad value", fields: with(hpack.HeaderField{Name: "x-bad", Value: "a\x00b"}), max: 1 << 20},
		{name: "bad value, then continuation", fields: append([]hpack.HeaderField{{Name: "x-bad", Value: "a\nb"}}, req...), split: 12, max: 1 << 20},
		{name: "pseudo after regular", fields: with(hpack.HeaderField{Name: ":path", Value: "/again"}), max: 1 << 20},
		{name: "repeated pseudo", fields: append([]hpack.HeaderField{{Name: ":path", Value: "/a"}}, req...), max: 1 << 20},
		{name: "mixed pseudo", fields: append([]hpack.HeaderField{{Name: ":status", Value: "200"}}, req...), max: 1 << 20},
		{name: "unknown pseudo", fields: append([]hpack.HeaderField{{Name: ":weird", Value: "1"}}, req...), max: 1 << 20},
		{name: "over the bound", fields: mids, max: 1000},
		{name: "over the bound, then continuation", fields: mids, split: 900, max: 1000},
		{name: "a string over the bound", fields: with(hpack.HeaderField{Name: "x-long", Value: long}), max: 2000},
		{name: "far over the bound", fields: with(hpack.HeaderField{Name: "x-long", Value: long}), max: 500},
		{name: "trailer names counted", fields: with(hpack.HeaderField{Name: "trailer", Value: "a, b, c, d, e, f, g, h"}), max: 300},
		{name: "bad HPACK", raw: []byte{0xff, 0xff, 0xff, 0xff, 0xff}, max: 1 << 20},
		{name: "truncated HPACK", raw: []byte{0x40, 0x05, 'a'}, max: 1 << 20},
	}
	for _, hc := range cases {
		t.Run(hc.name, func(t *testing.T) {
			wire := hc.frames(t)
			want := readWith(t, wire, hc.max, false)
			got := readWith(t, wire, hc.max, true)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("relay's reader: %+v\nFramer's:       %+v", got, want)
			}
		})
	}
}

// A second block on the same connection decodes against the table the
// first one built, and does not see the first one's fields.
func TestHeaderReaderKeepsTheTableAcrossBlocks(t *testing.T) {
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	var wire bytes.Buffer
	fr := http2.NewFramer(&wire, nil)
	for i, v := range []string{"one", "two"} {
		block.Reset()
		_ = enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
		_ = enc.WriteField(hpack.HeaderField{Name: "x-custom", Value: "kept"}) // indexed the second time
		_ = enc.WriteField(hpack.HeaderField{Name: "x-n", Value: v})
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: block.Bytes(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	c := &conn{fr: http2.NewFramer(nil, &wire), hr: newHeaderReader(1 << 20)}
	for i, v := range []string{"one", "two"} {
		f, err := c.readFrame()
		if err != nil {
			t.Fatal(err)
		}
		mh := f.(*http2.MetaHeadersFrame)
		want := []hpack.HeaderField{{Name: "x-custom", Value: "kept"}, {Name: "x-n", Value: v}}
		if got := mh.RegularFields(); !reflect.DeepEqual(got, want) || mh.StreamID != uint32(2*i+1) || mh.PseudoValue("status") != "200" {
			t.Fatalf("block %d: stream %d, fields %v", i, mh.StreamID, mh.Fields)
		}
	}
}

// FuzzHeaderReaderMatchesFramer feeds arbitrary header block bytes, split
// at an arbitrary point into a HEADERS frame and a CONTINUATION, to both
// readers: they must agree on fields, truncation, the kind of error and
// where reading stops. `go test` runs the seeds; `go test -fuzz` searches.
func FuzzHeaderReaderMatchesFramer(f *testing.F) {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for _, hf := range []hpack.HeaderField{
		{Name: ":method", Value: "GET"}, {Name: ":path", Value: "/"}, {Name: "x-a", Value: "b"},
		{Name: "trailer", Value: "x, y"}, {Name: "authorization", Value: "Bearer t", Sensitive: true},
	} {
		_ = enc.WriteField(hf)
	}
	f.Add(b.Bytes(), uint16(0), uint16(100))
	f.Add(b.Bytes(), uint16(5), uint16(30))
	f.Add([]byte{0x3f, 0xe1, 0x1f, 0x82}, uint16(0), uint16(4096)) // a table size update
	f.Add([]byte{0x40, 0x01, 'A', 0x01, 'b'}, uint16(2), uint16(100))
	f.Fuzz(func(t *testing.T, block []byte, split, max uint16) {
		if len(block) > 1<<14 {
			return
		}
		hc := headerCase{raw: block, split: int(split), max: uint32(max)}
		if hc.split == 0 || len(block) == 0 {
			hc.split = 0
		}
		wire := hc.frames(t)
		want := readWith(t, wire, hc.max, false)
		got := readWith(t, wire, hc.max, true)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("relay's reader: %+v\nFramer's:       %+v", got, want)
		}
	})
}
