#!/usr/bin/env bash
# Build the platform's own images with buildah and, with --registry, push them there:
#   streamfaas        the gateway and the queue worker (images/streamfaas/Dockerfile)
#   streamfaas-nats   NATS JetStream for the async queue (images/nats/Dockerfile)
# both FROM the Debian bookworm base of scripts/oci-base-image.sh (built first, cached).
#
#   scripts/platform-images.sh [--registry HOST[:PORT]] [--tls-verify|--no-tls-verify]
#
# Each image is tagged with a hash of what went into it (its Dockerfile, its base image, and
# for streamfaas the wheels of this checkout), so a changed checkout gets a new tag that a node
# pulls anew, and an unchanged one is not built again (its push then sends no layer). With --registry both
# are also tagged with the chart's appVersion (streamfaas's version). Prints one line per
# image, `streamfaas=REF` and `nats=REF` (REF: the content-tagged reference to give the chart).
#
# Environment: STREAMFAAS_BASE_IMAGE, STREAMFAAS_OCI_CACHE, STREAMFAAS_BUILDAH_ROOT as for
# scripts/oci-base-image.sh; the wheels are cached in $STREAMFAAS_OCI_CACHE/wheelhouse.
# Needs root (buildah's chroot isolation), buildah, and the project's venv.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
BASE=${STREAMFAAS_BASE_IMAGE:-localhost/streamfaas-pybase:bookworm}
CACHE=${STREAMFAAS_OCI_CACHE:-/var/cache/streamfaas-k8s}

registry=""
tls=""
while [ $# -gt 0 ]; do
  case "$1" in
    --registry) [ $# -ge 2 ] && [ -n "$2" ] || { echo "platform-images.sh: --registry needs HOST[:PORT]" >&2; exit 2; }
                registry=${2%/}; shift 2 ;;
    --registry=*) registry=${1#--registry=}; registry=${registry%/}; shift ;;
    --tls-verify) tls=true; shift ;;
    --no-tls-verify) tls=false; shift ;;
    *) echo "platform-images.sh: unknown argument $1 (usage: [--registry HOST[:PORT]] [--tls-verify|--no-tls-verify])" >&2; exit 2 ;;
  esac
done
case "$registry" in
  *://*|*" "*) echo "platform-images.sh: --registry takes HOST[:PORT] (no scheme), not $registry" >&2; exit 2 ;;
esac

command -v buildah >/dev/null 2>&1 || { echo "platform-images.sh: buildah is missing (apt-get install buildah)" >&2; exit 1; }
[ -x "$PYTHON" ] || { echo "platform-images.sh: no venv python at $PYTHON (make setup, or set PYTHON)" >&2; exit 1; }
storage=()
if [ -n "${STREAMFAAS_BUILDAH_ROOT:-}" ]; then
  storage=(--storage-driver vfs --root "$STREAMFAAS_BUILDAH_ROOT/root" --runroot "$STREAMFAAS_BUILDAH_ROOT/runroot")
fi
bah() { buildah "${storage[@]}" "$@"; }

# Only errors and the image lines: the base image script's progress goes to stderr already.
bash "$REPO/scripts/oci-base-image.sh" >&2
base_id=$(bah inspect --type image --format '{{.FromImageID}}' "$BASE")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The streamfaas context: its Dockerfile and the wheels (streamfaas with the extras the gateway
# needs in a cluster, and every dependency), then a tag from the hash of all of it and the base.
mkdir -p "$work/streamfaas/wheels"
cp "$REPO/images/streamfaas/Dockerfile" "$work/streamfaas/Dockerfile"
"$PYTHON" - "$CACHE/wheelhouse" "$work/streamfaas/wheels" <<'EOF'
import shutil, sys
from pathlib import Path

from streamfaas._wheelhouse import WheelError, collect_wheels

EXTRAS = ("kubernetes", "nats")  # the kubernetes provider and the NATS queue
cache, dest = Path(sys.argv[1]), Path(sys.argv[2])
try:
    wheels = collect_wheels(cache, EXTRAS)
except WheelError as exc:
    sys.exit(f"platform-images.sh: {exc}")
for wheel in wheels:
    shutil.copy2(wheel, dest / wheel.name)
EOF

version=$("$PYTHON" -c 'from importlib.metadata import version; print(version("streamfaas"))')
tag_of() {  # a content tag: the hash of a context folder's files and the base image's id
  (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; echo "$base_id") | sha256sum | cut -c1-12
}
mkdir -p "$work/nats"
cp "$REPO/images/nats/Dockerfile" "$work/nats/Dockerfile"

verify() {  # --tls-verify as asked; else HTTPS for every registry but a loopback one
  if [ -n "$tls" ]; then echo "$tls"; return; fi
  case "${registry%:*}" in localhost|127.*|\[::1\]) echo false ;; *) echo true ;; esac
}

for name in streamfaas nats; do
  repo=$([ "$name" = nats ] && echo streamfaas-nats || echo streamfaas)
  tag=$(tag_of "$work/$name")
  local_ref=localhost/$repo:$tag
  if ! bah inspect --type image "$local_ref" >/dev/null 2>&1; then
    echo "platform-images.sh: building $local_ref …" >&2
    # No --layers: the tag already caches the whole image, and buildah 1.28 would reuse a RUN
    # layer whose bind-mounted wheels changed (the mount's content is not part of its cache key).
    if ! bah bud --isolation chroot --quiet --build-arg "BASE_IMAGE=$BASE" -t "$local_ref" \
         -f "$work/$name/Dockerfile" "$work/$name" >"$work/$name.log" 2>&1; then
      tail -n 20 "$work/$name.log" >&2
      echo "platform-images.sh: building $local_ref failed" >&2
      exit 1
    fi
    # Older builds of this image (other content tags) go, so a checkout that changes often does
    # not fill buildah's storage; one in use by a container stays.
    bah images --format '{{.Name}}:{{.Tag}}' | grep "^localhost/$repo:" | grep -vxF "$local_ref" \
      | while read -r old; do bah rmi "$old" >/dev/null 2>&1 || true; done || true
  fi
  ref=$local_ref
  if [ -n "$registry" ]; then
    ref=$registry/$repo:$tag
    for dest in "$ref" "$registry/$repo:$version"; do
      if ! bah push --quiet --tls-verify="$(verify)" "$local_ref" "docker://$dest" >"$work/push.log" 2>&1; then
        echo "platform-images.sh: pushing $dest failed: $(grep -m1 -i error "$work/push.log" || tail -n1 "$work/push.log")" >&2
        exit 1
      fi
    done
  fi
  echo "$name=$ref"
done
