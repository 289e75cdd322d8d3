#!/bin/sh
# The image's base from the distribution's own packages, for machines that reach no container
# registry (air-gapped robots, build hosts behind a mirror): Debian 12 with its Python 3.11,
# venv and CA certificates, made by mmdebstrap and imported into the engine. Its apt sources
# are the release, its stable updates and its security updates, so the base, and whatever a
# later build installs with apt, has Debian's current fixes.
#
#   docker/base-offline.sh [TAG]        # ENGINE=docker|podman (default: podman if present)
#
# Then build on it: make image BASE=TAG (what `make image-base-offline` does).
set -eu
TAG=${1:-localhost/vidt-base:bookworm}
ENGINE=${ENGINE:-$(command -v podman >/dev/null 2>&1 && echo podman || echo docker)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
command -v mmdebstrap >/dev/null 2>&1 || { echo "needs mmdebstrap (apt-get install mmdebstrap)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$tmp/base.tar" "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
    "deb $SECURITY_MIRROR bookworm-security main"
"$ENGINE" import --change 'CMD ["python3"]' "$tmp/base.tar" "$TAG"
echo "built $TAG"
