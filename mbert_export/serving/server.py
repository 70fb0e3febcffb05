"""Start and stop a local tritonserver on a model repository (the one on PATH, or the one in nvidia-pytriton).

    with start_server("repo", python_env="/opt/triton-venv") as server:
        print(server.http_url, server.grpc_url)

`python_env` is the virtual environment whose Python runs the python-backend models (it needs
numpy < 2 for tritonserver 2.51's stub, tokenizers, and onnxruntime or openvino: the runtime the
models name); default: $MBERT_TRITON_ENV,
else this interpreter's environment. The server is nvidia-pytriton's from a named environment, else
`tritonserver` on PATH, else nvidia-pytriton's from this one. With nvidia-pytriton's bundled server (python backend only) a
private backend folder is made with COPIES of its python backend and the stub for that env's Python
(symlinks are refused as escaping the backend directory), and its bundled libraries go on
LD_LIBRARY_PATH (the copied stub loses its RPATH). The server binds to 127.0.0.1 unless told
otherwise, runs in its own process group, and `stop()` ends it and its model processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.artifact import is_int_between

__all__ = ["TritonServer", "start_server", "find_tritonserver", "free_port", "make_workdir", "ServerError",
           "ENV_VARIABLE"]

#: Environment variable naming the server/model virtual environment.
ENV_VARIABLE = "MBERT_TRITON_ENV"


class ServerError(RuntimeError):
    """tritonserver could not be found, started, or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


#: In each work folder: who made it (host, PID namespace, PID and the process's start time), so that a
#: later start on the same host and namespace can remove the folders of processes that died without
#: cleaning up (SIGKILL). A folder whose owner cannot be told apart from a live one is kept.
OWNER_FILE = "owner"


def _process_identity(pid: int) -> str | None:
    """host, PID namespace, PID and start time of a live process; None when there is no such process."""
    try:
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]  # field 22: starttime
        namespace = os.readlink("/proc/self/ns/pid")
    except (OSError, IndexError):
        return None
    return f"{socket.gethostname()} {namespace} {pid} {start}"


def make_workdir(prefix: str = "mbert-triton-") -> Path:
    """A new temp folder (the caller removes it), after removing those of `prefix` whose owner died."""
    me = _process_identity(os.getpid()) or "unknown"
    here = me.split()[:2]  # this host and PID namespace
    for folder in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            owner = (folder / OWNER_FILE).read_text().split()
        except OSError:  # no owner file (an older version, or still being made) or another user's folder
            continue
        if len(here) == 2 and len(owner) == 4 and owner[:2] == here and owner[2].isdigit():
            if _process_identity(int(owner[2])) != " ".join(owner):  # that process is gone (or its PID reused)
                shutil.rmtree(folder, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    (folder / OWNER_FILE).write_text(me + "\n")
    return folder


def _site_packages(env: Path) -> list[Path]:
    return sorted(env.glob("lib/python3*/site-packages"))


@dataclass
class ServerInstall:
    """Where a tritonserver binary is and what it needs to run python models from `env`."""

    binary: Path
    #: The bundled backends folder (nvidia-pytriton), None for a full install (its own default).
    pytriton_root: Path | None
    python_version: str
    library_dirs: list[Path] = field(default_factory=list)


def find_tritonserver(python_env: str | os.PathLike | None = None) -> tuple[ServerInstall, Path]:
    """(the tritonserver to run, the model environment). With a model environment named (argument or
    $MBERT_TRITON_ENV), the nvidia-pytriton server installed there comes first; else `tritonserver`
    on PATH (NVIDIA's container), else nvidia-pytriton in this interpreter's environment."""
    named = python_env or os.environ.get(ENV_VARIABLE)
    env = Path(named or sys.prefix).resolve()
    if not (env / "bin" / "python").exists():
        raise ServerError(f"{env} is not a Python environment (no bin/python); pass the server venv "
                          f"(python_env=... / --python-env / ${ENV_VARIABLE})")

    def bundled() -> ServerInstall | None:
        for site in _site_packages(env):
            root = site / "pytriton" / "tritonserver"
            if (root / "bin" / "tritonserver").is_file():
                version = site.parent.name.removeprefix("python")
                return ServerInstall(root / "bin" / "tritonserver", root, version,
                                     [p for p in (site / "nvidia_pytriton.libs",) if p.is_dir()])
        return None

    on_path = shutil.which("tritonserver")
    found = bundled() if named or not on_path else None
    if found is not None:
        return found, env
    if on_path:
        version = _site_packages(env)[0].parent.name.removeprefix("python") if _site_packages(env) else ""
        return ServerInstall(Path(on_path), None, version), env
    raise ServerError(f"no tritonserver found: none on PATH and no nvidia-pytriton in {env}; make a server venv "
                      f"(pip install --no-deps nvidia-pytriton==0.7.0 && pip install 'numpy<2' tokenizers onnxruntime) "
                      f"and pass it (--python-env / ${ENV_VARIABLE}), or run in NVIDIA's tritonserver container")


def _backend_dir(install: ServerInstall, workdir: Path) -> Path:
    """A backend folder with copies of nvidia-pytriton's python backend and the stub for the env's Python."""
    source = install.pytriton_root
    stub = source / "python_backend_stubs" / install.python_version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (source / "python_backend_stubs").iterdir())
        raise ServerError(f"nvidia-pytriton has no python backend stub for Python {install.python_version} "
                          f"(has {', '.join(have)})")
    target = workdir / "backends" / "python"
    target.mkdir(parents=True)
    for src in (source / "backends" / "python" / "libtriton_python.so",
                source / "backends" / "python" / "triton_python_backend_utils.py", stub):
        shutil.copy2(src, target / src.name)
    return workdir / "backends"


