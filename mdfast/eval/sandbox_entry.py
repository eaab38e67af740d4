"""The first code a sandboxed program's process runs: it sets the limits, isolates itself, drops root, runs it.

``sandbox.py`` starts it as a script; stdlib only, it imports nothing of mdfast (``sandbox_namespace.py``, beside
it, is loaded by path).

argv: [this file, config.json]. The config names the program file, the scratch folder, the limits, the folders
to hide and the uid to become. The steps, in order (each needs the privilege the next one gives up):
1. resource limits, soft = hard so the program cannot raise them: RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE,
   RLIMIT_NOFILE, RLIMIT_NPROC, RLIMIT_CORE = 0;
2. the strong mode ("namespace") where the kernel allows it and the config asks for it: new mount and network
   namespaces, the filesystem read-only but for the scratch folder, the hidden folders covered (see
   ``sandbox_namespace.py``); else the weak mode ("rlimits"): an empty network namespace alone where the kernel
   allows that, or a guard that disables the socket module (not a boundary: ctypes gets around it);
3. as root: the standard-library modules the program's source names are imported first (the interpreter's own
   files may be readable by root only, e.g. under root's own pyenv; ``antigravity`` and ``this`` are left out), then
   no supplementary groups and setgid/setuid to the config's uid (RLIMIT_NPROC is not enforced for root, and
   root could write anywhere); a non-root caller in a user namespace gives up its capabilities there instead;
   then, in either mode, no_new_privs and the seccomp filter of ``sandbox_seccomp.py`` (no signal to another
   process, no ptrace) where the kernel and architecture allow it (a non-root caller's mode is "rlimits" without
   it: its program could signal the caller); a failure (but the filter's) stops here with exit status 125,
   before the program runs;
4. a report (sandbox.json: mode, network, filesystem, seccomp, uid) for the parent, then the program runs as
   ``__main__``.
"""

import _socket
import ast
import contextlib
import ctypes
import importlib
import importlib.util
import json
import os
import resource
import socket
import sys

SETUP_FAILED = 125
PR_SET_NO_NEW_PRIVS = 38
NOT_PRELOADED = ("antigravity", "this")  # importing them acts (opens a browser, prints)


def _limit(kind: int, value: int) -> None:
    resource.setrlimit(kind, (value, value))


def _load_sibling(name: str):
    """A module beside this file, by path (this interpreter does not see mdfast)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"mdfast_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


namespace = _load_sibling("sandbox_namespace")
seccomp = _load_sibling("sandbox_seccomp")


def _guard_sockets() -> str:
    def refuse(*args, **kwargs):
        raise PermissionError("network access is disabled in the mdfast sandbox")

    socket.socket = socket.create_connection = socket.socketpair = refuse
    _socket.socket = _socket.socketpair = refuse
    return "guard"


def _isolate(config: dict) -> dict:
    """Step 2 of the module doc: the report's mode, network ("namespace" | "guard") and filesystem.

    - filesystem: "private" | "shared"; namespace.SetupBroken where it came out half private.
    """
    weak = {"mode": "rlimits", "network": "namespace", "filesystem": "shared"}
    if not config["namespaces"]:
        return {**weak, "network": _guard_sockets()}
    try:
        namespace.enter()
    except OSError:
        try:
            namespace.enter(network_only=True)
        except OSError:
            return {**weak, "network": _guard_sockets()}
        return weak
    expose = [path for path in sys.path if os.path.isdir(path)]  # the standard library (-I -S)
    scratch = os.path.realpath(config["scratch"])
    try:
        namespace.private_filesystem(scratch, namespace.hidden_folders(config["hide"]), expose)
    except OSError:
        return weak
    return {"mode": "namespace", "network": "namespace", "filesystem": "private"}


def _preload(source: str) -> None:
    """Import, while still root, the standard-library modules that ``source``'s import statements name."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return  # the program's own compile reports it
    names = {"traceback", "linecache"}  # what printing an exception may import
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # submodules, if any
    for name in sorted(names):
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names and top not in NOT_PRELOADED:
            # not a module (from typing import List), or one that fails: the program's own import reports it
            with contextlib.suppress(Exception):
                importlib.import_module(name)


def _drop_privileges(config: dict, source: str, report: dict) -> dict:
    """Step 3 of the module doc; the report with seccomp (whether the signal filter holds); OSError if refused."""
    if os.geteuid() == 0:
        _preload(source)
        os.setgroups([])
        os.setgid(config["uid"])
        os.setuid(config["uid"])
    elif report["network"] == "namespace":  # a non-root caller's namespaces come with a user namespace
        namespace.drop_capabilities()
    try:
        seccomp.install()
    except OSError:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "no_new_privs") from None
        return {**report, "seccomp": False}
    return {**report, "seccomp": True}


def main() -> None:
    with open(sys.argv[1]) as f:
        config = json.load(f)
    _limit(resource.RLIMIT_AS, config["memory_bytes"])
    _limit(resource.RLIMIT_CPU, config["cpu_seconds"])
    _limit(resource.RLIMIT_FSIZE, config["file_bytes"])
    _limit(resource.RLIMIT_NOFILE, config["open_files"])
    _limit(resource.RLIMIT_NPROC, config["processes"])
    _limit(resource.RLIMIT_CORE, 0)
    with open(config["program"]) as f:
        source = f.read()
    own_uid = os.geteuid() != 0  # the program keeps the caller's uid: only the filter stops its signals
    try:
        report = _isolate(config)
        report = _drop_privileges(config, source, report)
        if own_uid and not report["seccomp"]:
            report["mode"] = "rlimits"  # the strong mode contains every attempt in the table, signals included
    except (OSError, namespace.SetupBroken) as error:
        print(f"mdfast sandbox: cannot isolate the program (uid {config['uid']}): {error}", file=sys.stderr)
        sys.exit(SETUP_FAILED)
    with open(config["report"], "w") as f:
        json.dump({**report, "uid": os.getuid()}, f)
    code = compile(source, config["program"], "exec")
    sys.argv = [config["program"]]
    exec(code, {"__name__": "__main__", "__file__": config["program"], "__builtins__": __builtins__})


if __name__ == "__main__":
    main()
