package h2relay

import (
	"net/http"
	"strings"
)

// The header names that most requests and responses carry, in HTTP/2's
// lower case and in http.Header's canonical form: converting one of them
// allocates nothing. Others are converted as usual.
var (
	canonicalOf = map[string]string{}
	lowerOf     = map[string]string{}
)

func init() {
	for _, k := range []string{
		"Accept", "Accept-Encoding", "Accept-Language", "Authorization", "Cache-Control",
		"Content-Encoding", "Content-Length", "Content-Type", "Cookie", "Date", "Etag",
		"Grpc-Accept-Encoding", "Grpc-Encoding", "Grpc-Message", "Grpc-Status",
		"Grpc-Status-Details-Bin", "Grpc-Timeout", "Last-Modified", "Location",
		"Proxy-Authorization", "Server", "Session", "Set-Cookie", "Te", "Trailer",
		"User-Agent", "Vary", "X-Forwarded-For", "X-Request-Id",
	} {
		l := strings.ToLower(k)
		canonicalOf[l], lowerOf[k] = k, l
	}
}

// canonicalKey is http.CanonicalHeaderKey(name) for a lower-case HTTP/2 name.
func canonicalKey(name string) string {
	if k, ok := canonicalOf[name]; ok {
		return k
	}
	return http.CanonicalHeaderKey(name)
}

// lowerKey is strings.ToLower(k) for an http.Header key.
func lowerKey(k string) string {
	if l, ok := lowerOf[k]; ok {
		return l
	}
	return strings.ToLower(k)
}
