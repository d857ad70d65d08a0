package criproxy

import (
	"context"
	"encoding/base64"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/rillstream/rill/remote"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fakeCRI stands in for containerd's image service: it records the requests it got.
type fakeCRI struct {
	runtime.UnimplementedImageServiceServer
	mu    sync.Mutex
	pulls []*runtime.PullImageRequest
	fail  error
}

func (f *fakeCRI) PullImage(_ context.Context, r *runtime.PullImageRequest) (*runtime.PullImageResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pulls = append(f.pulls, r)
	if f.fail != nil {
		return nil, f.fail
	}
	return &runtime.PullImageResponse{ImageRef: "sha256:pulled"}, nil
}

func (f *fakeCRI) ListImages(context.Context, *runtime.ListImagesRequest) (*runtime.ListImagesResponse, error) {
	return &runtime.ListImagesResponse{Images: []*runtime.Image{{Id: "sha256:1"}, {Id: "sha256:2"}}}, nil
}

func (f *fakeCRI) StreamImages(_ *runtime.StreamImagesRequest, s grpc.ServerStreamingServer[runtime.StreamImagesResponse]) error {
	for _, id := range []string{"a", "b", "c"} {
		if err := s.Send(&runtime.StreamImagesResponse{Images: []*runtime.Image{{Id: id}}}); err != nil {
			return err
		}
	}
	return nil
}

type capture struct {
	image, pod string
	cred       remote.Credential
	pulled     *bool
}

type recordingSink struct {
	mu  sync.Mutex
	got []*capture
}

func (s *recordingSink) Capture(_ context.Context, image string, c remote.Credential, pod string) (func(bool), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cp := &capture{image: image, pod: pod, cred: c}
	s.got = append(s.got, cp)
	return func(ok bool) { s.mu.Lock(); cp.pulled = &ok; s.mu.Unlock() }, nil
}

func serve(t *testing.T, path string, srv *grpc.Server) {
	t.Helper()
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
}

func setup(t *testing.T) (*fakeCRI, *recordingSink, runtime.ImageServiceClient, *grpc.ClientConn) {
	dir := t.TempDir()
	fake := &fakeCRI{}
	backend := grpc.NewServer()
	runtime.RegisterImageServiceServer(backend, fake)
	serve(t, filepath.Join(dir, "containerd.sock"), backend)

	sink := &recordingSink{}
	p, err := New(filepath.Join(dir, "containerd.sock"), sink)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	serve(t, filepath.Join(dir, "cri.sock"), grpc.NewServer(p.ServerOptions()...))
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "cri.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return fake, sink, runtime.NewImageServiceClient(conn), conn
}

func TestProxyForwardsAndCaptures(t *testing.T) {
	fake, sink, client, conn := setup(t)
	ctx := t.Context()
	req := &runtime.PullImageRequest{
		Image:         &runtime.ImageSpec{Image: "127.0.0.1:5000/private/app:v1", Annotations: map[string]string{"a": "b"}},
		Auth:          &runtime.AuthConfig{Username: "alice", Password: "s3cret"},
		SandboxConfig: &runtime.PodSandboxConfig{Metadata: &runtime.PodSandboxMetadata{Name: "web", Namespace: "shop"}},
	}
	resp, err := client.PullImage(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.ImageRef != "sha256:pulled" {
		t.Fatalf("response %v", resp)
	}
	fake.mu.Lock()
	if len(fake.pulls) != 1 || !proto.Equal(fake.pulls[0], req) {
		t.Fatalf("containerd got %v, want the request unchanged", fake.pulls)
	}
	fake.mu.Unlock()
	sink.mu.Lock()
	defer sink.mu.Unlock()
	c := sink.got[0]
	if c.image != req.Image.Image || c.pod != "shop/web" || c.cred != (remote.Credential{Username: "alice", Secret: "s3cret"}) || c.pulled == nil || !*c.pulled {
		t.Fatalf("captured %+v", c)
	}

	// Errors keep containerd's code; the capture hears that the pull failed.
	fake.mu.Lock()
	fake.fail = status.Error(codes.NotFound, "no such image")
	fake.mu.Unlock()
	sink.mu.Unlock()
	_, err = client.PullImage(ctx, req)
	sink.mu.Lock()
	if status.Code(err) != codes.NotFound || status.Convert(err).Message() != "no such image" {
		t.Fatalf("error %v, want containerd's NotFound", err)
	}
	if p := sink.got[1].pulled; p == nil || *p {
		t.Fatal("a failed pull was reported as pulled")
	}
	// A pull without auth captures nothing.
	sink.mu.Unlock()
	_, err = client.PullImage(ctx, &runtime.PullImageRequest{Image: &runtime.ImageSpec{Image: "busybox"}})
	sink.mu.Lock()
	if status.Code(err) != codes.NotFound {
		t.Fatal(err)
	}
	if len(sink.got) != 2 {
		t.Fatalf("%d captures, want none for a pull without auth", len(sink.got))
	}

	// Other methods, streaming ones too, go through.
	list, err := client.ListImages(ctx, &runtime.ListImagesRequest{})
	if err != nil || len(list.Images) != 2 {
		t.Fatalf("ListImages: %v %v", list, err)
	}
	stream, err := client.StreamImages(ctx, &runtime.StreamImagesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.Images[0].Id)
	}
	if len(ids) != 3 {
		t.Fatalf("streamed %v", ids)
	}
	if _, err := client.ImageFsInfo(ctx, &runtime.ImageFsInfoRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("a method containerd does not implement: %v", err)
	}
	// The runtime service is not the proxy's.
	if _, err := runtime.NewRuntimeServiceClient(conn).Version(ctx, &runtime.VersionRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("runtime service through the proxy: %v", err)
	}
}

func TestCredential(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, tc := range []struct {
		name  string
		auth  *runtime.AuthConfig
		image string
		want  remote.Credential
		err   bool
	}{
		{"user and password", &runtime.AuthConfig{Username: "u", Password: "p"}, "reg.io/app", remote.Credential{Username: "u", Secret: "p"}, false},
		{"auth", &runtime.AuthConfig{Auth: b64("u:p:with:colons")}, "reg.io/app", remote.Credential{Username: "u", Secret: "p:with:colons"}, false},
		{"identity token", &runtime.AuthConfig{IdentityToken: "idt"}, "reg.io/app", remote.Credential{Secret: "idt"}, false},
		{"registry token", &runtime.AuthConfig{RegistryToken: "rt"}, "reg.io/app", remote.Credential{RegistryToken: "rt"}, false},
		{"server address matches", &runtime.AuthConfig{Username: "u", Password: "p", ServerAddress: "https://reg.io"}, "reg.io/app", remote.Credential{Username: "u", Secret: "p"}, false},
		{"docker hub", &runtime.AuthConfig{Username: "u", Password: "p", ServerAddress: "https://index.docker.io/v1/"}, "busybox", remote.Credential{Username: "u", Secret: "p"}, false},
		{"another registry", &runtime.AuthConfig{Username: "u", Password: "p", ServerAddress: "other.io"}, "reg.io/app", remote.Credential{}, false},
		{"bad base64", &runtime.AuthConfig{Auth: "%%%"}, "reg.io/app", remote.Credential{}, true},
		{"no colon", &runtime.AuthConfig{Auth: b64("justuser")}, "reg.io/app", remote.Credential{}, true},
		{"bad image", &runtime.AuthConfig{Username: "u"}, "Not A Ref", remote.Credential{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Credential(tc.auth, tc.image)
			if (err != nil) != tc.err || got != tc.want {
				t.Fatalf("got %+v, %v", got, err)
			}
			if err != nil && (strings.Contains(err.Error(), "justuser") || strings.Contains(err.Error(), "%%%")) {
				t.Fatalf("error shows the auth: %v", err)
			}
		})
	}
}
