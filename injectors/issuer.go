package injectors

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/authproxy/authproxy/config"
)

// noRedirects returns a copy of c that never follows a redirect: a request
// the proxy makes on its own behalf carries the client's secret, and a
// redirect (307/308 keep the method and the body) would hand it to
// whichever host the issuer names, over whatever scheme.
func noRedirects(c *http.Client) *http.Client {
	if c == nil {
		return nil
	}
	cp := *c
	cp.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &cp
}

// redirectErr is the failure of an issuer request answered with a
// redirect: a misconfigured endpoint, so ErrCredentialRejected (backed off
// by the token cache like any failed fetch). It names the status and where
// the Location points (scheme and host only: its path and query may carry
// anything).
func redirectErr(injector, request string, resp *http.Response) error {
	where := "no Location"
	if loc, err := resp.Location(); err == nil {
		where = "a redirect to " + loc.Scheme + "://" + loc.Host
	}
	return fmt.Errorf("%w: injector %q: %s answered %s with %s, which the proxy never follows: point the injector at the final URL",
		ErrCredentialRejected, injector, request, resp.Status, where)
}

// isRedirect reports whether an issuer's answer is a redirect (3xx other
// than 304, which an issuer has no reason to send either, but that carries
// no Location).
func isRedirect(resp *http.Response) bool {
	return resp.StatusCode >= 300 && resp.StatusCode <= 399
}

// scrubber removes an injector's own secrets from text that came back from
// an issuer, in every encoding in which the injector sent them: an issuer
// may echo its request (headers and body) into an error. It is built once;
// scrub is safe for concurrent use.
type scrubber struct {
	needles []string // longest first, so no needle is replaced in part
}

// minSecret is the shortest value scrubbed: shorter ones would garble
// every message (and are no secrets).
const minSecret = 4

// add records a secret in the encodings it may travel in: as it is,
// form- and query-escaped, path-escaped, JSON-escaped, and base64 (std and
// URL alphabets, padded or not).
func (s *scrubber) add(secrets ...string) {
	for _, v := range secrets {
		s.addRaw(encodings(v)...)
	}
}

// addBasic records the base64 of an HTTP Basic pair, for both of its
// encodings (raw, and form-encoded id and secret as RFC 6749 §2.3.1 says).
func (s *scrubber) addBasic(id, secret string) {
	for _, pair := range []string{id + ":" + secret, url.QueryEscape(id) + ":" + url.QueryEscape(secret)} {
		s.addRaw(b64s(pair)...)
	}
}

func (s *scrubber) addRaw(vs ...string) {
	for _, v := range vs {
		if len(v) >= minSecret && !slices.Contains(s.needles, v) {
			s.needles = append(s.needles, v)
		}
	}
	slices.SortStableFunc(s.needles, func(a, b string) int { return len(b) - len(a) })
}

// scrub replaces every recorded secret in msg, and every encoding of the
// per-request extras (a SAS token, a client assertion, a proof of
// possession), by REDACTED.
func (s *scrubber) scrub(msg string, extras ...string) string {
	if len(extras) > 0 {
		more := &scrubber{needles: slices.Clone(s.needles)}
		more.add(extras...)
		s = more
	}
	for _, n := range s.needles {
		msg = strings.ReplaceAll(msg, n, config.Redacted)
	}
	return msg
}

// excerpt scrubs and then cuts text from an issuer for a message: cutting
// first could leave part of a secret across the cut, which no longer
// matches the whole it is scrubbed by.
func (s *scrubber) excerpt(b []byte, extras ...string) string {
	return cut(s.scrub(string(b), extras...))
}

// cut is a bounded, printable form of an (already scrubbed) text.
func cut(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxExcerpt {
		i := maxExcerpt
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = s[:i] + "…"
	}
	if strings.TrimSpace(s) == "" {
		return "(empty body)"
	}
	return s
}

const maxExcerpt = 200

// encodings are the forms a secret takes on the wire.
func encodings(v string) []string {
	if v == "" {
		return nil
	}
	out := []string{v, url.QueryEscape(v), url.PathEscape(v), strings.ReplaceAll(url.QueryEscape(v), "+", "%20")}
	if j, err := json.Marshal(v); err == nil {
		out = append(out, string(j[1:len(j)-1]))
	}
	// Go's JSON escapes <, > and & for HTML; other encoders do not, but may
	// escape the slash.
	out = append(out, strings.ReplaceAll(v, "/", `\/`))
	out = append(out, b64s(v)...)
	return out
}

func b64s(v string) []string {
	b := []byte(v)
	return []string{
		base64.StdEncoding.EncodeToString(b), base64.RawStdEncoding.EncodeToString(b),
		base64.URLEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b),
	}
}
