"""The import rule that the folders draw: cli -> commands (run, tune, bench, report) -> batch -> tracking -> core.

Commands sit side by side and never import one another; a lower layer never imports a higher one. The rule is read
from the source (every `import harness...` / `from harness... import`), so it holds for imports inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "harness"
LAYER = {"errors": 0, "core": 1, "parser": 0, "tracking": 2, "batch": 3, "run": 4, "tune": 4, "bench": 4, "report": 4,
         "cli": 5, "__main__": 5, "__init__": 0}
COMMANDS = {"run", "tune", "bench", "report"}


def place(module: str) -> str:
    """'harness.core.train' -> 'core'; 'harness.cli' -> 'cli'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def harness_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every harness module that `path` imports, `from harness.x import y` read as harness.x.y
    where y is a module of the package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("harness")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harness"):
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def violations(root: Path) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        here = place(".".join(rel.parts))
        for line, target in harness_imports(path):
            there = place(target)
            if there not in LAYER:
                there = target.split(".")[1]
            up = LAYER.get(there, 0) > LAYER[here]
            sideways = here in COMMANDS and there in COMMANDS and here != there
            if up or sideways:
                bad.append(f"{path.relative_to(root.parent)}:{line}: {here} imports {target} ({there})")
    return bad


def test_every_module_sits_in_a_known_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    files = {p.stem for p in PACKAGE.glob("*.py")}
    assert folders | files <= set(LAYER), f"new place(s) without a layer: {(folders | files) - set(LAYER)}"


def test_no_layer_imports_a_higher_one_or_a_sibling_command():
    assert violations(PACKAGE) == []


@pytest.mark.parametrize(("where", "source"), [
    ("core/leak.py", "from harness.tracking import store\n"),
    ("tracking/leak.py", "def f():\n    from harness.batch.dispatch import run_batch\n"),
    ("report/leak.py", "import harness.bench.render\n"),
    ("batch/leak.py", "from harness.run.table import table\n"),
])
def test_the_rule_catches_an_import_running_back_up(tmp_path, where, source):
    root = tmp_path / "harness"
    (root / where).parent.mkdir(parents=True)
    (root / where).write_text(source)
    assert len(violations(root)) == 1


def environment_writes(root: Path) -> list[str]:
    """Every write of a HARNESS_ variable into os.environ (`os.environ[K] = ...`, `.setdefault`, `.update`): values
    cross modules as arguments, and the environment stays what a user (or Ray, for its tasks) sets."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            keys = []
            if isinstance(node, ast.Assign):
                keys = [t.slice for t in node.targets if isinstance(t, ast.Subscript) and "environ" in ast.unparse(t)]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("setdefault", "update", "__setitem__") and "environ" in ast.unparse(node.func):
                keys = node.args[:1] + [k.value for k in node.keywords]
            found += [f"{path.relative_to(root.parent)}:{node.lineno}" for k in keys if "HARNESS_" in ast.unparse(k)]
    return found


def test_no_module_passes_a_value_through_the_environment():
    assert environment_writes(PACKAGE) == []


@pytest.mark.parametrize("source", ['import os\nos.environ["HARNESS_X"] = "1"\n',
                                    'import os\nos.environ.setdefault("HARNESS_X", "1")\n'])
def test_the_environment_check_catches_a_write(tmp_path, source):
    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "leak.py").write_text(source)
    assert len(environment_writes(tmp_path / "harness")) == 1


def test_checking_a_spec_loads_no_torch():
    """The registries a spec is checked against are plain data (harness.core.archs, harness.core.families): the
    schema, and `validate` on every shipped spec, run without importing torch."""
    import subprocess
    import sys

    code = ("import runpy, sys, io, contextlib\n"
            "import harness.core.schema, harness.core.campaign_file\n"
            "assert 'torch' not in sys.modules, 'schema'\n"
            "sys.argv = ['harness', 'validate', 'experiments']\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n"
            "        runpy.run_module('harness', run_name='__main__')\n"
            "    except SystemExit as e:\n"
            "        assert not e.code, e.code\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'mlflow')))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stderr[-2000:] + p.stdout
