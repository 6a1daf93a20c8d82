"""Per-function virtual environments, cached by the hash of what goes into them.

A function's venv sees the platform's own packages (Flask and waitress come with streamfaas)
through a ``.pth`` line, so a function without extra requirements needs no pip run at all, and
one with them installs only what the platform lacks. A redeploy with unchanged requirements
reuses the venv as it is.

A function's requirements are untrusted input: ``pip install`` runs their build backends
(an sdist, a ``pkg @ https://…`` URL) and follows ``-r FILE``. So the install runs in the
function sandbox (``sandbox.build_install_spec``): as the function's own uid when the gateway is
root, seeing no home folder and no state directory, with the venv being built as its only
writable folder and an environment chosen here, never the gateway's. Afterwards the venv is
handed back to the platform's uid and opened up read-only for function uids. Lines that make
pip read local files are refused before pip starts, sandbox or not, and pip's own output goes
to the function's log only: an error never quotes it.

A build backend also prints what it likes and takes as long as it likes. The gateway reads the
install's output as it comes and keeps only its last ``BUILD_LOG_TAIL`` bytes; the log gets at most
``BUILD_LOG_MAX`` of it (its first and last lines), each line stamped and marked ``NAME[build]``.
The install gets ``PIP_TIMEOUT`` seconds (``STREAMFAAS_PIP_TIMEOUT``); past that, or when the
deploy is cancelled (its client went away), its whole process tree is killed and waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import stat
import sys
import sysconfig
import tempfile
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .._process import kill_group, proc_stat
from ..config import parse_duration
from ..errors import DeployError
from ..sandbox import build_install_spec, bwrap_path, function_uid, sandbox_command
from ..watchdog.function_process import bound_log, log_stamp, pidfd_exited
from .images import readable_by_all

# The operator's pip and proxy settings that reach pip; nothing else of the gateway's environment.
PIP_SETTINGS = (
    "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_TRUSTED_HOST", "PIP_CERT",
    "SSL_CERT_FILE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)
# Of those, the ones that may name local files or folders: bound read-only into the sandbox.
_LOCAL_SETTINGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CERT", "SSL_CERT_FILE")
_BUILDER = "streamfaas-venv-build"  # whose uid builds a venv when no function is named
# How long a venv's pip install (its requirements' build backends included) may take: one that
# hangs would hold its deploy forever. STREAMFAAS_PIP_TIMEOUT (a duration; 0: no limit) sets it.
PIP_TIMEOUT = 600.0
PIP_TIMEOUT_ENV = "STREAMFAAS_PIP_TIMEOUT"
# Of one build step's output, what the function's log gets: its first lines, up to BUILD_LOG_MAX
# less BUILD_LOG_TAIL bytes, a line saying what was cut, and its last BUILD_LOG_TAIL bytes (pip's
# error is at the end). The tail is all the gateway holds of it (at most _TAIL_LINES lines);
# a line longer than _LINE_MAX goes to the log in pieces.
BUILD_LOG_MAX = 1 << 20
BUILD_LOG_TAIL = 64 << 10
_TAIL_LINES = 2000
_LINE_MAX = 64 << 10
_READ_CHUNK = 64 << 10
_STOP_WAIT = 10.0  # seconds to wait for a killed install's processes to be gone
_SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"

# What a requirements line may hold (pip's requirements-file syntax, narrowed to what reads
# nothing local). Option lines: these options, exactly (no abbreviations), with these values.
_URL_OPTIONS = {"-i": "index", "--index-url": "index", "--extra-index-url": "index", "-f": "find-links",
                "--find-links": "find-links", "-e": "editable", "--editable": "editable"}
_VALUE_OPTIONS = {"--only-binary", "--no-binary", "--trusted-host", "--use-feature"}
_FLAG_OPTIONS = {"--no-index", "--pre", "--prefer-binary", "--require-hashes"}
_FILE_OPTIONS = {"-r", "--requirement", "-c", "--constraint"}
_REQUIREMENT_OPTIONS = {"--hash"}  # after a requirement, on its line
_REMOTE_SCHEMES = {"http", "https"}
_VCS_SCHEMES = {f"{vcs}+{remote}" for vcs in ("git", "hg", "svn", "bzr") for remote in ("http", "https", "ssh", "git", "svn")}
_ARCHIVES = (".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tar.lz", ".tlz")
_COMMENT = re.compile(r"(^|\s+)#.*$")  # pip's: a # starts a comment at the line start or after a space
_NOT_FOUND = re.compile(r"No matching distribution found for ([A-Za-z0-9][A-Za-z0-9._-]*)")


class RequirementsRefused(DeployError):
    """A function's requirements.txt holds a line that would make pip read a local file."""

    http_status = 400


