"""The sandbox's strong mode: a private mount and network namespace for one program (Linux, stdlib and ctypes only).

``sandbox_entry.py`` loads this file by path (the sandboxed interpreter runs with ``-I -S`` and imports nothing
of mdfast). The steps, each a system call through libc (Python 3.11 has no ``os.unshare``):
1. ``enter``: unshare(CLONE_NEWNS | CLONE_NEWNET), with CLONE_NEWUSER for a non-root caller (then its own uid
   and gid are mapped to themselves and setgroups is denied);
2. ``private_filesystem``: every mount made private (nothing propagates back), a fresh tmpfs over each hidden
   folder (/tmp, /var/tmp, /dev/shm, /run, the homes), the scratch folder and the interpreter's standard
   library bound back in at their own paths, then every mount read-only (mount_setattr(AT_RECURSIVE), else one
   remount per mount) except the scratch folder;
3. ``drop_capabilities``: a non-root caller holds every capability inside its new user namespace: the bounding
   set and the capability sets are emptied, and no_new_privs is set, before the program runs.
A mount that the program could undo would be no boundary: as an unprivileged uid (root's programs) or without
capabilities (a non-root caller's) it cannot mount, and a user namespace it makes itself inherits these mounts
locked (read-only stays read-only, the tmpfs over a hidden folder cannot be unmounted).
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
KEPT_FLAGS = {  # statvfs's f_flag bit: the mount flag a remount must keep (a user namespace locks them)
    os.ST_NOSUID: MS_NOSUID,
    os.ST_NODEV: MS_NODEV,
    os.ST_NOEXEC: MS_NOEXEC,
    os.ST_NOATIME: MS_NOATIME,
    os.ST_NODIRATIME: MS_NODIRATIME,
    os.ST_RELATIME: MS_RELATIME,
}
SYS_MOUNT_SETATTR = 442  # one number on every architecture (the syscalls added since 5.1 share it)
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 1
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
CAPABILITY_VERSION_3 = 0x20080522
HIDDEN_TMPFS = b"size=64k,nr_inodes=256,mode=755"

_libc = ctypes.CDLL(None, use_errno=True)


class SetupBroken(RuntimeError):
    """The filesystem is half made private (everything read-only already): the program must not run."""


class _MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("attr_set", "attr_clr", "propagation", "userns_fd")]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: bytes | None = None) -> None:
    source, target_bytes, fstype = (None if s is None else os.fsencode(s) for s in (source, target, fstype))
    result = _libc.mount(source, target_bytes, fstype, ctypes.c_ulong(flags), data)
    _check(result, f"mount {target}")


def enter(network_only: bool = False) -> None:
    """Unshare the mount and network namespaces (only the network one with ``network_only``); OSError if refused.

    - A non-root caller gets a user namespace too, its uid and gid mapped to themselves.
    """
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNET if network_only else CLONE_NEWNS | CLONE_NEWNET
    if os.geteuid() != 0:
        flags |= CLONE_NEWUSER
    unshare = getattr(_libc, "unshare", None)
    if unshare is None:
        raise OSError("no unshare in this libc")
    _check(unshare(flags), "unshare")
    if flags & CLONE_NEWUSER:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)


def hidden_folders(candidates: list[str]) -> list[str]:
    """The existing folders among ``candidates`` (real paths, no "/"), none inside another one, shortest first."""
    kept: list[str] = []
    for path in sorted({os.path.realpath(p) for p in candidates if os.path.isdir(p)}, key=len):
        if path != "/" and not any(path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def private_filesystem(scratch: str, hide: list[str], expose: list[str]) -> None:
    """Make this mount namespace's filesystem private: ``scratch`` the only writable folder (module doc, step 2).

    - hide: folders to cover with an empty read-only tmpfs (``hidden_folders``);
    - expose: folders (the interpreter's standard library) bound back in, read-only, where a hidden one covers them.
    Raises OSError before anything is read-only (the caller may go on without a private filesystem), SetupBroken
    after.
    """
    keep = {path: os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for path in [scratch, *expose]}
    mounted: list[str] = []
    try:
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        for path in hide:
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, HIDDEN_TMPFS)
            mounted.append(path)
        for path, fd in keep.items():
            if path == scratch or not os.path.isdir(path):
                os.makedirs(path, 0o755, exist_ok=True)
                _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND)
                mounted.append(path)
    except OSError:
        for path in reversed(mounted):  # back to the filesystem as it was, for the weak mode
            _libc.umount2(os.fsencode(path), MNT_DETACH)
        raise
    finally:
        for fd in keep.values():
            os.close(fd)
    try:
        _all_read_only()
        _set_read_only(scratch, False)
        os.chdir(scratch)  # the working directory held the mount the scratch folder was on before
        if not os.statvfs("/").f_flag & os.ST_RDONLY or os.statvfs(scratch).f_flag & os.ST_RDONLY:
            raise OSError("the mounts did not come out as asked")
    except OSError as error:
        raise SetupBroken(f"cannot make the filesystem read-only: {error}") from error


def _all_read_only() -> None:
    """Every mount read-only: one mount_setattr over the whole tree, else one remount per mount point."""
    attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY)
    args = (ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), b"/", ctypes.c_uint(AT_RECURSIVE))
    if _libc.syscall(*args, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))) == 0:
        return
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    for point in sorted(set(points), key=lambda p: p.count("/")):
        try:
            _set_read_only(point, True)
        except FileNotFoundError:
            continue  # covered by a hidden folder's tmpfs: unreachable
        except PermissionError:
            if not os.statvfs(point).f_flag & os.ST_RDONLY:
                raise


def _set_read_only(path: str, read_only: bool) -> None:
    current = os.statvfs(path).f_flag
    flags = sum(flag for bit, flag in KEPT_FLAGS.items() if current & bit)
    flags |= MS_REMOUNT | MS_BIND | (MS_RDONLY if read_only else 0)
    _mount(None, path, None, flags)


def drop_capabilities() -> None:
    """No capability left (bounding set, effective, permitted, inheritable) and no_new_privs; OSError if refused."""
    for capability in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0 and ctypes.get_errno() != 22:  # EINVAL: none
            _check(-1, f"dropping capability {capability}")
    header = _CapHeader(CAPABILITY_VERSION_3, 0)
    _check(_libc.capset(ctypes.byref(header), (_CapData * 2)()), "capset")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
