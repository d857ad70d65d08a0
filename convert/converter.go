package convert

import (
	"errors"

	"github.com/rillstream/rill/remote"
)

// Converter builds, finds, verifies and deletes streaming artifacts in registries. It is safe
// for concurrent use.
type Converter struct {
	reg  *remote.Registry
	del  *deleter
	opts options
}

// New returns a Converter that reaches registries through reg. access must describe how reg
// was built (hosts directory, credentials, default scheme): deletes, which remote does not
// offer, are sent with it directly.
func New(reg *remote.Registry, access Access, opts ...Option) (*Converter, error) {
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
	return &Converter{reg: reg, del: newDeleter(access), opts: o}, nil
}
