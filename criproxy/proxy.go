package criproxy

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"

	"github.com/containerd/log"
	"github.com/distribution/reference"
	"github.com/rillstream/rill/remote"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// imageService is the CRI service forwarded; every other is answered Unimplemented.
const imageService = "/runtime.v1.ImageService/"

const pullImage = imageService + "PullImage"

// Sink receives the credentials of a PullImage before containerd pulls; done is called with
// whether the pull succeeded.
type Sink interface {
	Capture(ctx context.Context, image string, c remote.Credential, pod string) (done func(pulled bool), err error)
}

// Proxy forwards the CRI image service to containerd.
type Proxy struct {
	conn *grpc.ClientConn
	sink Sink
}

// New returns a proxy to the CRI of the containerd listening on the unix socket target; sink
// may be nil (then nothing is captured). No connection is made before the first call.
func New(target string, sink Sink) (*Proxy, error) {
	conn, err := grpc.NewClient("unix://"+target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgSize), grpc.MaxCallSendMsgSize(maxMsgSize)),
	)
	if err != nil {
		return nil, fmt.Errorf("cri proxy to %s: %w", target, err)
	}
	return &Proxy{conn: conn, sink: sink}, nil
}

// maxMsgSize is kubelet's limit for CRI messages (16 MiB).
const maxMsgSize = 16 << 20

// Close closes the connection to containerd.
func (p *Proxy) Close() error { return p.conn.Close() }

// ServerOptions make a gRPC server forward every call it gets through p.
func (p *Proxy) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.UnknownServiceHandler(p.forward),
		grpc.ForceServerCodecV2(rawCodec{}),
		grpc.MaxRecvMsgSize(maxMsgSize),
		grpc.MaxSendMsgSize(maxMsgSize),
	}
}

// forward relays one call: the request (every image service method takes one), then each
// response, headers and trailers, and the call's status.
func (p *Proxy) forward(_ any, ss grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok || !strings.HasPrefix(method, imageService) {
		return status.Errorf(codes.Unimplemented, "rill's CRI proxy serves only the image service, not %s", method)
	}
	ctx := ss.Context()
	md, _ := metadata.FromIncomingContext(ctx)
	out := metadata.NewOutgoingContext(ctx, md.Copy())

	var req frame
	if err := ss.RecvMsg(&req); err != nil {
		return err
	}
	done := func(bool) {}
	if method == pullImage {
		done = p.capture(ctx, req)
	}
	pulled := false
	defer func() { done(pulled) }()

	cs, err := p.conn.NewStream(out, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method, grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		return err
	}
	if err := cs.SendMsg(&req); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if err := cs.CloseSend(); err != nil {
		return err
	}
	for n := 0; ; n++ {
		var resp frame
		err := cs.RecvMsg(&resp)
		if n == 0 {
			if h, herr := cs.Header(); herr == nil && len(h) > 0 {
				_ = ss.SendHeader(h)
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			ss.SetTrailer(cs.Trailer())
			return err
		}
		if err := ss.SendMsg(&resp); err != nil {
			return err
		}
	}
	ss.SetTrailer(cs.Trailer())
	pulled = true
	return nil
}

// capture hands a PullImage's credentials to the sink. Nothing in it fails the pull.
func (p *Proxy) capture(ctx context.Context, req frame) func(bool) {
	var pr runtime.PullImageRequest
	if err := proto.Unmarshal(req, &pr); err != nil {
		return func(bool) {} // containerd will answer it
	}
	image := pr.GetImage().GetImage()
	pod := ""
	if m := pr.GetSandboxConfig().GetMetadata(); m != nil {
		pod = m.GetNamespace() + "/" + m.GetName()
	}
	entry := log.G(ctx).WithFields(log.Fields{"image": image, "pod": pod})
	if p.sink == nil || pr.GetAuth() == nil {
		entry.Debug("CRI pull without credentials")
		return func(bool) {}
	}
	c, err := Credential(pr.GetAuth(), image)
	if err != nil {
		entry.WithError(err).Warn("CRI pull credentials unusable; streamed layers of the image use the other sources")
		return func(bool) {}
	}
	if c.IsZero() {
		entry.Debug("CRI pull credentials are for another registry, or empty")
		return func(bool) {}
	}
	done, err := p.sink.Capture(ctx, image, c, pod)
	if err != nil {
		entry.WithError(err).Warn("CRI pull credentials not kept")
		return func(bool) {}
	}
	return done
}

// Credential reads CRI's AuthConfig for image as containerd's CRI does: username and
// password, else identity token, else auth (base64 of user:password), plus the registry
// token; none when server_address names another registry than image's.
func Credential(a *runtime.AuthConfig, image string) (remote.Credential, error) {
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return remote.Credential{}, fmt.Errorf("image reference %q: %w", image, err)
	}
	if sa := a.GetServerAddress(); sa != "" && !sameRegistry(serverHost(sa), reference.Domain(named)) {
		return remote.Credential{}, nil
	}
	c := remote.Credential{RegistryToken: a.GetRegistryToken()}
	switch {
	case a.GetUsername() != "":
		c.Username, c.Secret = a.GetUsername(), a.GetPassword()
	case a.GetIdentityToken() != "":
		c.Secret = a.GetIdentityToken()
	case a.GetAuth() != "":
		raw, err := base64.StdEncoding.DecodeString(a.GetAuth())
		if err != nil {
			return remote.Credential{}, errors.New("auth is not base64")
		}
		u, pw, ok := strings.Cut(string(raw), ":")
		if !ok {
			return remote.Credential{}, errors.New("auth is not base64 of user:password")
		}
		c.Username, c.Secret = u, strings.Trim(pw, "\x00")
	}
	return c, nil
}

// serverHost is the host of a server address given with or without a scheme and path.
func serverHost(sa string) string {
	if strings.Contains(sa, "://") {
		if u, err := url.Parse(sa); err == nil {
			return u.Host
		}
	}
	h, _, _ := strings.Cut(sa, "/")
	return h
}

func sameRegistry(a, b string) bool {
	norm := func(h string) string {
		switch h {
		case "docker.io", "index.docker.io", "registry-1.docker.io":
			return "docker.io"
		}
		return h
	}
	return norm(a) == norm(b)
}

// frame is one message, as bytes.
type frame []byte

// rawCodec passes messages through without decoding them.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*frame)
	if !ok {
		return nil, fmt.Errorf("cri proxy: cannot marshal %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(*f)}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("cri proxy: cannot unmarshal into %T", v)
	}
	*f = data.Materialize()
	return nil
}

// Name is "proto": the messages are protobuf, forwarded with that content subtype.
func (rawCodec) Name() string { return "proto" }