def _platform_site_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def _meaningful(requirements: str) -> str:
    lines = (line.split("#", 1)[0].strip() for line in requirements.splitlines())
    return "\n".join(sorted(line for line in lines if line))


# ---- what pip may be asked --------------------------------------------------------------------
def _logical_lines(requirements: str) -> list[tuple[int, str]]:
    """(first line number, text) as pip reads them (``req_file.join_lines``, then
    ``ignore_comments``): a line ending in ``\\`` goes on in the next one, comments dropped."""
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, line in enumerate(requirements.removeprefix("\ufeff").splitlines(), 1):
        if not line.endswith("\\") or _COMMENT.match(line):
            if _COMMENT.match(line):
                line = " " + line
            out.append((start if pending else number, "".join([*pending, line])))
            pending = []
        else:
            if not pending:
                start = number
            pending.append(line.strip("\\"))
    if pending:
        out.append((start, "".join(pending)))
    lines = ((n, _COMMENT.sub("", text).strip()) for n, text in out)
    return [(n, text) for n, text in lines if text]


def _remote_url(value: str, *, vcs: bool) -> bool:
    """Whether ``value`` is a URL pip fetches over the network (never ``file:``)."""
    scheme = urlsplit(value).scheme.lower()
    return scheme in _REMOTE_SCHEMES or (vcs and scheme in _VCS_SCHEMES)


def _option_problem(name: str, value: str | None) -> str | None:
    if name in _FILE_OPTIONS:
        return f"{name} makes pip read a local file"
    if name in _URL_OPTIONS:
        kind = _URL_OPTIONS[name]
        if not value or not _remote_url(value, vcs=kind == "editable"):
            return f"{name} takes an http(s) URL here{' or a VCS URL' if kind == 'editable' else ''}, not a local path"
        return None
    if name in _VALUE_OPTIONS:
        return None if value else f"{name} needs a value"
    if name in _FLAG_OPTIONS:
        return None if value is None else f"{name} takes no value"
    return f"option {name} is not allowed in a function's requirements"


def _options_problem(text: str, allowed: set[str] | None) -> str | None:
    """The first refused option of an option string (pip parses it with shlex and optparse)."""
    try:
        tokens = shlex.split(text)
    except ValueError:
        return "unbalanced quotes"
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("-") or token == "-":
            return "a value without an option"
        value: str | None = None
        if token.startswith("--"):
            name, eq, glued = token.partition("=")
            if eq:
                value = glued
        else:  # -rFILE: a short option's value may be glued on
            name, glued = token[:2], token[2:]
            value = glued or None
        takes_value = name in _URL_OPTIONS or name in _VALUE_OPTIONS or name in _FILE_OPTIONS or name == "--hash"
        if takes_value and value is None:
            if i >= len(tokens):
                return f"{name} needs a value"
            value = tokens[i]
            i += 1
        if allowed is not None:
            if name in _FILE_OPTIONS:
                return f"{name} makes pip read a local file"
            if name not in allowed:
                return f"option {name} is not allowed after a requirement"
            continue
        problem = _option_problem(name, value)
        if problem:
            return problem
    return None


def _requirement_problem(text: str) -> str | None:
    """Why pip would read something local for this requirement (``name``, ``name @ URL``, a URL)."""
    if text.startswith(("/", "./", "../", "~", ".")) or "\\" in text:
        return "a local path"
    try:
        req = Requirement(text)
    except InvalidRequirement:
        url = text.split("; ", 1)[0].strip()  # pip splits a URL's marker off at "; "
        if _remote_url(url, vcs=True):
            return None
        if urlsplit(url).scheme.lower() == "file" or "/" in url:
            return "a local path or file: URL"
        return "not a requirement (use name, name==version, name @ https://…)"
    if req.url is not None:
        return None if _remote_url(req.url, vcs=True) else "a local path or file: URL"
    if req.name.lower().endswith(_ARCHIVES):  # pip takes "x.whl" for a file in its folder
        return "a local archive"
    return None


