package e2e

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rillstream/rill/test/images"
)

// rootfsException reports why the lines the checker printed for one path in a container of
// the image pulled in full (extracted) and of the streamed image may differ as they do, after
// taking out of both what it explains; ok is false when it does not explain the difference.
type rootfsException func(extracted, streamed string, extractedAfter time.Time) (why, e, s string, ok bool)

// rootfsExceptions are the only differences a streamed root filesystem may have from
// containerd's extraction, each for a reason rill cannot (or should not) remove.
var rootfsExceptions = []rootfsException{
	// A directory a layer only implies (its files are listed, it is not) is made by
	// containerd's extraction with mkdir: its mtime is the moment that node unpacked the layer,
	// which no other node and no streamed layer can reproduce. rill gives it the metadata of
	// the same directory below, else the epoch. Directories the layers list are compared.
	func(extracted, streamed string, after time.Time) (string, string, string, bool) {
		m := dirMtime.FindStringSubmatch(extracted)
		if m == nil || !dirMtime.MatchString(streamed) {
			return "", "", "", false
		}
		sec, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil || sec < after.Unix() {
			return "", "", "", false
		}
		return "mtime of a directory the layer only implies (containerd: the time of extraction)",
			dirMtime.ReplaceAllString(extracted, ""), dirMtime.ReplaceAllString(streamed, ""), true
	},
	// ext4 keeps extended attributes that do not fit in the inode in a block of their own,
	// counted in st_blocks; rill counts a file's data blocks only.
	func(extracted, streamed string, _ time.Time) (string, string, string, bool) {
		if !strings.Contains(extracted, " file ") || !strings.Contains(extracted, " xattr:") {
			return "", "", "", false
		}
		be, bs := blocks.FindStringSubmatch(extracted), blocks.FindStringSubmatch(streamed)
		if be == nil || bs == nil {
			return "", "", "", false
		}
		ne, _ := strconv.Atoi(be[1])
		ns, _ := strconv.Atoi(bs[1])
		if ne != ns+8 {
			return "", "", "", false
		}
		return "ext4's block for extended attributes that do not fit in the inode",
			blocks.ReplaceAllString(extracted, ""), blocks.ReplaceAllString(streamed, ""), true
	},
}

var (
	dirMtime = regexp.MustCompile(` dirmtime=(\d+)\.\d{9}`)
	blocks   = regexp.MustCompile(` blocks=(\d+)`)
)

// compareRootfs compares the checker's -stat output in a container of the image pulled in
// full (extracted) with the one in a container of the streamed image, path by path, allowing
// only rootfsExceptions (logged). extractedAfter is a time before the extraction began.
func compareRootfs(t *testing.T, extracted, streamed string, extractedAfter time.Time) {
	t.Helper()
	byPath := func(text string) map[string]string {
		lines := map[string]string{}
		for _, l := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
			p, err := strconv.QuotedPrefix(l)
			if err != nil {
				t.Fatalf("checker line without a quoted path: %q", l)
			}
			lines[p] = l
		}
		return lines
	}
	ext, str := byPath(extracted), byPath(streamed)
	var diffs, allowed []string
	for p, e := range ext {
		s, ok := str[p]
		if !ok || s == e {
			continue
		}
		var whys []string
		for _, exception := range rootfsExceptions {
			if why, e2, s2, ok := exception(e, s, extractedAfter); ok {
				whys, e, s = append(whys, why), e2, s2
			}
		}
		if s != e {
			diffs = append(diffs, "- "+ext[p], "+ "+str[p])
			continue
		}
		allowed = append(allowed, p+": "+strings.Join(whys, "; "))
	}
	slices.Sort(allowed)
	t.Logf("allowed differences from containerd's extraction:\n%s", strings.Join(allowed, "\n"))
	for p := range str {
		if _, ok := ext[p]; !ok {
			diffs = append(diffs, "+ "+str[p])
		}
	}
	for p := range ext {
		if _, ok := str[p]; !ok {
			diffs = append(diffs, "- "+ext[p])
		}
	}
	if len(diffs) > 0 {
		slices.SortFunc(diffs, func(a, b string) int { // by path, "- " before "+ "
			if c := strings.Compare(a[2:], b[2:]); c != 0 {
				return c
			}
			return -strings.Compare(a, b)
		})
		t.Errorf("the streamed root filesystem differs from containerd's extraction (- extracted, + streamed):\n%s", strings.Join(diffs, "\n"))
	}
}

