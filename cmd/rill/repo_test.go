package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// rill repo as an operator uses it: a repository is disabled until enabled; enable and
// disable are shown; tags, digests and missing actions are usage errors.
func TestRepoPolicy(t *testing.T) {
	host := startRegistry(t, nil)
	repo := host + "/team/app"
	args := func(a ...string) []string { return append(a, "--plain-http", "--hosts-dir", t.TempDir()) }
	for _, step := range []struct {
		args []string
		code int
		out  string
	}{
		{args("show", repo), exitOK, "disabled"},
		{args("enable", repo), exitOK, "enabled"},
		{args("show", repo), exitOK, "enabled"},
		{args("disable", repo), exitOK, "disabled"},
		{args("show", repo), exitOK, "disabled"},
		{args("enable", repo+":v1"), exitUsage, ""},
		{args("enable"), exitUsage, ""},
		{args("toggle", repo), exitUsage, ""},
		{args("enable", host+"/rill/policy"), exitUsage, ""},
	} {
		code, stdout, stderr := rill(t, append([]string{"repo"}, step.args...)...)
		if code != step.code || !strings.Contains(stdout, step.out) {
			t.Errorf("rill repo %v: exit %d, stdout %q, stderr %q; want exit %d and %q", step.args, code, stdout, stderr, step.code, step.out)
		}
	}
}

// rill operation and rill watch refuse bad input before doing anything, and say so when the
// watcher is not running.
func TestOperationAndWatchUsage(t *testing.T) {
	sock := "unix://" + filepath.Join(t.TempDir(), "none.sock")
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"operation"}, exitUsage},
		{[]string{"operation", "show"}, exitUsage},
		{[]string{"operation", "list", "extra"}, exitUsage},
		{[]string{"operation", "list", "--watcher", "ftp://x"}, exitUsage},
		{[]string{"operation", "list", "--watcher", sock}, exitUnavailable},
		{[]string{"watch"}, exitUsage},
		{[]string{"watch", "--registry", "a/b"}, exitUsage},
		{[]string{"pull"}, exitUsage},
	} {
		if code, _, stderr := rill(t, tc.args...); code != tc.code {
			t.Errorf("rill %v: exit %d (%s), want %d", tc.args, code, stderr, tc.code)
		}
	}
}
