package watch

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/sirupsen/logrus"

	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/convert/operation"
)

// CreateRequest is the body of POST /v1/operations: an operator's rill create --no-wait.
type CreateRequest struct {
	// Image is the image reference as the operator gave it (a tag, or a digest).
	Image string `json:"image"`
	// Create holds the create's choices.
	Create operation.CreateSpec `json:"create"`
}

// SubmitCreate queues an operator's create of req.Image and returns its operation at once.
// The image must be in the watcher's registry and exist; a tag is resolved now, and the
// operation converts what it names now (see workCreate). The repository's policy does not
// apply: the operator asked.
func (w *Watcher) SubmitCreate(ctx context.Context, req CreateRequest) (operation.Operation, error) {
	named, err := reference.ParseNormalizedNamed(req.Image)
	if err != nil {
		return operation.Operation{}, fmt.Errorf("%q is not an image reference: %w: %w", req.Image, errdefs.ErrInvalidArgument, err)
	}
	named = reference.TagNameOnly(named)
	if d := reference.Domain(named); d != w.cfg.Registry {
		return operation.Operation{}, fmt.Errorf("%s is on %s, but this watcher serves %s: run rill create without --no-wait, or ask a watcher of %s: %w",
			req.Image, d, w.cfg.Registry, d, errdefs.ErrInvalidArgument)
	}
	// The choices are checked now, so that a typo fails the command rather than the operation.
	opts, err := createOptions(req.Create)
	if err == nil {
		_, err = w.cfg.NewConverter(nil, opts...)
	}
	if err != nil {
		return operation.Operation{}, fmt.Errorf("the create's options: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	r := operation.Request{Repository: named.Name(), Trigger: "rill create", Create: &req.Create}
	if d, ok := named.(reference.Digested); ok {
		// By digest (with a tag or not): referrers only, as rill create does.
		r.Digest = d.Digest()
	} else {
		r.Tag = named.(reference.Tagged).Tag()
	}
	desc, err := w.cfg.Remote.Resolve(ctx, r.Image())
	if err != nil {
		return operation.Operation{}, fmt.Errorf("resolve %s: %w", r.Image(), err)
	}
	r.Digest = desc.Digest
	op, _, err := w.queue.Submit(r)
	if err != nil {
		return operation.Operation{}, err
	}
	return op, nil
}

// workCreate runs an operator's create: the image the operation names, with the operator's
// choices, whatever the repository's policy says. A tag that names another image than when
// the operation was submitted fails it (a conflict: the operator decides what to convert),
// unless the tag was bound meanwhile (it names a binding index, of the same image as far as
// anything else could tell; creating again keeps or rebuilds its artifacts).
func (w *Watcher) workCreate(ctx context.Context, op operation.Operation, progress func(operation.Progress)) (string, error) {
	if op.Tag != "" {
		now, err := w.cfg.Remote.Resolve(ctx, op.Image())
		if err != nil {
			return "", fmt.Errorf("resolve %s: %w", op.Image(), err)
		}
		if op.Create.IfBinds != "" {
			if msg := w.stillBinds(ctx, op, now); msg != "" {
				return msg, nil
			}
		} else if now.Digest != op.Digest {
			kind, err := w.classify(ctx, op.Repository, now)
			if err != nil {
				return "", err
			}
			if kind != convert.KindBinding {
				return "", fmt.Errorf("%s names %s now, not %s as when the operation was submitted; run rill create again: %w",
					op.Image(), now.Digest, op.Digest, convert.ErrTagMoved)
			}
		}
	}
	pr := newProgressTracker(progress)
	opts, err := createOptions(*op.Create)
	if err != nil {
		return "", fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	c, err := w.cfg.NewConverter(pr.update, opts...)
	if err != nil {
		return "", fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	w.log.WithFields(logrus.Fields{"operation": op.ID, "image": op.Image(), "force": op.Create.Force, "bind": !op.Create.NoBind,
		"profile_paths": len(op.Create.Profile)}).Info("creating on an operator's request")
	res, err := c.Create(ctx, op.Image(), convert.CreateOptions{Bind: !op.Create.NoBind, Force: op.Create.Force, Profile: op.Create.Profile})
	if err != nil {
		return "", err
	}
	return summary(res), nil
}

// createOptions are the converter options of an operator's choices (added to the watcher's).
func createOptions(s operation.CreateSpec) ([]convert.Option, error) {
	var opts []convert.Option
	if len(s.Platforms) > 0 {
		ps, err := convert.ParsePlatforms(s.Platforms)
		if err != nil {
			return nil, err
		}
		opts = append(opts, convert.WithPlatforms(ps...))
	}
	if s.ChunkSize != 0 || s.CompressionLevel != 0 {
		opts = append(opts, convert.WithLayerOptions(convert.LayerOptions{ChunkSize: s.ChunkSize, CompressionLevel: s.CompressionLevel}))
	}
	if s.VerifyChunks {
		opts = append(opts, convert.WithChunkVerification(true))
	}
	return opts, nil
}
