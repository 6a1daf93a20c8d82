"""A cloned project's files are untrusted input to the CLI and the gateway: links back up the
function folder, FIFOs, huge sparse files, NUL in stack.yaml's paths, overlong image names, a
handler inside build/, a planted link where `new` or `template store pull` writes, a
requirements.txt that is not UTF-8. Each ends in one line and a non-zero exit (a 400 from the
gateway): never a traceback, a copy that fills the disk, or a file written through the link."""

from __future__ import annotations

import os
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from platform_fixture import Platform, streamfaas_cmd
from streamfaas.provider.images import ImageStore

HANDLER = "def handle(req):\n    return 'ok'\n"


def _project(root: Path, *, handler: str = "./fn", image: str = "fn:latest", extra: str = "", make: bool = True) -> Path:
    """A stack.yaml with one function, and (``make``) its handler folder."""
    root.mkdir(parents=True, exist_ok=True)
    if make:
        (root / handler).mkdir(parents=True, exist_ok=True)
        (root / handler / "handler.py").write_text(HANDLER)
    stack = root / "stack.yaml"
    stack.write_text(
        f'version: 1.0\nfunctions:\n  fn:\n    lang: python3-flask\n    handler: "{handler}"\n    image: {image}\n{extra}'
    )
    return stack


def _cli(state: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMFAAS_STATE_DIR": str(state)}
    return subprocess.run(streamfaas_cmd(*args), capture_output=True, text=True, env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL, timeout=120)


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state directory, so `build --shrinkwrap` makes its wheels once for the module."""
    return tmp_path_factory.mktemp("state")


@pytest.mark.parametrize(
    ("links", "named"),
    [
        ({"a": "."}, {"fn/a"}),
        ({"a": ".", "b": "."}, {"fn/a"}),  # each copy holds two more: the disk fills
        ({"sub/up": ".."}, {"fn/sub/up"}),
        ({"a/x": "../b", "b/y": "../a"}, {"fn/a/x", "fn/b/y"}),  # neither is above its link, yet the copy loops
    ],
)
@pytest.mark.parametrize("build", [("build",), ("build", "--shrinkwrap")])
def test_a_link_to_the_function_folder_or_above_is_refused_naming_it(
        state: Path, tmp_path: Path, links: dict[str, str], named: set[str], build: tuple[str, ...]) -> None:
    stack = _project(tmp_path)
    for link, target in links.items():
        (tmp_path / "fn" / link).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fn" / link).symlink_to(target, target_is_directory=True)
    line = _one_error_line(_cli(state, *build, "-f", str(stack)))
    assert any(f"{tmp_path / link}: a symlink to" in line for link in named) and "never end" in line, line
    assert not (tmp_path / "build" / "fn").exists()


def test_links_that_double_at_each_level_are_refused_before_the_copy(tmp_path: Path) -> None:
    stack = _project(tmp_path)
    levels = 20  # d0/{a,b} -> d1, d1/{a,b} -> d2 …: a million folders from 40 links, no loop among them
    for level in range(levels):
        (tmp_path / "fn" / f"d{level}").mkdir()
        for link in ("a", "b"):
            (tmp_path / "fn" / f"d{level}" / link).symlink_to(f"../d{level + 1}", target_is_directory=True)
    (tmp_path / "fn" / f"d{levels}").mkdir()
    line = _one_error_line(_cli(tmp_path / "state", "build", "-f", str(stack)))
    assert "more than 100000 files and folders, counting what its links lead to" in line, line


def test_links_inside_the_function_folder_still_build(state: Path, tmp_path: Path) -> None:
    stack = _project(tmp_path)
    (tmp_path / "fn" / "data").mkdir()
    (tmp_path / "fn" / "data" / "words.txt").write_text("inside")
    (tmp_path / "fn" / "shared").symlink_to("data", target_is_directory=True)
    (tmp_path / "fn" / "sub").mkdir()
    (tmp_path / "fn" / "sub" / "words.txt").symlink_to("../data/words.txt")
    for build in (("build",), ("build", "--shrinkwrap")):
        done = _cli(state, *build, "-f", str(stack))
        assert done.returncode == 0, done.stderr
    copied = tmp_path / "build" / "fn" / "function"
    assert (copied / "shared" / "words.txt").read_text() == (copied / "sub" / "words.txt").read_text() == "inside"


@pytest.mark.parametrize("build", [("build",), ("build", "--shrinkwrap")])
def test_a_fifo_or_a_link_to_nothing_in_the_function_folder_is_refused_naming_it(
        state: Path, tmp_path: Path, build: tuple[str, ...]) -> None:
    stack = _project(tmp_path)
    os.mkfifo(tmp_path / "fn" / "pipe")
    line = _one_error_line(_cli(state, *build, "-f", str(stack)))
    assert f"{tmp_path / 'fn' / 'pipe'}: not a regular file or folder" in line, line
    (tmp_path / "fn" / "pipe").unlink()
    (tmp_path / "fn" / "gone").symlink_to("missing.txt")
    line = _one_error_line(_cli(state, *build, "-f", str(stack)))
    assert f"{tmp_path / 'fn' / 'gone'}: a symlink that leads to no file" in line, line


def test_a_large_sparse_file_is_hashed_in_pieces_not_read_whole(tmp_path: Path) -> None:
    handler = tmp_path / "fn"
    handler.mkdir()
    (handler / "handler.py").write_text(HANDLER)
    with open(handler / "sparse.bin", "wb") as f:
        f.truncate(64 << 20)  # 64 MiB of hole: a handler's 400 MB one once cost the CLI 400 MB
    tracemalloc.start()
    try:
        ImageStore(tmp_path / "images").build("sparse:latest", "python3-flask", handler)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak


@pytest.mark.parametrize(
    ("handler", "extra", "key"),
    [
        ("./fn\\0x", "", "functions.fn.handler"),
        ("./fn", '    environment_file: ["env\\0.yml"]\n', "functions.fn.environment_file[0]"),
        ("./fn\\nx", "", "functions.fn.handler"),
    ],
)
def test_control_characters_in_stack_paths_are_one_line_naming_the_key(
        tmp_path: Path, handler: str, extra: str, key: str) -> None:
    (tmp_path / "fn").mkdir()
    stack = _project(tmp_path, handler=handler, extra=extra, make=False)
    line = _one_error_line(_cli(tmp_path / "state", "build", "-f", str(stack)))
    assert line.startswith(f"Error: {stack}:") and f": {key}: a path holds no control characters" in line, line


def test_an_overlong_image_name_is_one_line_and_a_long_legal_one_builds(tmp_path: Path) -> None:
    stack = _project(tmp_path / "long", image="a" * 300)
    line = _one_error_line(_cli(tmp_path / "state", "build", "-f", str(stack)))
    assert "is 300 characters long" in line, line
    # 243 characters, more than its tag file's quoted name (each "/" is "%2F") could hold.
    legal = "registry.example.com/" + "/".join(["team"] * 44) + ":v1"
    stack = _project(tmp_path / "legal", image=legal)
    done = _cli(tmp_path / "state", "build", "-f", str(stack))
    assert done.returncode == 0, done.stderr
    assert ImageStore(tmp_path / "state" / "images").resolve(legal).image == legal


@pytest.mark.parametrize("handler", ["./build", "./build/fn"])
def test_a_handler_inside_the_build_output_is_refused_and_kept(state: Path, tmp_path: Path, handler: str) -> None:
    stack = _project(tmp_path, handler=handler)
    line = _one_error_line(_cli(state, "build", "--shrinkwrap", "-f", str(stack)))
    assert "is in the build output folder" in line, line
    assert (tmp_path / handler / "handler.py").read_text() == HANDLER
    assert not (tmp_path / handler / "fn" / "function").exists()


@pytest.mark.parametrize("args", [("greet",), ("greet", "--handler", "linked/greet")])
def test_new_over_a_dangling_link_is_one_line_and_leaves_stack_yaml_as_it_was(
        tmp_path: Path, args: tuple[str, ...]) -> None:
    project = tmp_path / "project"
    project.mkdir()
    stack = project / "stack.yaml"
    stack.write_text("version: 1.0\nfunctions: {}\n")
    (project / "greet").symlink_to(tmp_path / "elsewhere")
    (project / "linked").symlink_to(tmp_path / "nowhere")
    line = _one_error_line(_cli(tmp_path / "state", "new", *args, "--lang", "python3-flask", cwd=project))
    assert "greet" in line or "linked" in line, line
    assert stack.read_text() == "version: 1.0\nfunctions: {}\n"
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "nowhere").exists()


def test_template_store_pull_writes_nothing_through_a_linked_template_folder(tmp_path: Path) -> None:
    project, victim = tmp_path / "project", tmp_path / "victim"
    project.mkdir()
    victim.mkdir()
    (project / "template").symlink_to(victim, target_is_directory=True)
    line = _one_error_line(_cli(tmp_path / "state", "template", "store", "pull", "python3-flask", cwd=project))
    assert "template is a link" in line, line
    assert list(victim.iterdir()) == []
    (project / "template").unlink()
    done = _cli(tmp_path / "state", "template", "store", "pull", "python3-flask", cwd=project)
    assert done.returncode == 0, done.stderr
    assert (project / "template" / "python3-flask" / "template.yml").is_file()


def test_a_requirements_txt_that_is_not_utf8_is_a_400_saying_so(platform: Platform, tmp_path: Path) -> None:
    handler = platform.write_function(tmp_path, "latin", HANDLER)
    (handler / "requirements.txt").write_bytes(b"# caf\xe9\nflask\n")
    platform.images.build("latin:latest", "python3-flask", handler)
    r = platform.http.post(f"{platform.url}/system/functions", json={"service": "latin", "image": "latin:latest"})
    assert r.status_code == 400, (r.status_code, r.text)
    assert "requirements.txt is not UTF-8 text" in r.text and "Traceback" not in r.text
    assert "\n" not in r.text.strip()
    assert platform.http.get(f"{platform.url}/system/function/latin").status_code == 404