#: What the python models import for each runtime (module -> pip requirement).
RUNTIME_MODULES = {"onnxruntime": {"onnxruntime": "onnxruntime"},
                   "openvino": {"openvino": "openvino>=2026.4,<2027"},
                   "tensorrt": {"tensorrt": "tensorrt", "cuda": "cuda-python"}}
#: Without tritonclient to read the configs: what the python models need at least (the old check).
DEFAULT_MODULES = {"tokenizers": "tokenizers", **RUNTIME_MODULES["onnxruntime"]}


def _python_model_imports(repository: Path) -> dict[str, str]:
    """module -> pip requirement of what the python models of `repository` import besides numpy:
    tokenizers, and the runtime each python-layout model names in its "backend" parameter (as
    `RuntimeModel.load` reads it: anything else is ONNX Runtime)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2  # noqa: F401 - what parse_config needs

        from .repository import parse_config
    except ImportError:  # no tritonclient here: check what any repository needs
        return dict(DEFAULT_MODULES)
    needs = {"tokenizers": "tokenizers"}
    for config_file in sorted(repository.glob("*/config.pbtxt")):
        try:
            config = parse_config(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, text_format.ParseError):
            continue  # tritonserver refuses that model itself, naming its config
        if config.backend == "python" and "backend" in config.parameters:
            runtime = config.parameters["backend"].string_value
            needs.update(RUNTIME_MODULES.get(runtime, RUNTIME_MODULES["onnxruntime"]))
    return needs


def _check_model_env(env: Path, modules: dict[str, str]) -> None:
    """Refuse a model environment the 2.51 python stub cannot serve (numpy >= 2 crashes it on the first
    string input) or that lacks `modules` (module -> pip requirement), which the python models import;
    every missing module is named at once, with the pip command that installs them."""
    modules = {"numpy": "numpy<2", **modules}
    probe = ("import importlib.util\n"
             f"missing = [m for m in {sorted(modules)!r} if importlib.util.find_spec(m) is None]\n"
             "print(','.join(missing))\n"
             "if 'numpy' not in missing:\n"
             "    import numpy\n"
             "    print(numpy.__version__)\n")
    try:
        out = subprocess.run([str(env / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerError(f"cannot run the Python of {env}: {exc}") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise ServerError(f"the Python of {env} fails to start or to import numpy ({last}); make it a fresh venv "
                          "as the README's serving section shows")
    missing, version = (out.stdout.splitlines() + ["", ""])[:2]
    if missing:
        install = " ".join(f"'{modules[m]}'" if any(c in modules[m] for c in "<>=") else modules[m]
                           for m in missing.split(","))
        raise ServerError(f"{env} lacks {missing.replace(',', ', ')}, which the python models import: "
                          f"{env / 'bin' / 'pip'} install {install}")
    if int(version.split(".")[0]) >= 2:
        raise ServerError(f"{env} has numpy {version}: tritonserver 2.51's python stub crashes on string inputs "
                          "with numpy 2; install numpy<2 there (a venv of its own)")


def _check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Refuse a port another process listens on now, rather than after the server's start fails on it."""
    for option, port in ports.items():
        if port:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with contextlib.closing(socket.socket(family, socket.SOCK_STREAM)) as s:
                # as tritonserver binds: a port still in TIME_WAIT after a stop is free, a listened one is not
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((host, port))
                except OSError as exc:
                    raise ServerError(f"port {port} on {host} is not free ({exc.strerror}); choose another "
                                      f"{option}, or 0 for a free one") from None


