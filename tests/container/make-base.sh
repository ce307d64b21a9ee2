#!/usr/bin/env bash
# Makes a local Debian bookworm base image for tests/container/run.sh with debootstrap (no image registry is
# needed: packages come from a Debian mirror). It has python3.11 but deliberately NOT python3.11-venv, so the
# image build has to detect that ensurepip/venv are missing and install them (the Dockerfile's Python check).
#
#   sudo tests/container/make-base.sh                 # -> localhost/qasup-base:bookworm
#   QASUP_BASE_IMAGE=localhost/b:1 DEBIAN_MIRROR=http://mirror/debian tests/container/make-base.sh
#   QASUP_BASE_REBUILD=1 tests/container/make-base.sh # make it again even if it exists
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"

[ "$(id -u)" -eq 0 ] || die "make-base.sh needs root (debootstrap, podman import)"
ensure_tools debootstrap podman runc

if pm image exists "$QASUP_BASE_IMAGE" && [ -z "${QASUP_BASE_REBUILD:-}" ]; then
    say "$QASUP_BASE_IMAGE exists (QASUP_BASE_REBUILD=1 to make it again)"
    exit 0
fi

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/qasup-base.XXXXXX)
trap 'rm -rf "$root"' EXIT

start=$(date +%s)
say "debootstrap bookworm from $mirror into $root"
debootstrap --variant=minbase --include=python3.11,ca-certificates bookworm "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; die "debootstrap failed (log: $root.log)"; }
rm -f "$root.log"
# The mirror the build's apt-get uses (debootstrap writes only the main suite).
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb

chroot "$root" /usr/bin/python3.11 -c 'import venv' || die "the base has no venv module"
if chroot "$root" /usr/bin/python3.11 -c 'import ensurepip' 2>/dev/null; then
    say "note: this base already has ensurepip (the build will not need to install python3.11-venv)"
fi

say "importing as $QASUP_BASE_IMAGE"
tar -C "$root" -c . | pm import --quiet --change 'CMD ["/bin/bash"]' - "$QASUP_BASE_IMAGE" >/dev/null
size=$(pm image inspect --format '{{.Size}}' "$QASUP_BASE_IMAGE")
say "made $QASUP_BASE_IMAGE in $(( $(date +%s) - start )) s: $size bytes"