// A container on a streamed image sees exactly the root filesystem containerd's own extraction
// of the same image gives it: the fixture image, its layer of tar quirks (a "./" entry owned by
// 1000:1000, paths listed twice, names that are not UTF-8, nanosecond and pre-1970 mtimes)
// included, is converted with rill create, pulled through rill (every layer streamed), and the
// checker's -stat listing in the container — st_blocks, directories' st_size and mtime, "." and
// ".." in every listing, the owner of "/" — is compared path by path with the listing in a
// container of the same image pulled in full.
func TestStreamedRootfsIsContainerds(t *testing.T) {
	env := startEnv(t)
	ctx := t.Context()
	fixture, err := images.Fixture(ctx, env.RepoRoot, t.TempDir(), images.FixtureOptions{Repository: "rill/rootfs-streamed:v1"})
	if err != nil {
		t.Fatalf("building the fixture image: %v", err)
	}
	push := func(repo string) pushedImage {
		t.Helper()
		img := *fixture
		img.Repository = repo
		pushed, err := img.Push(ctx, env.Registry.Host())
		if err != nil {
			t.Fatalf("pushing %s: %v", repo, err)
		}
		return pushedImage{TestImage: &img, PushedImage: pushed}
	}
	streamed, full := push("rill/rootfs-streamed:v1"), push("rill/rootfs-full:v1")
	cli := newRillCLI(t)
	cli.must(append([]string{"create", streamed.Ref}, cli.registryArgs()...)...)
	command := append([]string{"/checker", "-stat"}, fixture.Command[1:]...)

	// run pulls img, checks how rill took its layers, runs the checker in a container and
	// removes the image again (both images have the same layers: containerd would reuse them).
	run := func(img pushedImage, stream bool) string {
		t.Helper()
		if _, err := env.CRI.Pull(ctx, img.Ref); err != nil {
			t.Fatalf("crictl pull %s: %v", img.Ref, err)
		}
		assertUnpackedByRill(t, env, img)
		assertLayersRemote(t, env, img, stream)
		if stream {
			assertStreamed(t, env, img.PushedImage, "bound-artifact")
			n := 0
			for _, l := range statusLayers(t, env) {
				if l.Reason == "bound-artifact" { // the environment holds no other streamed layer
					n++
				}
			}
			if n != len(img.ChainIDs) {
				t.Errorf("rill status lists %d layers of %s streamed for the reason bound-artifact, want all %d", n, img.Ref, len(img.ChainIDs))
			}
		}
		res, err := env.CRI.RunInPod(ctx, podName(img), img.Ref, command, runTimeout)
		if err != nil {
			t.Fatalf("running %s through CRI: %v", img.Ref, err)
		}
		if res.ExitCode != 0 || res.Stderr != "" {
			t.Fatalf("%v in %s exited with %d; stderr:\n%s", command, img.Ref, res.ExitCode, res.Stderr)
		}
		if err := env.CRI.RemoveImage(ctx, img.Ref); err != nil {
			t.Fatalf("crictl rmi %s: %v", img.Ref, err)
		}
		assertSnapshotsGone(t, env, img)
		return res.Stdout
	}
	gotStreamed := run(streamed, true)
	extractedAfter := time.Now().Add(-time.Second) // mtimes are set by the kernel's clock
	gotFull := run(full, false)

	if !strings.Contains(gotFull, `"/" dir mode=0755 uid=0 gid=0 `) {
		t.Errorf("containerd's extraction does not give / to root (the quirks layer's ./ entry must be ignored):\n%s", grepLines(gotFull, `"/" `))
	}
	compareRootfs(t, gotFull, gotStreamed, extractedAfter)
}
