"""A seccomp filter for sandboxed programs: no signal to any process but its own, no ptrace, no other's memory.

``sandbox_entry.py`` loads this file by path (stdlib and ctypes only). A non-root caller's programs run as the
caller's own uid, so the kernel would let them signal (os.kill(os.getppid(), ...)) or trace the caller; the
filter answers EPERM to kill, tkill, tgkill, rt_sigqueueinfo and rt_tgsigqueueinfo aimed at any process but the
program itself or its own process group (kill(0) and kill(-pid) stay allowed), and to pidfd_send_signal, ptrace,
process_vm_readv, process_vm_writev and pidfd_getfd always. Every other system call is allowed; one made with a
foreign calling convention (32-bit or x32 on x86_64) gets EPERM. x86_64 and aarch64 only.
"""

from __future__ import annotations

import ctypes
import os
import platform

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
RET_ALLOW, RET_EPERM = 0x7FFF0000, 0x00050000 | 1
LD_ABS, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06
X32_BIT = 0x40000000
ARCHES = {  # machine: (audit arch, {syscall: number})
    "x86_64": (
        0xC000003E,
        {"kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297, "ptrace": 101}
        | {"process_vm_readv": 310, "process_vm_writev": 311},
    ),
    "aarch64": (
        0xC00000B7,
        {"kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240, "ptrace": 117}
        | {"process_vm_readv": 270, "process_vm_writev": 271},
    ),
}
COMMON = {"pidfd_send_signal": 424, "pidfd_getfd": 438}
SIGNALS = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")

_libc = ctypes.CDLL(None, use_errno=True)


class _Instruction(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Instruction))]


def supported() -> bool:
    """Whether this machine's architecture has a filter here."""
    return platform.machine() in ARCHES


def program(pid: int, machine: str) -> list[tuple[int, int, int, int]]:
    """The filter for process ``pid`` on ``machine``: (code, jump if true, jump if false, k) per instruction."""
    arch, numbers = ARCHES[machine]
    numbers = {**numbers, **COMMON}
    # (op, k, label jumped to when true) or ("label", name); a false comparison falls through
    text: list[tuple] = [(LD_ABS, 4), (JEQ, arch, "syscall"), (RET, RET_EPERM), ("label", "syscall"), (LD_ABS, 0)]
    if machine == "x86_64":
        text.append((JGE, X32_BIT, "deny"))
    text += [(JEQ, n, "deny") for name, n in sorted(numbers.items()) if name not in SIGNALS]
    text += [(JEQ, numbers[name], "target") for name in SIGNALS]
    text += [(RET, RET_ALLOW), ("label", "target"), (LD_ABS, 16)]  # args[0], its low 32 bits (a pid_t)
    text += [(JEQ, k & 0xFFFFFFFF, "allow") for k in (pid, 0, -pid)]
    text += [("label", "deny"), (RET, RET_EPERM), ("label", "allow"), (RET, RET_ALLOW)]
    labels, index = {}, 0
    for line in text:
        if line[0] == "label":
            labels[line[1]] = index
        else:
            index += 1
    out, index = [], 0
    for line in text:
        if line[0] == "label":
            continue
        index += 1
        jump = labels[line[2]] - index if len(line) == 3 else 0
        out.append((line[0], jump, 0, line[1]))
    return out


def install() -> None:
    """Set no_new_privs and install ``program(os.getpid(), this machine)``; OSError where refused or unsupported."""
    if not supported():
        raise OSError(f"no seccomp filter for {platform.machine()}")
    instructions = program(os.getpid(), platform.machine())
    array = (_Instruction * len(instructions))(*[_Instruction(*line) for line in instructions])
    fprog = _Program(len(instructions), array)
    for args in ((PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), (PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0)):
        if _libc.prctl(*args) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"prctl {args[0]}: {os.strerror(error)}")