class TritonServer:
    """A running tritonserver process (its own process group); a context manager that stops it."""

    def __init__(self, process: subprocess.Popen, http_port: int, grpc_port: int, metrics_port: int, host: str,
                 workdir: Path, log_path: Path, owns_workdir: bool):
        self.process, self.host = process, host
        self.killed = False  # stop() had to SIGKILL it (it did not end within its timeout)
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.workdir, self.log_path, self._owns_workdir = workdir, log_path, owns_workdir

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def log(self, tail: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])
        except OSError:
            return ""

    def load_failures(self) -> list[str]:
        """One line per model the server failed to load, from the model table of its log (ensembles: from
        the line that refuses them), and the socket it could not bind (another process took the port
        after the start checked it)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        taken = re.findall(r"Socket '([^']+)' already in use", text)
        failures, reason = [], None
        for line in text.splitlines():
            row = re.match(r"\|\s*(\S+)\s*\|\s*(\d+)\s*\|\s*UNAVAILABLE:\s*(.*?)\s*\|\s*$", line)
            more = re.match(r"\|\s*\|\s*\|\s*(.*?)\s*\|\s*$", line)
            if row:
                reason = [f"model {row[1]!r} (version {row[2]}) failed to load: {row[3]}"]
                failures.append(reason)
            elif reason and more and more[1] and more[1] != "At:":  # a long reason goes on in the next rows
                reason.append(more[1])
            else:  # a blank cell, the traceback's "At:" or the table's end closes the reason
                reason = None
        # An ensemble Triton refuses while checking its steps is not in the table, only in a log line.
        ensembles = [f"ensemble {m[1]!r} failed to load: in ensemble {m[1]}, " + m[2].strip().rstrip('"')
                     for m in re.finditer(r"Invalid argument: in ensemble ([^,\s]+), (.*)", text)]
        return ([" ".join(parts) for parts in failures] + list(dict.fromkeys(ensembles))
                + [f"{socket_} is already in use" for socket_ in taken])

    def _failed(self, what: str) -> ServerError:
        failures = self.load_failures()
        return ServerError("\n".join(([f"{what}: " + failures[0]] + failures[1:]) if failures else [what])
                           + f"\n--- the end of its log:\n{self.log()}")

    def processes(self) -> list[int]:
        """PIDs still alive in the server's process group (the server and its model stubs)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == self.pid and fields[0] != "Z":
                    pids.append(int(entry.name))
        return pids

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self._failed(f"tritonserver exited with status {self.process.returncode}")
            if self.ready():
                return
            time.sleep(0.1)
        raise self._failed(f"tritonserver was not ready after {timeout:.0f} s")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the server (it unloads its models, ending their stubs); SIGKILL to the group
        after `timeout`. Returns the exit status."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(10)
        deadline = time.monotonic() + 10
        while self.processes() and time.monotonic() < deadline:  # stubs exit right after the server
            time.sleep(0.05)
        if self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.process.returncode

    def __enter__(self) -> "TritonServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _end_with_parent():
    """A preexec_fn for the server's child process (Linux): SIGTERM to it when its parent dies (prctl
    PR_SET_PDEATHSIG), so that a client killed without cleanup leaves no server behind. prctl is
    looked up here, in the parent: between fork and exec the child only calls it (no dlopen)."""
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_parent_death_signal() -> None:
        prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG

    return set_parent_death_signal


