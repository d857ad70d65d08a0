package credentials

import "testing"

// The matching rules of kubelet's matchImages (the examples of its documentation).
func TestMatchImage(t *testing.T) {
	for _, tc := range []struct {
		pattern, image string
		want           bool
	}{
		{"123456789.dkr.ecr.us-east-1.amazonaws.com", "123456789.dkr.ecr.us-east-1.amazonaws.com/team/app", true},
		{"*.azurecr.io", "example.azurecr.io/app", true},
		{"*.azurecr.io", "azurecr.io/app", false},
		{"*.io", "a.b.io/app", false}, // a glob matches one label
		{"gcr.io", "gcr.io/project/app", true},
		{"*.*.registry.io", "eu.west.registry.io/app", true},
		{"*.*.registry.io", "west.registry.io/app", false},
		{"registry.io:8080/path", "registry.io:8080/path/app", true},
		{"registry.io:8080/path", "registry.io/path/app", false}, // the port must match
		{"registry.io/path", "registry.io:8080/path/app", false}, // also when only the image has one
		{"registry.io/team", "registry.io/other/app", false},     // the path is a prefix
		{"registry.io/team", "registry.io/teamster/app", true},   // kubelet compares strings
		{"app*.k8s.io", "app1.k8s.io/x", true},                   // partial labels
		{"k8s.*", "k8s.io/x", true},                              // top-level domains
		{"https://registry.io", "registry.io/x", true},           // a scheme is ignored
		{"127.0.0.1:5000", "127.0.0.1:5000/private/app", true},   // IP addresses are labels too
		{"127.0.0.*:5000", "127.0.0.1:5000/private/app", true},
		{"", "registry.io/x", false},
		{"[", "registry.io/x", false}, // a bad glob matches nothing
	} {
		if got := matchImage(tc.pattern, tc.image); got != tc.want {
			t.Errorf("matchImage(%q, %q) = %v, want %v", tc.pattern, tc.image, got, tc.want)
		}
	}
}

func FuzzMatchImage(f *testing.F) {
	f.Add("*.azurecr.io", "example.azurecr.io/app")
	f.Add("registry.io:8080/path", "registry.io:8080/path/app")
	f.Fuzz(func(t *testing.T, pattern, image string) {
		matchImage(pattern, image) // never panics
	})
}
