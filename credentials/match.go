package credentials

import (
	"net"
	"net/url"
	"path"
	"strings"
)

// matchImage reports whether image ("host[:port]/path") matches pattern, by kubelet's rules
// for matchImages and for the keys of a provider's auth map: the same number of host labels,
// each matching its glob (a glob matches within one label: "*.io" does not match "a.b.io"),
// the same port, and the pattern's path a prefix of the image's.
func matchImage(pattern, image string) bool {
	pu, ok := parseSchemeless(pattern)
	if !ok {
		return false
	}
	iu, ok := parseSchemeless(image)
	if !ok {
		return false
	}
	pHost, pPort := splitHostPort(pu.Host)
	iHost, iPort := splitHostPort(iu.Host)
	if pPort != iPort {
		return false
	}
	pParts, iParts := strings.Split(pHost, "."), strings.Split(iHost, ".")
	if len(pParts) != len(iParts) {
		return false
	}
	if !strings.HasPrefix(iu.Path, pu.Path) {
		return false
	}
	for i := range pParts {
		if ok, err := path.Match(pParts[i], iParts[i]); err != nil || !ok {
			return false
		}
	}
	return true
}

func parseSchemeless(s string) (*url.URL, bool) {
	if s == "" || strings.Contains(s, "://") {
		s = strings.TrimPrefix(strings.TrimPrefix(s, "https://"), "http://")
	}
	if s == "" {
		return nil, false
	}
	u, err := url.Parse("https://" + s)
	if err != nil || u.Host == "" {
		return nil, false
	}
	return u, true
}

func splitHostPort(hostport string) (host, port string) {
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		return h, p
	}
	return hostport, ""
}
