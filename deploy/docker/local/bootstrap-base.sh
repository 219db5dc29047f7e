#!/usr/bin/env bash
# Build a Debian bookworm base image with Python 3.11 from Debian packages, for machines where
# no container registry answers: debootstrap (minbase) into a scratch directory, then
# `docker import`. Usage: bootstrap-base.sh <image:tag>. Needs root and debootstrap.
# The image's tag is a hash of this file (scripts/images.sh), so edit it to get a new base.
set -euo pipefail

TAG=${1:?usage: bootstrap-base.sh <image:tag>}
MIRROR=${PDMFED_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${PDMFED_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
PACKAGES=python3,python3-venv,python3-pip,ca-certificates,passwd

ROOTFS=$(mktemp -d /tmp/pdmfed-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT

debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS" "$MIRROR" >/dev/null
cat >"$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
SOURCES
# Like the official slim images: no package lists, caches or docs in the base layer.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "debootstrap --variant=minbase bookworm + $PACKAGES" - "$TAG" >/dev/null
echo "$TAG"
