"""The sandbox every build step and every replica of the venv runtime runs in.

Model code is not trusted: build steps and replicas are the project writer's code. Each
runs under bubblewrap (``bwrap``), started by the platform as root, in a root of its own
(a tmpfs) that holds only what it needs, then drops to an unprivileged uid and gid of its
own project with ``setpriv`` (no supplementary groups, no capabilities, ``no_new_privs``):

- read-only: the system (``/usr`` and the ``/bin``, ``/lib*`` links beside it, ``/sys``), a
  short list of ``/etc`` (certificates, name resolution, ``ld.so``, ``alternatives``; a
  ``passwd`` and ``group`` naming only root and the project's user), the Python install the
  venv's interpreter belongs to, local package folders the index settings name, and, for a
  replica, its venv;
- writable, owned by the project's uid: the venv while it is built (then given back to
  root: a sealed venv no replica can change), the build's folder, the project's own pip
  cache (one project cannot poison another's cached wheels), and a replica's code folder
  (its working tree and home);
- private: ``/proc`` of its own pid namespace (no other process of the machine is seen),
  a minimal ``/dev``, an empty ``/tmp`` and ``/dev/shm``, and its own IPC and hostname.

The platform's data folder, token files, databases and settings are never mounted: a path
such as ``../../../admin.token`` walks up into the sandbox's empty tmpfs. The environment
is built from scratch by the caller (no platform setting or secret is in it).

Network: shared with the machine, by policy. pip needs the package index during builds,
and the gateway reaches replicas on the host's loopback, where a replica must bind its
port. So a sandboxed process can open connections like any local user: the platform's
services answer it only with a token, replicas only with their version's key
(``BUILDER_REPLICA_KEY``), and PostgreSQL or a broker on the same host must not trust local
connections without a password (docs/SECURITY.md).

Uids: one per project, handed out from ``BUILDER_SANDBOX_UID_BASE`` upwards and recorded in
``sandbox-uids.json`` in the build cache (beside the caches they own), so they stay the same
across restarts and for every builder sharing that cache. ``BUILDER_SANDBOX=none`` runs
model code as the builder's own user, which can then read every secret of the platform;
the builder refuses to start without a sandbox unless told so.

A builder that does not run as root (``modelcloud up`` on a developer's laptop) cannot give
out uids: its sandboxes run in a user namespace of their own (``bwrap --unshare-user``) as
the builder's own uid, with the same mounts. What isolates the platform's data from model
code is then the mount namespace alone: the data folder is still never mounted, but
projects are not kept apart by uid, and venvs are not sealed. The builder logs this at start.
"""

