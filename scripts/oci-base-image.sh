#!/usr/bin/env bash
# Build the Python base image that streamfaas's OCI function images start FROM when no public
# registry can be reached (tests, CI, an offline machine): Debian bookworm's python3 (3.11, the
# same minor as the venv that builds the wheels), made with mmdebstrap from the Debian mirror
# apt already uses, then imported into buildah's storage.
#
#   scripts/oci-base-image.sh            # cached: does nothing when the image is there
#   scripts/oci-base-image.sh --force    # rebuild it (and re-download the rootfs)
#
# Environment: STREAMFAAS_BASE_IMAGE (default localhost/streamfaas-pybase:bookworm),
# STREAMFAAS_OCI_CACHE (where rootfs.tar is kept, default /var/cache/streamfaas-k8s), and
# STREAMFAAS_BUILDAH_ROOT: a private buildah storage (vfs) instead of buildah's default, the
# same variable `streamfaas build --oci` reads. Needs root, buildah and mmdebstrap.
set -euo pipefail

IMAGE=${STREAMFAAS_BASE_IMAGE:-localhost/streamfaas-pybase:bookworm}
CACHE=${STREAMFAAS_OCI_CACHE:-/var/cache/streamfaas-k8s}
ROOTFS=$CACHE/pybase-bookworm-rootfs.tar
# passwd: useradd, so the image's Dockerfiles can make their non-root user.
PACKAGES=python3,python3-venv,python3-pip,ca-certificates,passwd

force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) echo "oci-base-image.sh: unknown argument ${1}; the only one is --force" >&2; exit 2 ;;
esac

for tool in buildah mmdebstrap; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "oci-base-image.sh: $tool is missing (apt-get install buildah mmdebstrap)" >&2
    exit 1
  fi
done

storage=()
if [ -n "${STREAMFAAS_BUILDAH_ROOT:-}" ]; then
  storage=(--storage-driver vfs --root "$STREAMFAAS_BUILDAH_ROOT/root" --runroot "$STREAMFAAS_BUILDAH_ROOT/runroot")
fi

if [ "$force" = 0 ] && buildah "${storage[@]}" inspect --type image "$IMAGE" >/dev/null 2>&1; then
  echo "oci-base-image.sh: $IMAGE is there already (--force rebuilds it)" >&2
  exit 0
fi

mkdir -p "$CACHE"
if [ "$force" = 1 ] || [ ! -s "$ROOTFS" ]; then
  # Written beside the cache and renamed, so an interrupted run never leaves a truncated tar
  # that a later run would take for a good one.
  tmp=$(mktemp "$CACHE/.rootfs.XXXXXX.tar")
  trap 'rm -f "$tmp"' EXIT
  echo "oci-base-image.sh: mmdebstrap bookworm ($PACKAGES) …" >&2
  mmdebstrap --quiet --variant=apt --include="$PACKAGES" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$tmp"
  mv "$tmp" "$ROOTFS"
  trap - EXIT
fi

# buildah 1.28 has no `import`: an empty container, the tar added at /, committed.
echo "oci-base-image.sh: importing $ROOTFS as $IMAGE …" >&2
ctr=$(buildah "${storage[@]}" from scratch)
trap 'buildah "${storage[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
buildah "${storage[@]}" add --quiet "$ctr" "$ROOTFS" /
buildah "${storage[@]}" config --env LANG=C.UTF-8 \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /usr/bin/python3 "$ctr"
buildah "${storage[@]}" commit --quiet --rm "$ctr" "$IMAGE" >/dev/null
trap - EXIT
echo "oci-base-image.sh: built $IMAGE" >&2
