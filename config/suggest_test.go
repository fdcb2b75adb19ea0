package config

import "testing"

func TestSuggest(t *testing.T) {
	keys := []string{"listeners", "routes", "injectors", "token_cache", "upstream", "admin", "ca", "log"}
	for word, want := range map[string]string{
		"listners":   "listeners",
		"rotues":     "routes",
		"injector":   "injectors",
		"tokencache": "token_cache",
		"upstreams":  "upstream",
		"admni":      "admin",
		"ca":         "ca",
		"cb":         "", // too short to guess
		"tracing":    "",
		"metrics":    "",
	} {
		if got := Suggest(word, keys); got != want {
			t.Errorf("Suggest(%q) = %q, want %q", word, got, want)
		}
	}
}

// editDistance is a distance: symmetric, zero only for equal strings, at
// most the longer length.
func FuzzEditDistance(f *testing.F) {
	f.Add("listeners", "listners", "lsteners")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		if len(a) > 64 || len(b) > 64 || len(c) > 64 {
			return
		}
		ab, ba := editDistance(a, b), editDistance(b, a)
		if ab != ba || (ab == 0) != (a == b) || ab > max(len(a), len(b)) {
			t.Fatalf("d(%q,%q)=%d, d(b,a)=%d", a, b, ab, ba)
		}
	})
}
