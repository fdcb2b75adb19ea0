package route

import (
	"errors"
	"strings"
)

// Why a request path is refused a credential. Each is what a
// path-normalising upstream (nginx, Tomcat, IIS, a framework's router)
// could resolve to another path than the one the route matched.
var (
	ErrDotSegment   = errors.New("a dot segment (. or ..)")
	ErrEncodedSlash = errors.New("an encoded slash or backslash")
	ErrBackslash    = errors.New("a backslash")
	ErrOverlong     = errors.New("an overlong UTF-8 sequence")
	ErrNUL          = errors.New("an encoded NUL")
)

// maxDecodes bounds how many layers of percent-encoding are looked through
// (%252e is a dot to an upstream that decodes twice).
const maxDecodes = 3

// CheckSafe reports why escapedPath (url.URL.EscapedPath), which matched p,
// must not be given a credential; nil when it may. A path is refused when
// any segment, raw or decoded up to maxDecodes times (in any case), is a
// dot segment (also before a ";" parameter, as Tomcat strips it), or holds
// a backslash, an encoded slash or backslash, an overlong UTF-8 form or an
// encoded NUL. With encodedSlash, a segment captured by a {name} may hold
// encoded slashes, as long as none of the pieces they separate is a dot
// segment.
func (p Path) CheckSafe(escapedPath string, encodedSlash bool) error {
	rest := escapedPath
	for i := 0; ; i++ {
		var seg string
		seg, rest = nextSegment(rest)
		if seg == "" {
			return nil
		}
		inParam := encodedSlash && i < len(p.segs) && p.segs[i].kind == segParam
		if err := checkSegment(seg, inParam); err != nil {
			return err
		}
	}
}

func checkSegment(seg string, slashesAllowed bool) error {
	if strings.IndexByte(seg, '\\') >= 0 {
		return ErrBackslash
	}
	s := seg
	for level := 0; ; level++ {
		if isDot(s) {
			return ErrDotSegment
		}
		if level > 0 {
			if strings.IndexByte(s, 0) >= 0 {
				return ErrNUL
			}
			if overlong(s) {
				return ErrOverlong
			}
			if strings.IndexByte(s, '\\') >= 0 {
				return ErrEncodedSlash
			}
			if strings.IndexByte(s, '/') >= 0 {
				if !slashesAllowed {
					return ErrEncodedSlash
				}
				for piece := range strings.SplitSeq(s, "/") {
					if isDot(piece) {
						return ErrDotSegment
					}
				}
			}
		}
		d, changed := unescape(s)
		if !changed || level == maxDecodes {
			return nil
		}
		s = d
	}
}

// isDot reports whether a segment is "." or "..", ignoring a ";" parameter.
func isDot(s string) bool {
	if i := strings.IndexByte(s, ';'); i >= 0 {
		s = s[:i]
	}
	return s == "." || s == ".."
}

// overlong reports a byte sequence that is never valid UTF-8 because it
// encodes a character in more bytes than it needs (C0 AE is a dot to a
// lenient decoder).
func overlong(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == 0xc0 || c == 0xc1:
			return true
		case c == 0xe0 && i+1 < len(s) && s[i+1] < 0xa0:
			return true
		case c == 0xf0 && i+1 < len(s) && s[i+1] < 0x90:
			return true
		}
	}
	return false
}

// unescape decodes every valid %XX (either case) and leaves the rest, as
// a lenient upstream would.
func unescape(s string) (string, bool) {
	if strings.IndexByte(s, '%') < 0 {
		return s, false
	}
	var b strings.Builder
	changed := false
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
			changed = true
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String(), changed
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}
