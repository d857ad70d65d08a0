package manifest

import (
	"fmt"
	"strings"
)

// Diff compares two canonical texts line by line and describes the differences: lines only in
// want are prefixed "- ", lines only in got "+ ". It returns "" when the texts are equal. At most
// limit differing lines are listed.
func Diff(want, got string, limit int) string {
	if want == got {
		return ""
	}
	wantLines, gotLines := count(want), count(got)
	var b strings.Builder
	n := 0
	report := func(prefix, line string) {
		if n < limit {
			fmt.Fprintf(&b, "%s%s\n", prefix, line)
		}
		n++
	}
	for _, l := range strings.Split(strings.TrimSuffix(want, "\n"), "\n") {
		if gotLines[l] > 0 {
			gotLines[l]--
			continue
		}
		report("- ", l)
	}
	for _, l := range strings.Split(strings.TrimSuffix(got, "\n"), "\n") {
		if wantLines[l] > 0 {
			wantLines[l]--
			continue
		}
		report("+ ", l)
	}
	if n == 0 {
		return "the lines are equal but their order or final newline differs\n"
	}
	if n > limit {
		fmt.Fprintf(&b, "... and %d more differing lines\n", n-limit)
	}
	return b.String()
}

func count(text string) map[string]int {
	m := map[string]int{}
	for _, l := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		m[l]++
	}
	return m
}
