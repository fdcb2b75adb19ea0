package transport

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/metadata"
)

func TestGRPCTimeout(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     time.Duration
		ok       bool
	}{
		{"milliseconds", "100m", 100 * time.Millisecond, true},
		{"seconds", "5S", 5 * time.Second, true},
		{"hours", "1H", time.Hour, true},
		{"minutes", "2M", 2 * time.Minute, true},
		{"micro", "7u", 7 * time.Microsecond, true},
		{"nano", "9n", 9, true},
		{"eight digits", "99999999S", 99999999 * time.Second, true},
		{"nine digits", "999999999S", 0, false},
		{"no unit", "100", 0, false},
		{"unknown unit", "100x", 0, false},
		{"negative", "-1S", 0, false},
		{"empty", "", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := grpcTimeout(tc.in)
			if got != tc.want || ok != tc.ok {
				t.Errorf("grpcTimeout(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestOutgoingMD(t *testing.T) {
	h := http.Header{
		"Authorization":        {"Bearer x"},
		"X-Trace-Bin":          {"AAEC", "AAEC/w"}, // padded and unpadded base64
		"X-Multi":              {"a", "b"},
		"Content-Type":         {"application/grpc"},
		"User-Agent":           {"app/1"},
		"Te":                   {"trailers"},
		"Grpc-Timeout":         {"1S"},
		"Grpc-Encoding":        {"identity"},
		"Grpc-Accept-Encoding": {"gzip"},
		"Connection":           {"keep-alive"},
		"Host":                 {"example.com"},
	}
	md, err := outgoingMD(h)
	if err != nil {
		t.Fatal(err)
	}
	want := metadata.MD{
		"authorization": {"Bearer x"},
		"x-trace-bin":   {"\x00\x01\x02", "\x00\x01\x02\xff"},
		"x-multi":       {"a", "b"},
	}
	if diff := cmp.Diff(want, md); diff != "" {
		t.Errorf("metadata (-want +got):\n%s", diff)
	}
	if _, err := outgoingMD(http.Header{"X-Bad-Bin": {"not base64!"}}); err == nil {
		t.Error("a -bin value that is not base64 was accepted")
	}
}

func TestCopyMDEncodesBin(t *testing.T) {
	h := http.Header{}
	CopyMD(h, metadata.MD{"x-trace-bin": {"\x00\x01\x02\xff"}, "x-plain": {"v"}, ":status": {"200"}})
	want := http.Header{"X-Trace-Bin": {"AAEC/w"}, "X-Plain": {"v"}}
	if diff := cmp.Diff(want, h); diff != "" {
		t.Errorf("headers (-want +got):\n%s", diff)
	}
}

func TestEarlier(t *testing.T) {
	if !earlier(context.Background(), time.Hour) {
		t.Error("a timeout with no deadline in ctx must apply")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if earlier(ctx, 2*time.Second) {
		t.Error("a timeout after ctx's deadline must not add a timer")
	}
	if !earlier(ctx, 100*time.Millisecond) {
		t.Error("a timeout before ctx's deadline must apply")
	}
}