def start_server(repository: str | os.PathLike, *, http_port: int = 0, grpc_port: int = 0, metrics_port: int = 0,
                 host: str = "127.0.0.1", python_env: str | os.PathLike | None = None, timeout: float = 120.0,
                 workdir: str | os.PathLike | None = None, extra_args: list[str] | None = None,
                 log_verbose: int = 0) -> TritonServer:
    """Start tritonserver on `repository` and wait until it and every model are ready.

    Ports 0 pick free ones. Raises ServerError (with the server log's tail) when it fails. On Linux the
    server ends when the thread that started it dies, even by SIGKILL: start it from one that outlives
    it (the main thread).
    """
    bad_ports = [p for p in (http_port, grpc_port, metrics_port) if not is_int_between(p, 0, 65535)]
    if bad_ports:
        raise ServerError(f"ports are numbers from 0 (any free port) to 65535, got {bad_ports}")
    given = [p for p in (http_port, grpc_port, metrics_port) if p]
    if len(set(given)) < len(given):
        raise ServerError(f"the HTTP, gRPC and metrics ports must differ, got {http_port}, {grpc_port} and "
                          f"{metrics_port}; choose other ports, or 0 for free ones")
    repository = Path(repository).resolve()
    if not repository.is_dir():
        raise ServerError(f"{repository} is not a model repository folder")
    install, env = find_tritonserver(python_env)
    _check_ports_free(host, {"--http-port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port})
    if install.pytriton_root is not None:
        _check_model_env(env, _python_model_imports(repository))
    owns = workdir is None
    work = make_workdir() if owns else Path(workdir).resolve()  # the server runs in it: no relative paths
    try:
        work.mkdir(parents=True, exist_ok=True)
        ports = [p or free_port(host) for p in (http_port, grpc_port, metrics_port)]
        command = [str(install.binary), f"--model-repository={repository}", f"--http-address={host}",
                   f"--http-port={ports[0]}", f"--grpc-address={host}", f"--grpc-port={ports[1]}",
                   f"--metrics-address={host}", f"--metrics-port={ports[2]}", "--exit-timeout-secs=10",
                   "--strict-readiness=true", f"--log-verbose={log_verbose}"]
        environ = dict(os.environ)
        environ["PATH"] = f"{env / 'bin'}{os.pathsep}{environ.get('PATH', '')}"
        environ["VIRTUAL_ENV"] = str(env)
        environ.pop("PYTHONHOME", None)
        if install.pytriton_root is not None:
            command.append(f"--backend-directory={_backend_dir(install, work)}")
            libraries = [str(p) for p in install.library_dirs] + [environ.get("LD_LIBRARY_PATH", "")]
            environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libraries if p)
        command += list(extra_args or [])
        log_path = work / "tritonserver.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=environ, cwd=work, start_new_session=True,
                                       preexec_fn=_end_with_parent())
    except BaseException:  # nothing started: leave no work folder behind
        if owns:
            shutil.rmtree(work, ignore_errors=True)
        raise
    server = TritonServer(process, *ports, host, work, log_path, owns)
    try:
        server.wait_ready(timeout)
    except BaseException:
        server.stop()
        raise
    return server