import contextlib
import fcntl
import functools
import json
import logging
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What a Python program and pip need of /etc; not the rest (a site pip.conf, a service's
# settings, ssh keys of the host).
_ETC = (
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/mime.types",
    "/etc/protocols",
    "/etc/services",
    "/etc/os-release",
)
# The sandbox's own empty tmpfs folders, not the machine's.
_SCRATCH = ("/tmp", "/dev/shm")  # noqa: S108
# Project names never hold a dot (services/registry/names.py): a hashed name cannot be one.
_SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
UIDS_FILE = "sandbox-uids.json"
# Namespaces of its own: no other process of the machine is seen or signalled, and it dies
# with the builder's handle on it.
_PRIVATE = (
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--hostname",
    "modelcloud",
)


class SandboxUnavailable(RuntimeError):
    """The builder was asked to sandbox model code and cannot; says how to fix it."""


class Sandbox:
    """Wraps a command to run sandboxed as its project's user (see the module docstring)."""

    def __init__(
        self,
        *,
        bwrap: str,
        setpriv: str,
        state: Path,
        uid_base: int,
        uid_count: int,
        unprivileged: bool = False,
    ) -> None:
        self.bwrap = bwrap
        self.setpriv = setpriv
        self.state = state
        self.uids = ProjectUids(state / UIDS_FILE, base=uid_base, count=uid_count)
        # Not root: mounts in a user namespace of its own, as the builder's uid (docstring).
        self.unprivileged = unprivileged

    def uid(self, project: str) -> int:
        return os.getuid() if self.unprivileged else self.uids.of(project)

    def command(
        self,
        argv: Sequence[str],
        *,
        project: str,
        cwd: Path,
        read_only: Iterable[Path] = (),
        writable: Iterable[Path] = (),
        devices: Iterable[Path] = (),
        outlives_builder: bool = False,
    ) -> list[str]:
        """``argv`` (its first item a path that exists inside) run in ``cwd`` in the sandbox,
        as ``project``'s user, seeing ``read_only`` and ``writable`` at their own paths.
        A build step dies with the builder; a replica (``outlives_builder``) serves on, for
        a restarted builder to adopt."""
        uid = self.uid(project)
        passwd, group = self._identity(uid)
        args = [self.bwrap]
        for path in _SYSTEM:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        args += ["--ro-bind", "/sys", "/sys", "--proc", "/proc", "--dev", "/dev"]
        for device in devices:
            args += ["--dev-bind-try", str(device), str(device)]
        for scratch in _SCRATCH:
            args += ["--perms", "1777", "--tmpfs", scratch]
        args += ["--perms", "0755", "--dir", "/etc"]
        for path in _ETC:
            args += ["--ro-bind-try", os.path.realpath(path), path]
        args += ["--ro-bind", str(passwd), "/etc/passwd", "--ro-bind", str(group), "/etc/group"]
        args += _mounts(
            [(Path(p).resolve(), "--ro-bind") for p in read_only]
            + [(Path(p).resolve(), "--bind") for p in writable]
        )
        args += ["--chdir", str(cwd)]
        if not outlives_builder:
            args.append("--die-with-parent")
        if self.unprivileged:
            return [*args, "--unshare-user", *_PRIVATE, "--", *argv]
        args += [
            *_PRIVATE,
            "--",
            self.setpriv,
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
            *argv,
        ]
        return args

    def own(self, path: Path, project: str) -> None:
        """Give ``path`` (and all below it) to ``project``'s user, for it to write."""
        if self.unprivileged:  # the builder's own already
            return
        uid = self.uid(project)
        _chown_tree(path, uid, uid)

    def own_once(self, path: Path, project: str) -> None:
        """Create ``path`` for ``project``'s user; give it the tree only when it is not its
        yet (a cache that grows: walking it on every build would cost more and more)."""
        uid = self.uid(project)
        path.mkdir(parents=True, exist_ok=True)
        if path.stat().st_uid != uid and not self.unprivileged:
            _chown_tree(path, uid, uid)

    def seal(self, path: Path) -> None:
        """Give ``path`` back to root: its user can no longer change it (a built venv).
        Without root nothing can be given away: the venv stays the builder's."""
        if not self.unprivileged:
            _chown_tree(path, 0, 0, seal=True)

    def _identity(self, uid: int) -> tuple[Path, Path]:
        """``passwd`` and ``group`` files naming root and the sandbox's user (a program that
        asks who it is, ``getpass.getuser()``, gets an answer)."""
        folder = self.state / "sandbox-identity"
        passwd, group = folder / f"passwd-{uid}", folder / f"group-{uid}"
        if not passwd.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            for path, text in (
                (group, f"root:x:0:\nmodel:x:{uid}:\n"),
                (
                    passwd,
                    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
                    f"model:x:{uid}:{uid}:model:/tmp:/usr/sbin/nologin\n",
                ),
            ):
                staging = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                staging.write_text(text)
                staging.chmod(0o644)
                os.replace(staging, path)
        return passwd, group


class ProjectUids:
    """A stable uid per project: the first unused one from ``base``, recorded in a JSON
    file that every builder sharing it reads and writes under a lock."""

    def __init__(self, path: Path, *, base: int, count: int) -> None:
        self.path = path
        self.base = base
        self.count = count
        self._known: dict[str, int] = {}

    def of(self, project: str) -> int:
        if project not in self._known:
            with self._locked() as table:
                if project not in table:
                    table[project] = self._free(set(table.values()))
                    self._write(table)
                    log.info("sandbox uid %d allocated to project %s", table[project], project)
                self._known = dict(table)
        return self._known[project]

    def _free(self, taken: set[int]) -> int:
        for uid in range(self.base, self.base + self.count):
            if uid not in taken and not _system_user(uid):
                return uid
        raise SandboxUnavailable(
            f"every sandbox uid from {self.base} to {self.base + self.count - 1} is taken: "
            "raise BUILDER_SANDBOX_UID_COUNT"
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, int]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_name(f"{self.path.name}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self._read()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, int]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return {str(k): int(v) for k, v in raw.items()}

    def _write(self, table: dict[str, int]) -> None:
        staging = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        staging.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        os.replace(staging, self.path)


def project_folder(project: str) -> str:
    """A file name for ``project`` (its own name when that is one)."""
    if _SAFE_NAME.match(project):
        return project
    import hashlib

    return "h." + hashlib.sha256(project.encode()).hexdigest()


def sandbox_for(mode: str, *, state: Path, uid_base: int, uid_count: int) -> Sandbox | None:
    """The sandbox ``BUILDER_SANDBOX`` asks for, checked to work; ``None`` for ``none``."""
    if mode == "none":
        log.warning(
            "BUILDER_SANDBOX=none: build steps and replicas run as the builder's own user "
            "and can read the platform's data folder and tokens"
        )
        return None
    bwrap, setpriv = shutil.which("bwrap"), shutil.which("setpriv")
    if bwrap is None or setpriv is None:
        raise SandboxUnavailable(
            "BUILDER_SANDBOX=bwrap needs bubblewrap and setpriv (Debian: apt-get install "
            "bubblewrap util-linux); install them, or set BUILDER_SANDBOX=none to run model "
            "code as the builder's own user, which can read the platform's tokens"
        )
    unprivileged = os.geteuid() != 0
    if unprivileged:
        log.warning(
            "the builder does not run as root: sandboxes hide the platform's data from model "
            "code (mount namespace) but run as the builder's own uid, so projects are not "
            "kept apart by uid; run the builder as root for that"
        )
    _check(bwrap, setpriv, uid_base, unprivileged)
    return Sandbox(
        bwrap=bwrap,
        setpriv=setpriv,
        state=state,
        uid_base=uid_base,
        uid_count=uid_count,
        unprivileged=unprivileged,
    )


@functools.cache
def _check(bwrap: str, setpriv: str, uid: int, unprivileged: bool) -> None:
    """Start one sandbox that does nothing, so that a machine where bwrap cannot mount (a
    container without the capability, user namespaces turned off) stops the builder at
    start, not every build."""
    probe = [bwrap, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-pid"]
    if unprivileged:
        probe += ["--unshare-user", "--die-with-parent", "--", "true"]
    else:
        probe += ["--die-with-parent", "--", setpriv, f"--reuid={uid}", f"--regid={uid}"]
        probe += ["--clear-groups", "--no-new-privs", "--", "true"]
    try:
        answer = subprocess.run(  # noqa: S603 - fixed argv
            probe, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxUnavailable(f"bubblewrap did not run: {exc}") from None
    if answer.returncode != 0:
        raise SandboxUnavailable(
            f"bubblewrap cannot start a sandbox here ({answer.stderr.strip()[-300:]}); "
            "give the builder the rights to mount (root, outside a restricted container), "
            "or set BUILDER_SANDBOX=none to run model code as the builder's own user, "
            "which can read the platform's tokens"
        )


def _mounts(wanted: list[tuple[Path, str]]) -> list[str]:
    """Bind options, parents before what lies in them, each missing parent made as a
    0755 folder (bwrap would copy a 0700 parent's mode and lock the user out)."""
    args: list[str] = []
    # Made already: their parents need no folder. Mounted from the machine: what lies in
    # them is there (a tmpfs such as /tmp is empty, so it is not one of them).
    made = {Path(p) for p in ("/", "/etc", "/dev", "/proc", "/sys", *_SCRATCH)}
    mounted = [Path(p) for p in ("/usr", "/sys", "/proc", "/dev")]
    for path, option in sorted(set(wanted), key=lambda item: len(item[0].parts)):
        if not path.exists():
            continue
        for parent in reversed(path.parents):
            if parent in made or any(parent.is_relative_to(m) for m in mounted):
                continue
            args += ["--perms", "0755", "--dir", str(parent)]
            made.add(parent)
        args += [option, str(path), str(path)]
        mounted.append(path)
    return args


def _chown_tree(path: Path, uid: int, gid: int, *, seal: bool = False) -> None:
    """Give ``path`` and all below it to ``uid``; ``seal``: also take away every write bit
    but the owner's. Walked by folder descriptors (``os.fwalk``), never by path: a folder
    the project swaps for a link meanwhile is not followed out of the tree as root."""
    os.chown(path, uid, gid, follow_symlinks=False)
    if seal:
        os.chmod(path, path.lstat().st_mode & ~0o022 & 0o7777)
    for _, dirs, files, folder in os.fwalk(path, follow_symlinks=False):
        for name in (*dirs, *files):
            os.chown(name, uid, gid, dir_fd=folder, follow_symlinks=False)
            if seal:
                mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
                if not stat.S_ISLNK(mode):
                    os.chmod(name, mode & ~0o022 & 0o7777, dir_fd=folder)


def _system_user(uid: int) -> bool:
    import pwd

    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
