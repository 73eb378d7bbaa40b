#!/usr/bin/env bash
# A Debian bookworm base image made on this host, for machines that reach Debian's and PyPI's
# package mirrors but no image registry: the images' BASE_IMAGE build argument and the local
# Redis image build on it (`make docker-smoke`). It has Python 3.11, the interpreter of the
# CPU torch wheel, with venv and a `python` command (the Dockerfiles run `python -m venv`),
# CA certificates, and useradd/groupadd for the images' non-root user.
#
#   docker/build-base.sh [IMAGE]        default memserve-base:bookworm; needs root (debootstrap)
#
# Kept when it exists (delete the image to rebuild it): a fresh debootstrap takes minutes and
# would give every image built on it new layers.
set -euo pipefail

IMAGE=${1:-${MEMSERVE_BASE_IMAGE:-memserve-base:bookworm}}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
DOCKER=${DOCKER:-docker}
PACKAGES=python3,python3-venv,python-is-python3,ca-certificates,passwd

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "build-base: $IMAGE exists, kept"
  exit 0
fi
for tool in debootstrap chroot; do
  command -v "$tool" >/dev/null || { echo "build-base: $tool not found (apt-get install debootstrap)" >&2; exit 1; }
done

rootfs=$(mktemp -d /tmp/memserve-base.XXXXXX)
cleanup() {
  # debootstrap mounts /proc and /sys inside the target; a failed run can leave them there,
  # and rm -rf must never descend into the host's.
  for m in proc sys dev/pts dev; do
    if mountpoint -q "$rootfs/$m" 2>/dev/null; then umount -l "$rootfs/$m" || true; fi
  done
  rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT

start=$(date +%s)
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR"

# debootstrap's sources.list has the release only; images built on this one get security and
# point-release updates like any Debian image.
cat > "$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF

# Documentation, man pages and translations serve no one in a container: drop those already
# unpacked, and keep later `apt-get install`s (the worker's, Redis') from unpacking more.
cat > "$rootfs/etc/dpkg/dpkg.cfg.d/memserve-slim" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
EOF
# apt's package caches (/var/cache/apt/*.bin, ~80 MB after an `apt-get update`) would stay in
# the layer of every RUN that installs something; Debian's own images switch them off alike.
cat > "$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/cache/apt/*.bin \
  "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +

# --numeric-owner: the image's files keep the rootfs' uids, not whatever names the host maps.
tar --numeric-owner -C "$rootfs" -c . | "$DOCKER" import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --message "debootstrap --variant=minbase $SUITE + $PACKAGES" \
  - "$IMAGE" >/dev/null

echo "build-base: $IMAGE built in $(($(date +%s) - start)) s," \
  "$("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"
