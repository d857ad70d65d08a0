#!/usr/bin/env bash
# Installs, idempotently and only what is missing, everything the tests and the demo need:
# containerd (+ ctr, containerd-shim-runc-v2), crictl, the distribution registry (all built with
# `go install` at the versions pinned in script/versions.env) and Debian packages (runc,
# debootstrap, ...). Fast when everything is already there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

log() { printf '[setup] %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
	log "must run as root (installs packages and binaries under $RILL_TOOLS_BIN)"
	exit 1
fi

# --- Debian packages ---------------------------------------------------------------------
missing=()
for p in $DEBIAN_PACKAGES; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	log "installing Debian packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Go-built tools ------------------------------------------------------------------------
# A stamp file per tool records the version installed, so a version bump reinstalls.
stampdir=/var/lib/rill-test-env
mkdir -p "$stampdir" "$RILL_TOOLS_BIN"

goinstall() { # name version package...
	local name=$1 version=$2
	shift 2
	local stamp="$stampdir/$name"
	local all_present=1
	for pkg in "$@"; do
		[[ -x "$RILL_TOOLS_BIN/$(basename "$pkg")" ]] || all_present=0
	done
	if ((all_present)) && [[ -f $stamp && $(cat "$stamp") == "$version" ]]; then
		return 0
	fi
	log "building $name $version (go install; takes a minute or two on a cold cache)"
	local args=()
	for pkg in "$@"; do args+=("$pkg@$version"); done
	GOBIN="$RILL_TOOLS_BIN" GOFLAGS=-buildvcs=false go install "${args[@]}"
	echo "$version" >"$stamp"
}

goinstall containerd "$CONTAINERD_VERSION" \
	github.com/containerd/containerd/v2/cmd/containerd \
	github.com/containerd/containerd/v2/cmd/ctr \
	github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
goinstall crictl "$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl
goinstall registry "$REGISTRY_VERSION" github.com/distribution/distribution/v3/cmd/registry

log "ready: $(containerd --version 2>/dev/null | awk '{print $3}') containerd, runc $(runc --version | awk 'NR==1{print $3}'), crictl $CRICTL_VERSION, registry $REGISTRY_VERSION"
