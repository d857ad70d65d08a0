package convert

import (
	"context"
	"errors"

	"github.com/rillstream/rill/remote"
)

// Converter builds, finds, verifies and deletes streaming artifacts in registries. It is safe
// for concurrent use.
type Converter struct {
	reg  *remote.Registry
	opts options
}

// New returns a Converter that reaches registries through reg: every request, deletes and
// tag listings too, goes through it.
func New(reg *remote.Registry, opts ...Option) (*Converter, error) {
	if reg == nil {
		return nil, errors.New("convert: no registry")
	}
	o := defaults()
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	return &Converter{reg: reg, opts: o}, nil
}

// Tags lists the tags of the repository name (host/repository), following the registry's
// pagination. NotFound when the repository does not exist.
func (c *Converter) Tags(ctx context.Context, name string) ([]string, error) {
	tags, err := c.reg.Tags(ctx, name)
	return tags, authError(err)
}
