package proxy

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestReplayable(t *testing.T) {
	t.Run("known length is read ahead", func(t *testing.T) {
		r, _ := http.NewRequest("POST", "https://x/", strings.NewReader("hello"))
		rec, err := replayable(r, defaultMaxReplayBody)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(r.Body)
		again, ok := rec.replay()
		b, _ := io.ReadAll(again)
		if string(got) != "hello" || !ok || string(b) != "hello" {
			t.Errorf("sent %q, replay %q ok=%v", got, b, ok)
		}
	})
	t.Run("length mismatch", func(t *testing.T) {
		r, _ := http.NewRequest("POST", "https://x/", strings.NewReader("hello"))
		r.ContentLength = 10
		if _, err := replayable(r, defaultMaxReplayBody); err == nil {
			t.Error("a short body was accepted")
		}
	})
	for _, tc := range []struct {
		name   string
		size   int
		readTo int // bytes the transport reads before the response
		want   bool
	}{
		{"streamed and fully read", 1000, -1, true},
		{"streamed, partly read", 1000, 10, false},
		{"streamed past the limit", defaultMaxReplayBody + 1, -1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := bytes.Repeat([]byte("a"), tc.size)
			r, _ := http.NewRequest("POST", "https://x/", io.NopCloser(bytes.NewReader(body)))
			r.ContentLength = -1
			rec, err := replayable(r, defaultMaxReplayBody)
			if err != nil {
				t.Fatal(err)
			}
			if tc.readTo < 0 {
				io.Copy(io.Discard, r.Body)
			} else {
				io.ReadFull(r.Body, make([]byte, tc.readTo))
			}
			again, ok := rec.replay()
			if ok != tc.want {
				t.Fatalf("replayable = %v, want %v", ok, tc.want)
			}
			if ok {
				b, _ := io.ReadAll(again)
				if !bytes.Equal(b, body) {
					t.Error("the replayed body differs")
				}
			}
		})
	}
}
