package h2relay

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// headerReader decodes a connection's header blocks (HEADERS and the
// CONTINUATIONs that follow it) into a MetaHeadersFrame. It applies what
// the Framer's ReadMetaHeaders applies (golang.org/x/net/http2, frame.go,
// readMetaFrame and checkPseudos), with the same errors: field names and
// values are checked, pseudo-fields come first and only once, the header
// list is bounded (over it the frame is Truncated) and a fragment far over
// the bound ends the connection before it is decoded. It keeps one decoder
// state, one field slice and one MetaHeadersFrame for the connection's
// life, where the Framer allocates about a dozen objects a frame.
//
// The frame read and its Fields are valid until the next frame is read:
// what outlives that (trailers kept behind queued data or before the
// upstream leg opens, a held response head) is copied where it is kept.
type headerReader struct {
	dec  *hpack.Decoder
	max  uint32 // the header list bound, as SETTINGS_MAX_HEADER_LIST_SIZE
	meta http2.MetaHeadersFrame

	fields         []hpack.HeaderField
	remain         uint32 // what is left of the bound for regular fields
	trailersRemain uint32 // and for the trailer field's announced names
	sawRegular     bool
	invalid        error
}

// The errors of a header block, as x/net words them.
var (
	errPseudoAfterRegular   = errors.New("pseudo header field after regular")
	errMixPseudoHeaderTypes = errors.New("mix of request and response pseudo headers")
)

// newHeaderReader bounds header lists at max bytes; 0 is the Framer's
// default, 16 MiB.
func newHeaderReader(max uint32) *headerReader {
	if max == 0 {
		max = 16 << 20
	}
	h := &headerReader{max: max}
	h.dec = hpack.NewDecoder(4096, h.emit)
	if n := int(max); n > 0 {
		h.dec.SetMaxStringLength(n)
	}
	return h
}

func (h *headerReader) emit(hf hpack.HeaderField) {
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		// The value is not in the error: it may be a credential.
		h.invalid = fmt.Errorf("invalid header field value for %q", hf.Name)
	}
	if strings.HasPrefix(hf.Name, ":") {
		if h.sawRegular {
			h.invalid = errPseudoAfterRegular
		}
	} else {
		h.sawRegular = true
		if !validFieldName(hf.Name) {
			h.invalid = fmt.Errorf("invalid header field name %q", hf.Name)
		}
	}
	if h.invalid != nil {
		h.dec.SetEmitEnabled(false)
		return
	}
	remain, size := &h.remain, hf.Size()
	if hf.Name == "trailer" {
		// Counted as x/net counts it: each announced name as a field.
		n := strings.Count(hf.Value, ",") + 1
		remain = &h.trailersRemain
		size = uint32(len(hf.Value)-n+1) + uint32(n)*hpack.HeaderField{}.Size()
	}
	if size > *remain {
		h.dec.SetEmitEnabled(false)
		h.meta.Truncated = true
		h.remain, h.trailersRemain = 0, 0
		return
	}
	*remain -= size
	h.fields = append(h.fields, hf)
}

// validFieldName is a header field name as HTTP/2 carries it: a token in
// lower case.
func validFieldName(v string) bool {
	if v == "" {
		return false
	}
	for _, r := range v {
		if !httpguts.IsTokenRune(r) || 'A' <= r && r <= 'Z' {
			return false
		}
	}
	return true
}

// read decodes the block hf begins, reading its CONTINUATIONs from fr
// (whose order the Framer checks). Errors are those of the Framer: a
// ConnectionError for a block that breaks the connection's HPACK state
// or is far over the bound, a StreamError for bad fields.
func (h *headerReader) read(fr *http2.Framer, hf *http2.HeadersFrame) (*http2.MetaHeadersFrame, error) {
	h.meta = http2.MetaHeadersFrame{HeadersFrame: hf}
	h.fields = h.fields[:0]
	h.remain, h.trailersRemain = h.max, h.max
	h.sawRegular, h.invalid = false, nil
	h.dec.SetEmitEnabled(true)
	frag, ended := hf.HeaderBlockFragment(), hf.HeadersEnded()
	for {
		// Far over the bound (or any fragment once it is spent): not
		// decoded at all.
		if int64(len(frag)) > 2*(int64(h.remain)+int64(h.trailersRemain)) {
			return nil, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		// A CONTINUATION after a bad field: the block is not tracked
		// any more.
		if h.invalid != nil {
			return nil, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if _, err := h.dec.Write(frag); err != nil {
			return nil, http2.ConnectionError(http2.ErrCodeCompression)
		}
		if ended {
			break
		}
		f, err := fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		cf := f.(*http2.ContinuationFrame) // the Framer checks the order
		frag, ended = cf.HeaderBlockFragment(), cf.HeadersEnded()
	}
	if err := h.dec.Close(); err != nil {
		return nil, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if h.invalid != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: h.invalid}
	}
	h.meta.Fields = h.fields
	if err := checkPseudos(h.meta.PseudoFields()); err != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: err}
	}
	return &h.meta, nil
}

// checkPseudos refuses unknown and repeated pseudo-fields, and a block
// that mixes a request's with a response's.
func checkPseudos(pf []hpack.HeaderField) error {
	var isRequest, isResponse bool
	for i, hf := range pf {
		switch hf.Name {
		case ":method", ":path", ":scheme", ":authority", ":protocol":
			isRequest = true
		case ":status":
			isResponse = true
		default:
			return fmt.Errorf("invalid pseudo-header %q", hf.Name)
		}
		for _, hf2 := range pf[:i] {
			if hf.Name == hf2.Name {
				return fmt.Errorf("duplicate pseudo-header %q", hf.Name)
			}
		}
	}
	if isRequest && isResponse {
		return errMixPseudoHeaderTypes
	}
	return nil
}

// readFrame reads the connection's next frame; a header block comes whole,
// as a MetaHeadersFrame.
func (c *conn) readFrame() (http2.Frame, error) {
	f, err := c.fr.ReadFrame()
	if err != nil {
		return nil, err
	}
	if hf, ok := f.(*http2.HeadersFrame); ok {
		return c.hr.read(c.fr, hf)
	}
	return f, nil
}
