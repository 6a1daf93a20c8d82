"""Hostile input on /system: names that end in a newline, and JSON nested to exhaust the stack."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from platform_fixture import Platform, wait_for

JSON = {"Content-Type": "application/json"}

# Every /system route that reads a JSON body.
BODY_ROUTES = [
    ("POST", "/system/functions"),
    ("PUT", "/system/functions"),
    ("DELETE", "/system/functions"),
    ("POST", "/system/scale-function/nested"),
    ("POST", "/system/secrets"),
    ("PUT", "/system/secrets"),
    ("DELETE", "/system/secrets"),
    ("POST", "/system/queue/retry"),
]
DEPTH = 100_000


def test_function_name_with_trailing_newline_is_refused(shared_platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> None:
    p = shared_platform
    handler = p.write_function(tmp_path_factory.mktemp("newl"), "newl", "def handle(req):\n    return req\n")
    p.images.build("newl:latest", "python3-flask", handler)
    for method in ("POST", "PUT"):
        r = p.http.request(method, f"{p.url}/system/functions", json={"service": "newl\n", "image": "newl:latest"})
        assert r.status_code == 400, r.text
        assert "invalid function name" in r.text
    names = [f["name"] for f in p.http.get(f"{p.url}/system/functions").json()]
    assert not any(n.startswith("newl") for n in names)


def test_secret_name_with_trailing_newline_is_refused(shared_platform: Platform) -> None:
    p = shared_platform
    for method in ("POST", "PUT", "DELETE"):
        r = p.http.request(method, f"{p.url}/system/secrets", json={"name": "tok\n", "value": "v"})
        assert r.status_code == 400, (method, r.text)
        assert "invalid secret name" in r.text
    assert [s["name"] for s in p.http.get(f"{p.url}/system/secrets").json()] == []


@pytest.mark.parametrize("body", [
    b"[" * DEPTH + b"]" * DEPTH,
    b'{"a":' * DEPTH + b"1" + b"}" * DEPTH,
    b'{"service":' + b"[" * DEPTH + b"]" * DEPTH + b"}",
], ids=["arrays", "objects", "in-a-field"])
def test_deeply_nested_json_on_system_api_is_400(shared_platform: Platform, body: bytes) -> None:
    p = shared_platform
    for method, path in BODY_ROUTES:
        r = p.http.request(method, p.url + path, content=body, headers=JSON)
        assert r.status_code == 400, (method, path, r.status_code, r.text[:200])
        assert r.text == "invalid JSON: nested too deeply\n"
    assert p.http.get(f"{p.url}/healthz").text == "OK\n"


@pytest.mark.parametrize("env", [
    {"A=B": "c"},  # would set A to "B=c"
    {"A\0": "c"},
    {"": "x"},
    {"1A": "x"},
    {"A": "b\0c"},
], ids=["equals-in-name", "nul-in-name", "empty-name", "digit-first", "nul-in-value"])
def test_environment_names_and_values_that_cannot_be_an_environment_are_400(shared_platform: Platform,
                                                                          env: dict[str, str]) -> None:
    p = shared_platform
    for method in ("POST", "PUT"):
        r = p.http.request(method, f"{p.url}/system/functions", json={"service": "envbad", "image": "any:latest", "envVars": env})
        assert r.status_code == 400, (method, r.status_code, r.text)
        assert "environment variable" in r.text
    assert "envbad" not in [f["name"] for f in p.http.get(f"{p.url}/system/functions").json()]


@pytest.mark.parametrize("field, value", [
    ("envProcess", "python\0 index.py"),
    ("labels", {"team\0": "a"}),
    ("annotations", {"topic": "a\0b"}),
    ("constraints", ["node\0=x"]),
])
def test_a_nul_anywhere_in_a_deployment_is_400(shared_platform: Platform, field: str, value: object) -> None:
    p = shared_platform
    r = p.http.post(f"{p.url}/system/functions", json={"service": "nulbad", "image": "any:latest", field: value})
    assert r.status_code == 400, r.text
    assert field in r.text and "NUL" in r.text


@pytest.mark.parametrize("field, key", [
    ("annotations", "container.apparmor.security.beta.kubernetes.io/fn"),  # "unconfined" loosens the pod
    ("annotations", "seccomp.security.alpha.kubernetes.io/pod"),
    ("labels", "app.kubernetes.io/managed-by"),
    ("labels", "Node-Role.K8S.IO/master"),
])
def test_kubernetes_own_label_and_annotation_keys_are_400(shared_platform: Platform, field: str, key: str) -> None:
    p = shared_platform
    r = p.http.post(f"{p.url}/system/functions", json={"service": "k8sbad", "image": "any:latest", field: {key: "unconfined"}})
    assert r.status_code == 400, r.text
    assert field in r.text and "Kubernetes' own" in r.text


def test_the_environment_has_a_size_limit_below_what_a_replica_can_take(shared_platform: Platform,
                                                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    # 70 KB is refused with the limit named; 60 KB, under it, reaches the function whole (over
    # ~128 KiB a replica could not even start: "Argument list too long").
    p = shared_platform
    r = p.http.post(f"{p.url}/system/functions", json={"service": "bigenv", "image": "any:latest", "envVars": {"BIG": "x" * 70_000}})
    assert r.status_code == 400, r.text
    assert "at most 65536" in r.text
    handler = p.write_function(tmp_path_factory.mktemp("bigenv"), "bigenv",
                               "import os\n\ndef handle(req):\n    return str(len(os.environ['BIG']))\n")
    p.deploy("bigenv", handler, env={"BIG": "x" * 60_000})
    assert p.http.get(p.function_url("bigenv")).text == "60000"


def test_a_log_tail_larger_than_any_log_means_all_of_it(shared_platform: Platform,
                                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    p = shared_platform
    handler = p.write_function(tmp_path_factory.mktemp("tailfn"), "tailfn",
                               "import sys\n\ndef handle(req):\n    print('tail-marker', file=sys.stderr, flush=True)\n    return 'ok'\n")
    p.deploy("tailfn", handler)
    assert p.http.get(p.function_url("tailfn")).text == "ok"
    for tail in ("99999999999999999999", str(2**63)):
        def marked(tail: str = tail) -> bool:
            r = p.http.get(f"{p.url}/system/logs", params={"name": "tailfn", "tail": tail}, timeout=10)
            assert r.status_code == 200, r.text
            return "tail-marker" in r.text
        wait_for(marked, 20, what="the function's log line with a huge tail")


def test_a_system_body_past_its_limit_is_413_before_it_is_all_read(shared_platform: Platform) -> None:
    p = shared_platform
    big = b'{"name": "huge", "value": "' + b"x" * (17 * 1024 * 1024) + b'"}'
    r = p.http.post(f"{p.url}/system/secrets", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text[:200]
    assert "limit" in r.text and r.text.count("\n") <= 1

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds on what arrives
        yield b'{"name": "huge", "value": "'
        for _ in range(17):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    r = p.http.post(f"{p.url}/system/secrets", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text[:200]
    assert "huge" not in [s["name"] for s in p.http.get(f"{p.url}/system/secrets").json()]
