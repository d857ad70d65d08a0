package artifact

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"
	"unicode/utf8"
)

// The prefetch profile is the list of paths an image reads at start, in first-access order.
// It is recorded in the artifact manifest's AnnotationPrefetch annotation, not in the layers:
//
//   - the TOC cannot hold it without changing the layer (eStargz's landmark files are tar
//     entries, and a byte-preserving layer gets no entries of its own);
//   - a separate blob named by an annotation is swept by registry garbage collection (only
//     config and layers count as references) and costs the node one more round trip before
//     its first prefetch;
//   - in the manifest it costs no request (the node fetches the artifact manifest anyway), it
//     is covered by the artifact's digest that the binding vouches for, and it lives exactly
//     as long as the artifact.
//
// Encoded, it is the JSON array of paths, gzip-compressed and base64-encoded (standard
// alphabet): a few KiB for the thousand files a typical service opens at start. Profiles
// larger than MaxProfileSize encoded are cut at the end (the last paths matter least).

// MaxProfileSize bounds the encoded profile, so that the manifest stays well below the 4 MiB
// registries accept.
const MaxProfileSize = 512 << 10

// maxDecodedProfileSize bounds the decoded profile (its JSON): EncodeProfile writes no more,
// and DecodeProfile refuses more, so that a small annotation cannot make a node inflate a
// gzip bomb.
const maxDecodedProfileSize = 16 << 20

// maxProfileFileSize bounds the profile file ParseProfile reads.
const maxProfileFileSize = 64 << 20

// ProfileFile is a prefetch profile as a node records it (root/profiles/<name>.json) and as
// `rill create --prefetch-profile` reads it (ParseProfile).
type ProfileFile struct {
	// Image is the reference the node pulled.
	Image string `json:"image"`
	// Recorded is when the profile was written.
	Recorded time.Time `json:"recorded"`
	// Paths are the files first opened, in first-access order.
	Paths []string `json:"paths"`
}

// ParseProfile reads a prefetch profile: a JSON array of paths, a JSON object with a "paths"
// array (as rill's node side records it), or plain text with one path per line ("#" starts a
// comment line). Paths are made relative to the image root ("/usr/bin/x" and "./usr/bin/x"
// are "usr/bin/x"); duplicates keep their first position. Paths with "..", a NUL byte or
// bytes that are not UTF-8 (which the JSON encoding cannot carry) are refused.
func ParseProfile(r io.Reader) ([]string, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxProfileFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read prefetch profile: %w", err)
	}
	if len(b) > maxProfileFileSize {
		return nil, fmt.Errorf("the prefetch profile is larger than %d MiB", maxProfileFileSize>>20)
	}
	var raw []string
	trimmed := bytes.TrimSpace(b)
	switch {
	case bytes.HasPrefix(trimmed, []byte("[")):
		if err := json.Unmarshal(trimmed, &raw); err != nil {
			return nil, fmt.Errorf("parse prefetch profile (a JSON array of paths): %w", err)
		}
	case bytes.HasPrefix(trimmed, []byte("{")):
		var doc ProfileFile
		if err := json.Unmarshal(trimmed, &doc); err != nil {
			return nil, fmt.Errorf("parse prefetch profile (a JSON object with \"paths\"): %w", err)
		}
		raw = doc.Paths
	default:
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(make([]byte, 64<<10), 64<<10)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			raw = append(raw, line)
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("parse prefetch profile: %w", err)
		}
	}
	return NormalizeProfile(raw)
}

// NormalizeProfile applies ParseProfile's rules to a list of paths: relative to the image
// root, duplicates dropped (the first position kept); "..", NUL and non-UTF-8 refused, and
// an empty result too.
func NormalizeProfile(raw []string) ([]string, error) {
	seen := make(map[string]bool, len(raw))
	out := make([]string, 0, len(raw))
	for i, p := range raw {
		if strings.ContainsRune(p, 0) {
			return nil, fmt.Errorf("prefetch profile entry %d holds a NUL byte", i+1)
		}
		if !utf8.ValidString(p) {
			return nil, fmt.Errorf("prefetch profile entry %d (%q) is not UTF-8", i+1, p)
		}
		for _, c := range strings.Split(p, "/") {
			if c == ".." {
				return nil, fmt.Errorf("prefetch profile entry %d (%q) leaves the image root", i+1, p)
			}
		}
		clean := strings.TrimPrefix(path.Clean("/"+p), "/")
		if clean == "" || seen[clean] {
			continue
		}
		seen[clean] = true
		out = append(out, clean)
	}
	if len(out) == 0 {
		return nil, errors.New("the prefetch profile lists no paths")
	}
	return out, nil
}

// EncodeProfile encodes paths for AnnotationPrefetch. When the encoding would exceed
// MaxProfileSize (or decode to more than DecodeProfile accepts), the last paths are dropped;
// kept says how many remain. Paths that are not UTF-8 are refused: JSON would change them.
func EncodeProfile(paths []string) (encoded string, kept int, err error) {
	for i, p := range paths {
		if !utf8.ValidString(p) {
			return "", 0, fmt.Errorf("prefetch profile entry %d (%q) is not UTF-8", i+1, p)
		}
	}
	kept = len(paths)
	for {
		s, decoded, err := encodeProfile(paths[:kept])
		if err != nil {
			return "", 0, err
		}
		var ratio float64
		switch {
		case decoded > maxDecodedProfileSize:
			ratio = float64(maxDecodedProfileSize) / float64(decoded)
		case len(s) > MaxProfileSize:
			ratio = float64(MaxProfileSize) / float64(len(s))
		default:
			return s, kept, nil
		}
		// Shrink in proportion, with a margin: both sizes are close to linear in the count.
		kept = int(float64(kept) * ratio * 0.95)
		if kept == 0 {
			return "", 0, errors.New("not even one path of the prefetch profile fits")
		}
	}
}

// encodeProfile returns the encoding of paths and the length of their JSON; only the length
// when it is over the bound.
func encodeProfile(paths []string) (string, int, error) {
	if paths == nil {
		paths = []string{} // "[]", not "null"
	}
	js, err := json.Marshal(paths)
	if err != nil {
		return "", 0, err
	}
	if len(js) > maxDecodedProfileSize {
		return "", len(js), nil
	}
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return "", 0, err
	}
	if _, err := zw.Write(js); err != nil {
		return "", 0, err
	}
	if err := zw.Close(); err != nil {
		return "", 0, err
	}
	return base64.StdEncoding.EncodeToString(buf.Bytes()), len(js), nil
}

// DecodeProfile decodes an AnnotationPrefetch value into its paths. A profile that decodes
// to more than 16 MiB of JSON is refused.
func DecodeProfile(encoded string) ([]string, error) {
	z, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		return nil, fmt.Errorf("decode prefetch profile: %w", err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(z))
	if err != nil {
		return nil, fmt.Errorf("decode prefetch profile: %w", err)
	}
	js, err := io.ReadAll(io.LimitReader(zr, maxDecodedProfileSize+1))
	if err != nil {
		return nil, fmt.Errorf("decode prefetch profile: %w", err)
	}
	if len(js) > maxDecodedProfileSize {
		return nil, fmt.Errorf("decode prefetch profile: larger than %d MiB decoded", maxDecodedProfileSize>>20)
	}
	var paths []string
	if err := json.Unmarshal(js, &paths); err != nil {
		return nil, fmt.Errorf("decode prefetch profile: %w", err)
	}
	return paths, nil
}
