"""``tfyarn pack-env``: pack the environment tfyarn runs from, for YARN containers.

The archive holds the venv (less pyspark, development tools, tests folders), tfyarn
itself, and the interpreter with its standard library, so nodes need no Python of their
own (:mod:`tfyarn.yarn.envpack`). It is packed once per content into
``~/.cache/tfyarn/envs/`` (``$TFYARN_CACHE_DIR/envs``) and its path printed; ``--output``
packs it there instead:  ``.tar`` as it is, ``.tar.gz``/``.tgz`` compressed (gzip level
1: what YARN unpacks just as well, and minutes less to make on small machines).
``tfyarn submit`` does this itself; this command is for archives published ahead of time
(the Ansible role, a service spec's ``environment``).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from tfyarn.errors import ConfigError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``pack-env`` subcommand."""
    parser = subparsers.add_parser(
        "pack-env",
        help="pack this Python environment (with its interpreter) for YARN containers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output", type=Path, help="also write the archive here (.tar, .tar.gz or .tgz)"
    )
    parser.add_argument(
        "--force", action="store_true", help="pack again even if cached (always with --output)"
    )
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from tfyarn.yarn.envpack import ensure_env_archive

    output: Path | None = args.output
    if output is not None and not output.name.endswith((".tar", ".tar.gz", ".tgz")):
        raise ConfigError(f"--output {output}: name it .tar, .tar.gz or .tgz")
    if output is None:
        packed = ensure_env_archive(force=args.force)
        _report(packed.path, packed.size_bytes, packed.pack_s)
        print(packed.path)
        return 0
    # Packed beside the output, not into the shared cache: an archive made for publishing
    # must not push the cache's own archives out (it keeps the newest two).
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tfyarn-pack-", dir=output.parent) as tmp:
        packed = ensure_env_archive(cache_dir=Path(tmp), force=True)
        _report(packed.path, packed.size_bytes, packed.pack_s)
        if output.name.endswith(".tar"):
            packed.path.replace(output)
        else:
            partial = Path(tmp) / "compressing"
            with open(packed.path, "rb") as src, gzip.open(partial, "wb", compresslevel=1) as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
            partial.replace(output)
    print(output)
    return 0


def _report(path: Path, size: int, pack_s: float) -> None:
    how = f"packed in {pack_s:.0f} s" if pack_s else "cached"
    print(f"tfyarn: environment archive {path} ({size / 2**30:.2f} GiB, {how})", file=sys.stderr)
