package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The DaemonSet's commands are commands rill accepts: its install-node, run against a host
// root, installs and starts rill; its doctor runs.
func TestDaemonSetCommands(t *testing.T) {
	type container struct {
		Name    string
		Command []string
	}
	b, err := os.ReadFile("../../deploy/rill-node.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds struct {
		Kind string
		Spec struct {
			Template struct {
				Spec struct {
					InitContainers []container `yaml:"initContainers"`
					Containers     []container
				}
			}
		}
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	for dec.Decode(&ds) == nil && ds.Kind != "DaemonSet" {
	}
	spec := ds.Spec.Template.Spec
	if ds.Kind != "DaemonSet" || len(spec.InitContainers) != 1 {
		t.Fatalf("no DaemonSet with an init container in deploy/rill-node.yaml: %+v", ds)
	}
	install := spec.InitContainers[0].Command
	if len(install) < 2 || install[1] != "install-node" {
		t.Fatalf("init container runs %v", install)
	}
	root, from := nodeRoot(t, nodeContainerdConfig)
	calls := filepath.Join(t.TempDir(), "calls")
	fake := filepath.Join(t.TempDir(), "nsenter")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho \"$@\" >> "+calls+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{}
	for _, a := range install[1:] {
		a = strings.Replace(a, "--root-prefix=/host", "--root-prefix="+root, 1)
		a = strings.Replace(a, "--from=/usr/local/bin", "--from="+from, 1)
		a = strings.Replace(a, "--systemctl=nsenter", "--systemctl="+fake, 1)
		args = append(args, a)
	}
	if _, errOut, code := runCLI(t, args...); code != 0 {
		t.Fatalf("rill %v: exit %d: %s", args, code, errOut)
	}
	if log, _ := os.ReadFile(calls); !strings.Contains(string(log), "-t 1 -m -u -i -n -p -- systemctl enable --now rill-snapshotter") {
		t.Errorf("the host's systemd was not asked to start rill: %q", log)
	}

	if len(spec.Containers) != 1 || len(spec.Containers[0].Command) != 3 {
		t.Fatalf("containers: %+v", spec.Containers)
	}
	m := regexp.MustCompile(`/usr/local/bin/rill (doctor [^;]*);`).FindStringSubmatch(spec.Containers[0].Command[2])
	if m == nil {
		t.Fatalf("the main container does not run rill doctor: %q", spec.Containers[0].Command[2])
	}
	doctorArgs := strings.Fields(strings.ReplaceAll(m[1], "=/host", "="+root))
	if _, errOut, code := runCLI(t, append(doctorArgs, "--no-containerd")...); strings.Contains(errOut, "flag provided but not defined") || code == 2 {
		t.Errorf("rill %v: exit %d: %s", doctorArgs, code, errOut)
	}
}
