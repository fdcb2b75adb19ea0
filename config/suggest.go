package config

// Suggest returns the candidate nearest to word when it is near enough to
// be a misspelling of it (an edit distance of at most a third of its
// length, and at most 3; none for a word of 2 letters or fewer), else "".
func Suggest(word string, candidates []string) string {
	best, bestD := "", 4
	limit := min(3, len(word)/3)
	for _, c := range candidates {
		if d := editDistance(word, c); d <= limit && d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the Damerau-Levenshtein (optimal string alignment)
// distance between a and b, by bytes: insertions, deletions,
// substitutions and transpositions of neighbours.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 { // no key is that long; bound the work
		return 1 << 10
	}
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
