// Command credential-provider is a kubelet credential provider plugin for the end-to-end
// tests: it reads a CredentialProviderRequest (credentialprovider.kubelet.k8s.io/v1) on stdin,
// appends the requested image as a line to $CREDENTIAL_PROVIDER_LOG, and answers with the
// "user:password" held in $CREDENTIAL_PROVIDER_FILE for the image's registry host (no auth
// entries while the file is empty or missing), not to be cached: the test changes the file
// while it runs.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

const apiVersion = "credentialprovider.kubelet.k8s.io/v1"

func main() {
	var req struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Image      string `json:"image"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fail("decoding the request: %v", err)
	}
	if req.APIVersion != apiVersion || req.Kind != "CredentialProviderRequest" || req.Image == "" {
		fail("not a %s CredentialProviderRequest: %+v", apiVersion, req)
	}
	if p := os.Getenv("CREDENTIAL_PROVIDER_LOG"); p != "" {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			fail("%v", err)
		}
		fmt.Fprintln(f, req.Image)
		f.Close()
	}
	auth := map[string]any{}
	data, err := os.ReadFile(os.Getenv("CREDENTIAL_PROVIDER_FILE"))
	if err != nil && !os.IsNotExist(err) {
		fail("%v", err)
	}
	if user, pass, ok := strings.Cut(strings.TrimSpace(string(data)), ":"); ok {
		host, _, _ := strings.Cut(req.Image, "/")
		auth[host] = map[string]string{"username": user, "password": pass}
	}
	err = json.NewEncoder(os.Stdout).Encode(map[string]any{
		"apiVersion": apiVersion, "kind": "CredentialProviderResponse",
		"cacheKeyType": "Registry", "cacheDuration": "0s", "auth": auth,
	})
	if err != nil {
		fail("%v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "credential-provider: "+format+"\n", args...)
	os.Exit(1)
}
