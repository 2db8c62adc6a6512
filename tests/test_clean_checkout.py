"""Nothing a user runs writes into the checkout's tracked files: the README's 2-minute try and a tiny `tune`, run
in a fresh clone as a new user would, leave `git status` clean (records stay in the git-ignored MLflow store)."""

import os
import re
import subprocess
import sys

import pytest

from .helpers import ROOT


def _harness(clone, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HARNESS_"))}
    env.update(PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")  # this checkout's code, the clone's files
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=600)


def readme_try() -> list[str]:
    """The README's 2-minute try, as its arguments after `python -m harness`."""
    block = (ROOT / "README.md").read_text().split("## A 2-minute try on a CPU", 1)[1].split("```")[1]
    line = " ".join(block.replace("\\\n", " ").split("-m harness", 1)[1].split("\n", 1)[0].split())
    return re.findall(r"'[^']*'|\S+", line)


@pytest.mark.slow
def test_the_readme_try_and_a_tiny_tune_leave_a_fresh_clone_clean(tmp_path, mini):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    args = [a.strip("'") for a in readme_try()]
    assert args[:2] == ["run", "experiments/table6/resnet20.yaml"] and "--download" in args, args
    args = [a for a in args if a != "--download"]
    args[args.index("--data") + 1] = str(mini)  # mini data and a tiny budget: the same command, in seconds
    args[args.index("--budget") + 1] = "0.0005"
    p = _harness(clone, *args, "--set", "eval_points=2")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "FINISHED" in p.stderr
    p = _harness(clone, "tune", "experiments/tuning/resnet32.yaml", "--trials", "1", "--budget", "0.0005",
                 "--data", str(mini), "--set", "model.depth=8", "--set", "eval_points=2")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "best_trial=0" in p.stderr
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone,
                            capture_output=True, text=True, check=True).stdout
    assert status == "", status
    assert (clone / "mlruns" / "mlflow.db").is_file() and (clone / "mlruns" / "optuna.db").is_file()
