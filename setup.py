"""Build of the C extension ``tfyarn._native`` (see native/README.md).

Everything else about the package lives in pyproject.toml.

The extension always builds. When UCX's headers are found (pkg-config ``ucx``, or
``/usr/include/ucp/api/ucp.h`` as Debian's ``libucx-dev`` installs them) it is compiled
with ``TFYARN_HAVE_UCX=1`` and linked against ``libucp``/``libucs``; otherwise the UCX
bindings are left out and ``tfyarn.native.HAVE_UCX`` is false, so that requesting the
``ucx`` transport fails with a clear error instead of the whole package failing to build.
Set ``TFYARN_NO_UCX=1`` to build without UCX on purpose.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent
NATIVE = HERE / "native"


def _pkg_config(*args: str) -> list[str] | None:
    """Return the words pkg-config prints for ``ucx``, or None when it does not know UCX."""
    exe = shutil.which("pkg-config")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, *args, "ucx"], check=True, capture_output=True, text=True, timeout=30
        ).stdout
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        return None
    return out.split()


def _ucx_flags() -> dict[str, list] | None:
    """Compiler/linker settings for UCX, or None when its headers are absent."""
    if os.environ.get("TFYARN_NO_UCX", "") not in ("", "0"):
        return None
    cflags = _pkg_config("--cflags")
    libs = _pkg_config("--libs")
    include_dirs: list[str] = []
    library_dirs: list[str] = []
    if cflags is not None and libs is not None:
        include_dirs = [f[2:] for f in cflags if f.startswith("-I")]
        library_dirs = [f[2:] for f in libs if f.startswith("-L")]
        if not any(Path(d, "ucp/api/ucp.h").exists() for d in [*include_dirs, "/usr/include"]):
            return None
    elif not Path("/usr/include/ucp/api/ucp.h").exists():
        return None
    return {
        "include_dirs": include_dirs,
        "library_dirs": library_dirs,
        # Only ucp/ucs are called directly; uct/ucm come in as their dependencies.
        "libraries": ["ucp", "ucs"],
        "define_macros": [("TFYARN_HAVE_UCX", "1")],
    }


def _extension() -> Extension:
    sources = sorted(str(p.relative_to(HERE)) for p in NATIVE.glob("*.c"))
    ucx = _ucx_flags() or {}
    return Extension(
        "tfyarn._native",
        sources=sources,
        depends=sorted(str(p.relative_to(HERE)) for p in NATIVE.glob("*.h")),
        include_dirs=["native", *ucx.get("include_dirs", [])],
        library_dirs=ucx.get("library_dirs", []),
        libraries=[*ucx.get("libraries", []), "pthread"],
        define_macros=ucx.get("define_macros", []),
        # -O3 vectorises the kernels; no -march here (the wheel must run on any x86-64):
        # kernels.c compiles an AVX2/F16C variant itself and picks it at run time.
        # -fno-math-errno lets sqrtf vectorise (nothing here reads errno after math calls).
        extra_compile_args=[
            "-O3",
            "-fno-math-errno",
            "-std=gnu11",
            "-fno-strict-aliasing",
            "-Wall",
        ],
    )


setup(ext_modules=[_extension()])
