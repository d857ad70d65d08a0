#!/usr/bin/env bash
# Installs rill on this node: the daemon rill-snapshotter and the CLI rill, the systemd unit
# and a default config (kept when one exists). It does not touch containerd's config: see
# README "Enable it in containerd".
#   usage: install.sh PATH-TO-rill-snapshotter PATH-TO-rill   (make install builds both)
#   PREFIX   binary directory (default /usr/local/bin)
#   DESTDIR  staging root for packaging (default empty)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX=${PREFIX:-/usr/local/bin}
DESTDIR=${DESTDIR:-}
usage="usage: install.sh PATH-TO-rill-snapshotter PATH-TO-rill (make install builds and installs both)"
daemon=${1:?$usage}
cli=${2:?$usage}
for bin in "$daemon" "$cli"; do
	[[ -f $bin && -x $bin ]] || { echo "install.sh: $bin is not an executable file; $usage" >&2; exit 2; }
done

install -D -m 0755 "$daemon" "$DESTDIR$PREFIX/rill-snapshotter"
install -D -m 0755 "$cli" "$DESTDIR$PREFIX/rill"
sed "s|/usr/local/bin/rill-snapshotter|$PREFIX/rill-snapshotter|" "$here/rill-snapshotter.service" >"$DESTDIR/tmp.rill-unit.$$"
install -D -m 0644 "$DESTDIR/tmp.rill-unit.$$" "$DESTDIR/etc/systemd/system/rill-snapshotter.service"
rm -f "$DESTDIR/tmp.rill-unit.$$"
if [[ -e $DESTDIR/etc/rill/config.toml ]]; then
	echo "kept existing $DESTDIR/etc/rill/config.toml"
else
	install -D -m 0644 "$here/config.toml" "$DESTDIR/etc/rill/config.toml"
fi
install -d -m 0700 "$DESTDIR/var/lib/rill"
if [[ -z $DESTDIR ]] && command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
	systemctl daemon-reload
	echo "installed; start with: systemctl enable --now rill-snapshotter"
else
	echo "installed into ${DESTDIR:-/} (systemd not running here: enable the unit on the node)"
fi
