package convert

import (
	"fmt"
	"io"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/rillstream/rill/artifact"
)

// openEStargz opens an eStargz blob with the estargz reader, after checking its footer with
// rill's own parser: the library's panics on a footer whose gzip extra field is shorter than
// it claims, and rill verify reads blobs from registries. A panic left in the library on
// other hostile input is turned into an error rather than ending the command.
func openEStargz(blob *io.SectionReader) (r *estargz.Reader, err error) {
	if blob.Size() < artifact.FooterSize {
		return nil, fmt.Errorf("%d bytes is shorter than an eStargz footer (%d)", blob.Size(), artifact.FooterSize)
	}
	footer := make([]byte, artifact.FooterSize)
	if _, err := blob.ReadAt(footer, blob.Size()-artifact.FooterSize); err != nil {
		return nil, fmt.Errorf("read footer: %w", err)
	}
	if _, err := artifact.ParseFooter(footer); err != nil {
		return nil, fmt.Errorf("footer: %w", err)
	}
	defer func() {
		if p := recover(); p != nil {
			r, err = nil, fmt.Errorf("the estargz reader failed on this blob: %v", p)
		}
	}()
	return estargz.Open(blob)
}
