"""The first code a sandboxed program's process runs: it sets the limits, leaves the network, drops root, runs it.

``sandbox.py`` starts it as a script; stdlib only, it imports nothing of mdfast.

argv: [this file, config.json]. The config names the program file, the limits and the uid to become. The
steps, in order (each needs the privilege the next one gives up):
1. resource limits, soft = hard so the program cannot raise them: RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE,
   RLIMIT_NOFILE, RLIMIT_NPROC, RLIMIT_CORE = 0;
2. an empty network namespace: unshare(CLONE_NEWNET) as root, unshare(CLONE_NEWUSER | CLONE_NEWNET) otherwise;
   where the kernel refuses both, the socket module is disabled instead (a guard against accidents, not a
   boundary: ctypes gets around it), and the report says so;
3. as root: the standard-library modules the program's source names are imported first (the interpreter's own
   files may be readable by root only, e.g. under root's own pyenv; ``antigravity`` and ``this`` are left out), then
   no supplementary groups and setgid/setuid to the config's uid (RLIMIT_NPROC is not enforced for root, and
   root could write anywhere); a failure stops here with exit status 125, before the program runs;
4. a report (sandbox.json: network, uid) for the parent, then the program runs as ``__main__``.
"""

import _socket
import ast
import contextlib
import ctypes
import importlib
import json
import os
import resource
import socket
import sys

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
SETUP_FAILED = 125
NOT_PRELOADED = ("antigravity", "this")  # importing them acts (opens a browser, prints)


def _limit(kind: int, value: int) -> None:
    resource.setrlimit(kind, (value, value))


def _leave_network() -> str:
    unshare = getattr(ctypes.CDLL(None, use_errno=True), "unshare", None)  # Linux only
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
    if unshare is not None and unshare(flags) == 0:
        return "namespace"

    def refuse(*args, **kwargs):
        raise PermissionError("network access is disabled in the mdfast sandbox")

    socket.socket = socket.create_connection = socket.socketpair = refuse
    _socket.socket = _socket.socketpair = refuse
    return "guard"


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


def main() -> None:
    with open(sys.argv[1]) as f:
        config = json.load(f)
    _limit(resource.RLIMIT_AS, config["memory_bytes"])
    _limit(resource.RLIMIT_CPU, config["cpu_seconds"])
    _limit(resource.RLIMIT_FSIZE, config["file_bytes"])
    _limit(resource.RLIMIT_NOFILE, config["open_files"])
    _limit(resource.RLIMIT_NPROC, config["processes"])
    _limit(resource.RLIMIT_CORE, 0)
    network = _leave_network()
    with open(config["program"]) as f:
        source = f.read()
    if os.geteuid() == 0:
        _preload(source)
        try:
            os.setgroups([])
            os.setgid(config["uid"])
            os.setuid(config["uid"])
        except OSError as error:
            print(f"mdfast sandbox: cannot drop root to uid {config['uid']}: {error}", file=sys.stderr)
            sys.exit(SETUP_FAILED)
    with open(config["report"], "w") as f:
        json.dump({"network": network, "uid": os.getuid()}, f)
    code = compile(source, config["program"], "exec")
    sys.argv = [config["program"]]
    exec(code, {"__name__": "__main__", "__file__": config["program"], "__builtins__": __builtins__})


if __name__ == "__main__":
    main()