def check_requirements(requirements: str) -> list[str]:
    """The names of the requirements, or ``RequirementsRefused`` naming the first line that would
    make pip read a local file (``-r``, ``-c``, a path, ``file:``, a local ``-e`` or
    ``--find-links``). The message never quotes the line: a path in it may be a secret's."""
    names: list[str] = []
    for number, line in _logical_lines(requirements):
        if "${" in line:  # pip fills ${VAR} from its environment
            problem: str | None = "environment variables (${…}) are not expanded here"
        elif line.startswith("-"):
            problem = _options_problem(line, None)
        else:
            tokens = line.split(" ")  # pip's split: the requirement runs up to the first option
            at = next((k for k, t in enumerate(tokens) if t.startswith("-")), len(tokens))
            requirement, options = " ".join(tokens[:at]).strip(), " ".join(tokens[at:])
            problem = _requirement_problem(requirement) or (_options_problem(options, _REQUIREMENT_OPTIONS) if options else None)
            if problem is None:
                try:
                    names.append(canonicalize_name(Requirement(requirement).name))
                except InvalidRequirement:
                    pass
        if problem:
            raise RequirementsRefused(
                f"requirements.txt line {number} is refused: {problem}. A function's requirements may name "
                "packages (name==1.2, extras, markers), name @ https://… URLs and --index-url/--extra-index-url/"
                "--find-links https://…; local wheels go in the operator's PIP_FIND_LINKS folder"
            )
    return names


# ---- pip's environment and sandbox ------------------------------------------------------------
def _with_absolute_paths(value: str) -> tuple[str, list[str]]:
    """A pip setting (space-separated items) with its local paths made absolute (pip runs in the
    venv's folder), and those paths (files, folders, ``file:`` URLs' paths)."""
    items: list[str] = []
    local: list[str] = []
    for item in value.split():
        if item.startswith("file:"):
            local.append(os.path.abspath(unquote(urlsplit(item).path)))
        elif "://" not in item:
            item = os.path.abspath(os.path.expanduser(item))
            local.append(item)
        items.append(item)
    return " ".join(items), local


def pip_environment(environ: Mapping[str, str], home: str) -> tuple[dict[str, str], list[str]]:
    """pip's whole environment (``home`` its HOME and TMPDIR), and the local paths that the
    operator's settings name (a wheelhouse, certificates: bound read-only into the sandbox)."""
    env = {
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), _SYSTEM_PATH]),
        "HOME": home, "TMPDIR": home, "LANG": environ.get("LANG", "C.UTF-8"),
        # No pip.conf either, in any mode: pip's settings are the operator's variables below.
        "PIP_CONFIG_FILE": os.devnull, "PYTHONDONTWRITEBYTECODE": "1",
    }
    local: list[str] = []
    for key in PIP_SETTINGS:
        value = environ.get(key)
        if value is None:
            continue
        if key in _LOCAL_SETTINGS:
            value, paths = _with_absolute_paths(value)
            local += paths
        env[key] = value
    return env, local


def _own_tree(root: Path, uid: int, gid: int, *, lock: bool) -> None:
    """chown a tree (links themselves, never followed). ``lock``: also take write for group and
    others and setuid/setgid/sticky bits away, for a tree a function uid has written."""
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = os.path.join(folder, name)
            os.chown(path, uid, gid, follow_symlinks=False)
            if lock:
                mode = os.lstat(path).st_mode
                if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & 0o7022:
                    os.chmod(path, stat.S_IMODE(mode) & ~0o7022)
    os.chown(root, uid, gid)
    if lock:
        os.chmod(root, stat.S_IMODE(os.stat(root).st_mode) & ~0o7022)


