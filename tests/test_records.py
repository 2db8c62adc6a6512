"""results/: every finished run as a committed JSON record, and the reports rebuilt from those records alone."""

import json
import re
import shutil
import subprocess
import sys

import pandas as pd
import yaml
from mlflow import MlflowClient

from harness.cli import main

from .helpers import ROOT, TINY


def runs_by_hash() -> dict[str, tuple]:
    c = MlflowClient()
    out = {}
    for exp in c.search_experiments():
        for r in c.search_runs([exp.experiment_id]):
            tags = {k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.") and k != "imported_from"}
            out[tags["spec_hash"]] = (r.info.status, r.info.run_name, r.data.metrics, tags, r.data.params)
    return out


def pages(folder) -> dict[str, bytes]:
    """Every file under a reports folder, the date lines (when it was written) taken out."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.suffix == ".md":
                data = re.sub(rb"- Date: \d{4}-\d\d-\d\d", b"- Date: D", data)
            out[str(p.relative_to(folder))] = data
    return out


def test_results_round_trip_and_reports_from_results_alone(store, mini, monkeypatch, capsys, write_spec):
    """Real tiny runs -> results/ -> a fresh store: same runs, same reports, importing twice imports once, and
    exporting the fresh store writes the same bytes (no churn in git)."""
    exp = store.parent / "experiments"
    exp.mkdir(parents=True)
    shutil.copy(ROOT / "experiments/paper.yaml", exp / "paper.yaml")
    tiny = TINY.replace("eval_points: 4", "eval_points: 2")  # evaluations are most of a tiny run's time
    write_spec(exp / "table6", "resnet32", tiny)
    write_spec(exp / "ladder", "2_split", "description: Rung 2, split\n" + tiny.replace("lr: 0.1", "lr: 0.05"))
    write_spec(exp / "ladder", "10_data", "description: Rung 10, data\n" + tiny.replace("lr: 0.1", "lr: 0.02"))
    assert main(["run", str(exp / "table6"), str(exp / "ladder"), "--data", str(mini), "--no-progress"]) == 0
    results = store.parent / "results"
    files = sorted(results.rglob("*.json"))
    assert [f.relative_to(results).parent.name for f in files] == ["ladder", "ladder", "table6"]
    rec = json.loads(files[-1].read_text())
    assert re.fullmatch(r"resnet32-s0-[0-9a-f]{16}\.json", files[-1].name) and rec["format"] == 1
    assert files[-1].name.endswith(f"-{rec['tags']['spec_hash']}.json")
    assert files[-1].read_text() == json.dumps(rec, sort_keys=True, indent=1) + "\n"
    assert [h["step"] for h in rec["history"]] == [6, 12] and "test_error" in rec["final"]
    assert yaml.safe_load(rec["spec_yaml"])["model"]["depth"] == 8 and not list(results.rglob("*.pt"))
    assert main(["report", "--all", "--out", "A"]) == 0
    original = runs_by_hash()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store.parent}/fresh/mlflow.db")
    capsys.readouterr()
    assert main(["results", "import"]) == 0
    assert "3 records: 3 imported" in capsys.readouterr().err
    assert runs_by_hash() == original  # same status, name, final metrics, tags and params per spec_hash
    assert main(["results", "import", "results"]) == 0  # idempotent: FINISHED spec_hashes are not imported again
    assert "3 records: 3 skipped" in capsys.readouterr().err
    assert len(runs_by_hash()) == 3 and sum(len(MlflowClient().search_runs([e.experiment_id])) for e in
                                            MlflowClient().search_experiments()) == 3
    before = {f: f.stat().st_mtime_ns for f in files}
    assert main(["results", "export"]) == 0
    assert "3 finished runs, 0 file(s) written" in capsys.readouterr().err
    assert {f: f.stat().st_mtime_ns for f in files} == before  # unchanged files untouched

    assert main(["report", "--all", "--out", "B"]) == 0
    a, b = pages(store.parent / "A"), pages(store.parent / "B")
    assert sorted(a) == ["README.md", "cifar10-mini-b1/curves_table6.png", "cifar10-mini-b1/error_vs_depth.png",
                         "cifar10-mini-b1/ladder.md", "cifar10-mini-b1/ladder.png", "cifar10-mini-b1/table6.csv",
                         "cifar10-mini-b1/table6.md"]
    assert a == b  # the report from results/ alone is the report from the original store, date lines aside
    lad = a["cifar10-mini-b1/ladder.md"].decode()
    assert lad.index("| 2_split |") < lad.index("| 10_data |") < lad.index("| paper_resnet32 |")  # 10 after 2
    assert "1. 10_data: Rung 10, data" in lad and "best-over-training (selected on test) |" in lad


def test_a_bad_record_is_one_line_and_nothing_is_imported(store, capsys):
    good = {"format": 1, "group": "table6", "run_name": "r-s0", "status": "FINISHED", "tags": {"spec_hash": "ab"},
            "params": {}, "spec_yaml": "", "history": [], "summary": {}, "final": {}}
    folder = store.parent / "results" / "table6"
    folder.mkdir(parents=True)
    (folder / "a.json").write_text(json.dumps(good))
    (folder / "b.json").write_text(json.dumps({**good, "format": 2}))
    assert main(["results", "import"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: results/table6/b.json: format: expected 1, found 2 (a newer harness wrote it?)"]
    (folder / "b.json").write_text(json.dumps({k: v for k, v in good.items() if k != "history"}))
    assert main(["results", "import"]) == 2
    assert "b.json: history: expected a list, found NoneType" in capsys.readouterr().err
    assert not (store / "mlflow.db").exists()  # every file is checked before the first is imported


def test_download_offline_is_one_line_and_leaves_nothing(tmp_path, env_with, write_spec):
    """The download through a proxy on a closed loopback port fails as it does offline, with no outside
    traffic; the user is told what to do in one line."""
    spec = write_spec(tmp_path / "specs", "r8")
    env = env_with(https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9", no_proxy="",
                   MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    p = subprocess.run([sys.executable, "-m", "harness", "run", str(spec), "--data", "data", "--download"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith("error: data: no CIFAR-10 here and the download failed (no internet? URLError")
    assert lines[0].endswith("put cifar-10-batches-py/ in data/ or pass DATA=path/to.npz (make), --data (harness)")
    assert not (tmp_path / "data").exists()


def test_readme_figures_are_the_reports():
    """README's "where it stands" is the reports' numbers, not a second typing of them."""
    readme = (ROOT / "README.md").read_text()
    stands = readme.split("## Where it stands", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"\*\*(\d+\.\d\d) ± (\d+\.\d\d) % CIFAR-10\s+test error\*\* \(n=(\d+) seeds", stands)
    assert m, stands
    row = pd.read_csv(ROOT / "reports/full-h100/table6.csv").set_index("model").loc["ResNet-32"]
    assert (float(m[1]), float(m[2]), int(m[3])) == (row.measured_mean, row.measured_std, row.n)
    paper = yaml.safe_load((ROOT / "experiments/paper.yaml").read_text())["test_error"]["resnet32"]
    assert f"against the paper's {paper:.2f} %" in " ".join(stands.split())
    for link in re.findall(r"\]\(((?:reports|docs)/[^)]+)\)", readme):
        assert (ROOT / link).exists(), link
    first = readme.split("```", 2)[1]
    assert "../shared" not in first and "make reproduce-table" in first
    top = (ROOT / "reports/full-h100/table6.md").read_text().splitlines()
    assert "records are lost" in " ".join(top[:6])  # the one page that cannot be rebuilt says so at its top
    index = (ROOT / "reports/README.md").read_text()
    assert index.index("full-h100/") < min((index.index(f"{d.name}/") for d in (ROOT / "reports").iterdir()
                                            if d.is_dir() and "-b0" in d.name), default=len(index))


def test_split_is_named_from_the_data_tag():
    from harness.report.campaign import split_of

    assert split_of("cifar10-full.npz train=50000 val=0 test=10000 (official test set)") == "50k"
    assert split_of("cifar10-full.npz train=45000 val=5000 test=10000") == "45k/5k"
    assert split_of("cifar10-mini.npz train=3661 val=407 test=1017") == "3661/407"
