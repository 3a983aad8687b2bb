"""Shape rules of the code base (issue 17), checked on the source itself.

* No function or method in tfyarn/ has more than 80 lines of code in its body (blank
  lines, comment-only lines and its docstring do not count).
* ``tfyarn doctor``'s checks form no import cycle: :class:`tfyarn.diagnosis.Check` lives
  in a module that imports nothing of tfyarn, every module providing a check imports
  first in a fresh interpreter, and doctor lists its checks with no import at its bottom.
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "tfyarn"
MAX_LINES = 80

# Tokens that are not code: a line holding only these is blank or a comment.
_NOT_CODE = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENDMARKER,
}


@dataclass(frozen=True)
class LongFunction:
    """A function over the limit, as the failure message names it."""

    path: str
    line: int
    name: str
    lines: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {self.name}: {self.lines} lines of code"


def code_lines(source: str) -> set[int]:
    """Line numbers that hold code (a multi-line string covers every line it spans)."""
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in _NOT_CODE:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines


def _body_without_docstring(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.stmt]:
    body = list(fn.body)
    first = body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        body = body[1:]
    return body


def long_functions(source: str, path: str, limit: int = MAX_LINES) -> list[LongFunction]:
    """Every function or method of ``source`` whose body has more than ``limit`` lines of code.

    Nested functions count both on their own and inside the function that holds them.
    """
    code = code_lines(source)
    found: list[LongFunction] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        body = _body_without_docstring(node)
        if not body:
            continue
        end = body[-1].end_lineno or body[-1].lineno
        count = len(code & set(range(body[0].lineno, end + 1)))
        if count > limit:
            found.append(LongFunction(path, node.lineno, node.name, count))
    return sorted(found, key=lambda f: (f.path, f.line))


def test_the_counter_skips_docstring_blank_and_comment_lines() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(4))
    source = (
        "def f(\n    a,\n):\n"
        '    """Doc.\n\n    more doc\n    """\n'
        "\n    # a comment\n" + body + "\n\n    # another\n"
        '    s = """\n\n    # inside a string\n    """\n'
    )
    # 4 assignments + the 4 lines of the string (its blank and '#' lines are code too)
    assert long_functions(source, "m.py", limit=7) == [LongFunction("m.py", 1, "f", 8)]
    assert long_functions(source, "m.py", limit=8) == []


def test_the_counter_names_methods_and_nested_functions() -> None:
    inner = "\n".join(f"            y{i} = {i}" for i in range(3))
    source = f"class C:\n    def m(self):\n        def g():\n{inner}\n        return g\n"
    assert [str(f) for f in long_functions(source, "c.py", limit=2)] == [
        "c.py:2 m: 5 lines of code",
        "c.py:3 g: 3 lines of code",
    ]


def test_no_function_in_tfyarn_is_longer_than_80_lines() -> None:
    offenders: list[LongFunction] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        offenders += long_functions(path.read_text(encoding="utf-8"), rel)
    listing = "\n".join(f"  {f}" for f in offenders)
    assert not offenders, (
        f"{len(offenders)} function(s) in tfyarn/ have more than {MAX_LINES} lines of code "
        f"(blank, comment-only and docstring lines not counted); split them:\n{listing}"
    )


# ------------------------------------------------------------------ doctor's imports

CHECK_MODULES = [
    "tfyarn.diagnosis",
    "tfyarn.exchange.checks",
    "tfyarn.transport.rdma",
    "tfyarn.transport.selftest",
    "tfyarn.yarn.checks",
    "tfyarn.doctor",
]


@pytest.mark.parametrize("module", CHECK_MODULES)
def test_each_check_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    # Importing it first is what a cycle breaks: the module half-initialised when a
    # module it imports reaches back for a name it has not defined yet.
    code = f"import {module}, tfyarn.doctor; print(len(tfyarn.doctor.CHECKS))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "8"


def _tfyarn_imports(tree: ast.Module) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return [n for n in names if n == "tfyarn" or n.startswith("tfyarn.")]


def test_check_lives_in_a_module_that_imports_nothing_of_tfyarn() -> None:
    tree = ast.parse((PACKAGE / "diagnosis.py").read_text(encoding="utf-8"))
    assert _tfyarn_imports(tree) == []


def test_doctor_imports_only_at_its_top() -> None:
    tree = ast.parse((PACKAGE / "doctor.py").read_text(encoding="utf-8"))
    first_def = next(
        i for i, n in enumerate(tree.body) if isinstance(n, ast.FunctionDef | ast.ClassDef)
    )
    late = [n.lineno for n in tree.body[first_def:] if isinstance(n, ast.Import | ast.ImportFrom)]
    assert late == [], f"tfyarn/doctor.py imports below its first definition, at lines {late}"


def test_check_modules_do_not_import_doctor() -> None:
    for module in CHECK_MODULES[:-1]:
        path = ROOT / (module.replace(".", "/") + ".py")
        imports = _tfyarn_imports(ast.parse(path.read_text(encoding="utf-8")))
        assert "tfyarn.doctor" not in imports, f"{path} imports tfyarn.doctor (a cycle)"


def test_doctor_lists_every_check_in_report_order() -> None:
    from tfyarn import doctor

    assert [fn.__name__ for fn in doctor.CHECKS] == [
        "check_python",
        "check_java",
        "check_spark",
        "check_tensorflow",
        "check_rdma",
        "check_exchange",
        "check_yarn",
        "check_transports",
    ]
    assert doctor.Check is __import__("tfyarn.diagnosis", fromlist=["Check"]).Check


def test_a_crashing_check_is_reported_not_raised() -> None:
    from tfyarn.diagnosis import Check
    from tfyarn.doctor import run_checks

    def check_broken() -> list[Check]:
        raise RuntimeError("boom")

    assert run_checks([check_broken]) == [
        Check("check_broken", False, "check crashed: RuntimeError('boom')", "report a bug")
    ]


def test_a_check_needs_a_name() -> None:
    from tfyarn.diagnosis import Check

    with pytest.raises(ValueError, match="needs a name"):
        Check("", True, "found")