def _mark_complete(venv: Path) -> None:
    """Mark a built venv. The folder was the install's to write (as the function's uid): a
    ``.complete`` already there, a link to /etc/nologin say, is refused, never followed as root."""
    try:
        os.close(os.open(venv / ".complete", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    except FileExistsError:
        raise DeployError("installing the requirements wrote the venv's own marker (.complete): refused") from None


def pip_timeout(environ: Mapping[str, str]) -> float | None:
    """Seconds a venv's pip install may take (``STREAMFAAS_PIP_TIMEOUT``, else ``PIP_TIMEOUT``);
    None: no limit. An invalid value is a ConfigError (the gateway does not start)."""
    raw = environ.get(PIP_TIMEOUT_ENV)
    seconds = PIP_TIMEOUT if raw is None else parse_duration(raw, name=PIP_TIMEOUT_ENV)
    return seconds or None


class VenvCache:
    def __init__(self, root: Path, *, sandbox: bool = True) -> None:
        self.root = root
        self._locks: dict[str, asyncio.Lock] = {}
        # pip runs sandboxed wherever bwrap works, even under --no-sandbox: its build backends
        # run the function author's code at deploy time, in the gateway's place.
        self.bwrap = bwrap_path() if sandbox else None
        self.install_timeout = pip_timeout(os.environ)  # seconds; None: no limit

    def key(self, requirements: str) -> str:
        h = hashlib.sha256()
        h.update(sys.version.encode() + b"\0" + sys.prefix.encode() + b"\0")
        h.update(_meaningful(requirements).encode())
        return h.hexdigest()[:24]

    async def ensure(self, requirements: str, log: Path | None = None, *, function: str | None = None) -> Path:
        """The venv for these requirements, built on first use; returns its folder.

        ``function`` names whose uid runs pip under a root gateway (without it, a builder uid
        of its own)."""
        check_requirements(requirements)
        key = self.key(requirements)
        final = self.root / key
        if (final / ".complete").exists():
            return final
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if (final / ".complete").exists():
                return final
            self.root.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.root))
            try:
                await self._build(work, requirements, log, function or _BUILDER)
                readable_by_all(work)  # a root platform's function uids run from it
                _mark_complete(work)
                if final.exists():
                    shutil.rmtree(final)
                os.replace(work, final)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
        return final

    async def _build(self, venv: Path, requirements: str, log: Path | None, function: str) -> None:
        await _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], log, what="venv", function=function)
        python = venv / "bin" / "python"
        purelib = await _capture([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
        site_line = "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in _platform_site_dirs())
        Path(purelib.strip(), "_streamfaas_platform.pth").write_text(site_line + "\n")
        if not _meaningful(requirements):
            return
        req = venv / "requirements.txt"
        req.write_text(requirements)
        # The venv's own python: pip comes from the platform's site-packages through the .pth
        # line, and the platform's interpreter may be a link the sandbox does not show.
        argv = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q", "-r", str(req)]
        failed = f"pip install failed for function {function!r}: see `streamfaas logs {function}`"
        timeout = self.install_timeout
        try:
            if self.bwrap is None:
                with tempfile.TemporaryDirectory(prefix="streamfaas-pip-") as home:
                    env, _ = pip_environment(os.environ, home)
                    err = await _run(argv, log, what="pip", function=function, env=env, cwd=str(venv), check=False,
                                     timeout=timeout)
            else:
                env, local = pip_environment(os.environ, "/tmp")
                uid = function_uid(function) if os.geteuid() == 0 else None
                spec = build_install_spec(bwrap=self.bwrap, venv_dir=venv, read_only=local, uid=uid)
                command, fds = sandbox_command(spec, argv, env)
                if uid is not None:
                    _own_tree(venv, uid, uid, lock=False)  # the only folder it may write
                try:
                    err = await _run(command, log, what="pip", function=function, env={}, cwd="/", check=False,
                                     pass_fds=fds, timeout=timeout)
                finally:
                    for fd in fds:
                        os.close(fd)
                    if uid is not None:  # the platform's again; function uids read it, none writes it
                        _own_tree(venv, os.geteuid(), os.getegid(), lock=True)
        except TimeoutError:
            if timeout is None:
                raise
            raise DeployError(f"installing requirements.txt took over {timeout:g} s: function {function!r} was not "
                              f"deployed, the install was stopped (see `streamfaas logs {function}`)") from None
        if err is not None:
            missing = _NOT_FOUND.search(err)
            names = check_requirements(requirements)
            if missing and canonicalize_name(missing.group(1)) in names:  # only a name the text holds
                failed += f" (no matching distribution found for {canonicalize_name(missing.group(1))})"
            raise DeployError(failed)


class _BuildOutput:
    """A build step's output as it comes, into the function's log: each line stamped and marked
    ``NAME[build] STEP:`` (so none passes for a replica's line), its first lines as they come, up
    to ``BUILD_LOG_MAX - BUILD_LOG_TAIL`` bytes, then, at ``close``, a line saying how much was cut
    and the last lines, held back until then. Only that tail stays in memory."""

    def __init__(self, log: BinaryIO | None, prefix: bytes) -> None:
        self.log = log
        self.prefix = prefix
        self.partial = b""
        self.written = 0  # bytes written to the log
        self.holding = False  # the head is full: lines are held back for the end
        self.cut = 0  # bytes of output dropped
        self.tail: deque[tuple[bytes, bytes, bool]] = deque()  # (stamp, line, written to the log)
        self.tail_bytes = 0

    def feed(self, data: bytes) -> None:
        *lines, self.partial = (self.partial + data).split(b"\n")
        if len(self.partial) > _LINE_MAX:  # a line without end: it goes in pieces
            lines.append(self.partial)
            self.partial = b""
        stamp = _stamp()
        for line in lines:
            self._line(stamp, line)
        if self.log is not None:
            self.log.flush()  # `streamfaas logs -f` shows the build as it goes

    def _line(self, stamp: bytes, line: bytes) -> None:
        entry = stamp + self.prefix + line + b"\n"
        self.holding = self.holding or self.written + len(entry) > BUILD_LOG_MAX - BUILD_LOG_TAIL
        if self.log is not None and not self.holding:
            self.log.write(entry)
            self.written += len(entry)
        self.tail.append((stamp, line, not self.holding))
        self.tail_bytes += len(entry)
        while self.tail_bytes > BUILD_LOG_TAIL or len(self.tail) > _TAIL_LINES:
            old_stamp, old, was_written = self.tail.popleft()
            size = len(old_stamp) + len(self.prefix) + len(old) + 1
            self.tail_bytes -= size
            if not was_written:
                self.cut += len(old) + 1

    def text(self) -> str:
        """The end of the output (for the caller to look at, never to quote)."""
        return b"\n".join([*(line for _, line, _ in self.tail), self.partial]).decode(errors="replace")

    def close(self) -> None:
        if self.partial:
            self._line(_stamp(), self.partial)
            self.partial = b""
        if self.log is None:
            return
        held = [(stamp, line) for stamp, line, written in self.tail if not written]
        if self.cut:
            stamp = held[0][0] if held else _stamp()
            self.log.write(stamp + self.prefix + b"[output cut: %d bytes of it were dropped here; the log keeps "
                           b"its first and last lines, at most %d bytes]\n" % (self.cut, BUILD_LOG_MAX))
        self.log.write(b"".join(stamp + self.prefix + line + b"\n" for stamp, line in held))
        self.log.flush()
        bound_log(self.log.fileno())  # the whole file, over deploys too: the cap replicas' output has


def _stamp() -> bytes:
    return log_stamp() + b" "


async def _run(argv: list[str], log: Path | None, *, what: str, function: str, env: Mapping[str, str] | None = None,
               cwd: str | None = None, check: bool = True, pass_fds: tuple[int, ...] | list[int] = (),
               timeout: float | None = None) -> str | None:
    """Run a step of a venv build, its output (stdout and stderr) going to the function's log as
    it comes (``_BuildOutput``). On failure: the end of its output (for the caller to look at,
    never to quote) when ``check`` is false, else a DeployError that quotes none of it. Past
    ``timeout`` seconds: TimeoutError. Timed out or cancelled, its whole process tree is killed
    and waited for first."""
    out = open(log, "ab") if log else None  # noqa: SIM115 - closed below
    try:
        output = _BuildOutput(out, f"{function}[build] {what}: ".encode())
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=cwd,
            pass_fds=tuple(pass_fds),
            start_new_session=True,  # its own process group: kill_group reaches all of it
        )
        try:
            async with asyncio.timeout(timeout):
                assert proc.stdout is not None
                while data := await proc.stdout.read(_READ_CHUNK):
                    output.feed(data)
                await proc.wait()
        finally:
            if proc.returncode is None:  # timed out, or the deploy was cancelled: no orphan
                await _stop(proc)
            output.close()
    finally:
        if out:
            out.close()
    if proc.returncode == 0:
        return None
    if check:
        raise DeployError(f"{what} failed (exit {proc.returncode}); its output is in the function's log")
    return output.text()


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below ``pid``, from /proc."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        fields = proc_stat(entry) if entry.isdigit() else None
        if fields is not None:  # field 4 the parent, field 22 the start time
            children.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    out: list[tuple[int, str]] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def _start_time(pid: int) -> str | None:
    fields = proc_stat(pid)
    return None if fields is None else fields[19]


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """Kill a build step's whole process tree and wait until it is gone: its process group (it
    has its own session), and every process below it, in another session or not (the sandbox's
    init takes its PID namespace down with it); then reap it. The signals go out before the first
    await, so a second cancellation cannot stop them."""
    pidfds: list[int] = []
    for pid, started in _descendants(proc.pid):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        if _start_time(pid) == started:  # the same process, not one that took its pid since
            pidfds.append(fd)
        else:
            os.close(fd)
    kill_group(proc.pid, signal.SIGKILL)
    for fd in pidfds:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    try:
        async with asyncio.timeout(_STOP_WAIT):
            await proc.wait()
            for fd in pidfds:
                await pidfd_exited(fd)
    except TimeoutError:
        print(f"streamfaas: a stopped venv build (pid {proc.pid}) has processes that did not exit within "
              f"{_STOP_WAIT:g}s", file=sys.stderr, flush=True)
    finally:
        for fd in pidfds:
            os.close(fd)


async def _capture(argv: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise DeployError(f"venv check failed: {err.decode(errors='replace').strip()}")
    return out.decode()
