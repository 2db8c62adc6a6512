"""results/: every finished run as a committed JSON record, and the reports rebuilt from those records alone."""

import json
import re
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from harness.cli import main
from harness.tracking.experiments import group_experiments

from .faults import killed_after
from .helpers import ROOT, TINY


def runs_by_hash() -> dict[str, tuple]:
    c = MlflowClient()
    out = {}
    for exp in c.search_experiments():
        for r in c.search_runs([exp.experiment_id]):
            tags = {k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.") and k != "imported_from"}
            metrics = {k: v for k, v in r.data.metrics.items() if not k.startswith("system/")}  # not in records
            out[tags["spec_hash"]] = (r.info.status, r.info.run_name, metrics, tags, r.data.params)
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
    assert main(["run", str(exp / "table6"), str(exp / "ladder"), "--data", str(mini), "--no-progress",
                 "--publish"]) == 0
    results = store.parent / "results"
    files = sorted(results.rglob("*.json"))
    assert [f.relative_to(results).parent.name for f in files] == ["ladder", "ladder", "table6"]
    rec = json.loads(files[-1].read_text())
    assert re.fullmatch(r"resnet32-s0-[0-9a-f]{16}\.json", files[-1].name) and rec["format"] == 2
    assert files[-1].name.endswith(f"-{rec['tags']['spec_hash']}.json")
    assert files[-1].read_text() == json.dumps(rec, sort_keys=True, indent=1) + "\n"
    assert [h["step"] for h in rec["history"]] == [6, 12] and "test_error" in rec["final"]
    assert "timing/train_seconds" in rec["summary"] and "timing/images_per_s" in rec["final"]  # records as written
    assert not any(k.startswith("system/") for k in rec["summary"] | rec["final"])  # MLflow's names stay MLflow's
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
                         "cifar10-mini-b1/ladder.md", "cifar10-mini-b1/ladder.png", "cifar10-mini-b1/summary.md",
                         "cifar10-mini-b1/table6.csv",
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
    (folder / "b.json").write_text(json.dumps({**good, "format": 3}))
    assert main(["results", "import"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: results/table6/b.json: format: expected 1 or 2, found 3 (a newer harness wrote it?)"]
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
    lines = [ln for ln in p.stderr.strip().splitlines() if not ln.startswith("run: ")]  # the progress line before
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith("error: data: no CIFAR-10 here and the download failed (no internet? URLError")
    assert lines[0].endswith("put cifar-10-batches-py/ in data/ or pass DATA=path/to.npz (make), --data (harness)")
    assert not (tmp_path / "data").exists()


def test_the_committed_reports_come_back_byte_for_byte_from_the_committed_records(store, env_with):
    """What `make report` does on a fresh clone (results/ into a throw-away store, then `report --all`, each a
    command of its own) writes every committed page, figure, study page and the README's campaign block back
    unchanged, dates included: a page dated by the time of an import (a record that kept no run times) would change
    each day."""
    out = store.parent / "reports"
    shutil.copytree(ROOT / "reports", out)
    shutil.copy(ROOT / "README.md", store.parent / "README.md")
    shutil.copytree(ROOT / "results" / "tuning", store.parent / "results" / "tuning")  # the studies' pages too
    for args in (["results", "import", str(ROOT / "results")], ["report", "--all"]):
        p = subprocess.run([sys.executable, "-m", "harness", *args], env=env_with(), cwd=store.parent,
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-3000:]
    rebuilt = {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()}
    committed = {str(f.relative_to(ROOT / "reports")): f.read_bytes()
                 for f in sorted((ROOT / "reports").rglob("*")) if f.is_file()}
    assert sorted(rebuilt) == sorted(committed)
    assert [name for name in committed if rebuilt[name] != committed[name]] == []
    assert (store.parent / "README.md").read_bytes() == (ROOT / "README.md").read_bytes()


def test_publish_writes_each_record_as_its_run_finishes(store, mini_quarter, env_with, write_spec):
    """`run --publish` (and `table --publish`, `make cpu-table`): a run's record is in results/ as soon as the run
    finishes, so a batch killed in a later run (a machine gone mid-campaign, its store with it) keeps it."""
    folder = store.parent / "experiments" / "t"
    short = write_spec(folder, "a_short", TINY)
    long = write_spec(folder, "b_long", TINY.replace("total_iters: 12", "total_iters: 16"))
    p = subprocess.run([sys.executable, "-m", "harness", "run", str(short), str(long), "--data", str(mini_quarter),
                        "--no-progress", "--publish"], env=env_with(**killed_after(14)), cwd=store.parent,
                       capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]  # killed in b_long, before the batch's own export
    records = [json.loads(f.read_text()) for f in (store.parent / "results").rglob("*.json")]
    assert [(r["run_name"], r["status"]) for r in records] == [("a_short-s0", "FINISHED")], p.stderr[-3000:]
    assert "results: wrote " in p.stderr and "Downloading artifacts" not in p.stderr, p.stderr[-3000:]  # --no-progress


def test_readme_figures_are_the_reports():
    """README's "where it stands" is the reports' numbers, not a second typing of them, and calls the 45k-trained
    H100 figure what it is: error on the official test set, not "CIFAR-10 test error" (that needs all 50k)."""
    readme = (ROOT / "README.md").read_text()
    stands = readme.split("## Where it stands", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"trained on 45k of the 50k training images.*?\*\*(\d+\.\d\d) ± (\d+\.\d\d) % test error on\s+"
                  r"the official CIFAR-10 test set\*\* \(n=(\d+) seeds", stands, re.S)
    assert m, stands
    assert not re.search(r"CIFAR-10\s+test error\*\*", stands), stands
    row = pd.read_csv(ROOT / "reports/full-h100/table6.csv").set_index("model").loc["ResNet-32"]
    assert (float(m[1]), float(m[2]), int(m[3])) == (row.measured_mean, row.measured_std, row.n)
    paper = yaml.safe_load((ROOT / "experiments/paper.yaml").read_text())["test_error"]["resnet32"]
    assert f"beside the paper's {paper:.2f} % after training on all 50k" in " ".join(stands.split())
    for link in re.findall(r"\]\(((?:reports|docs)/[^)]+)\)", readme):
        assert (ROOT / link.split("#", 1)[0]).exists(), link
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


RESOLVED = ("seed", "budget", "group", "source_file")
COMMITTED = ROOT / "results" / "table6" / "resnet20-s0-b0.0005-9103120fb7e2d533.json"


def test_committed_records_keep_their_spec_hash_and_digest():
    """The spec hash of every committed record, recomputed from its resolved spec, seed, budget and data id, is the
    one in its name (a new spec field or check must not move it); each record matches its digest."""
    from harness.core.spec import RunSpec, Spec
    from harness.tracking.importing import check_record

    files = sorted((ROOT / "results").rglob("*.json"))
    assert COMMITTED in files
    for f in files:
        rec = json.loads(f.read_text())
        body = yaml.safe_load(rec["spec_yaml"])  # the resolved spec, with the run's seed, budget, group and file
        run = RunSpec(spec=Spec.model_validate({k: v for k, v in body.items() if k not in RESOLVED}),
                      **{k: body[k] for k in RESOLVED}, name=body["name"])
        assert f.name.endswith(f"-{run.spec_hash(rec['tags']['data_id'])}.json"), f
        assert rec["digest"].startswith("sha256:") and rec["tags"]["git_commit"] and rec["tags"]["data_id"]
        check_record(f)


def test_a_hand_edited_record_is_refused_before_anything_is_imported(store, capsys):
    """`results import` (and so `make report`) never reports a record whose numbers were changed by hand."""
    folder = store.parent / "results" / "table6"
    folder.mkdir(parents=True)
    rec = json.loads(COMMITTED.read_text())
    rec["final"]["test_error"] -= 10  # a better number, typed in
    edited = folder / COMMITTED.name
    edited.write_text(json.dumps(rec, sort_keys=True, indent=1) + "\n")
    assert main(["results", "import"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: results/table6/{COMMITTED.name}: digest: the content no longer matches it (edited by "
                   "hand?); expected the record as its run wrote it: export it again from the run's store, or rerun "
                   "the run"], err
    assert not (store / "mlflow.db").exists()


@pytest.mark.parametrize("field,value", [("group", "../x"), ("run_name", "../../evil-s0"), ("group", "/tmp")])
def test_a_record_whose_names_climb_out_is_refused(field, value, store, capsys):
    """A record's group and run_name become results/<group>/<run_name>-<hash>.json on the next export: a name
    that leaves results/ is refused on import, digest or not, naming the file and the field."""
    from harness.tracking.run_facts import content_digest

    folder = store.parent / "results" / "table6"
    folder.mkdir(parents=True)
    rec = {**json.loads(COMMITTED.read_text()), field: value}
    (folder / "a.json").write_text(json.dumps({**rec, "digest": content_digest(rec)}))
    assert main(["results", "import"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: results/table6/a.json: {field}: ") and repr(value) in err[0]
    assert not (store / "mlflow.db").exists()


def test_an_export_never_writes_outside_its_folder(tmp_path):
    """The store's own names (an experiment called `..`, a link inside results/) cannot lead a record elsewhere."""
    from harness.errors import UserError
    from harness.tracking.records import record_path, write_record

    rec = json.loads(COMMITTED.read_text())
    with pytest.raises(UserError, match=r"run 'resnet20-s0-b0.0005': group: .* got '\.\.'"):
        record_path(tmp_path / "results", {**rec, "group": ".."})
    (tmp_path / "results").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "results" / "table6").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="outside"):
        write_record(tmp_path / "results", rec)
    assert not list((tmp_path / "elsewhere").iterdir())


def test_a_format_1_record_imports_as_the_run_mlflow_showed_and_exports_as_format_2(store, monkeypatch):
    """What MLflow's runs list shows of a trained run (duration, description, source, dataset) an imported one
    shows too, from a committed format-1 record. Its start and end are the import's (MLflow needs some), and a tag
    says so; its export is format 2 and claims no times, so a re-import dates it no more than the first did."""
    old = json.loads(COMMITTED.read_text())
    assert old["format"] == 1
    assert main(["results", "import", str(COMMITTED)]) == 0
    c = MlflowClient()
    (r,) = c.search_runs(group_experiments(c, "table6"))
    seconds = (r.info.end_time - r.info.start_time) / 1000
    assert abs(seconds - old["summary"]["train_seconds"]) < 1  # not the import's own second
    assert r.data.tags["run_times"].startswith("unrecorded")
    assert r.data.tags["mlflow.note.content"] == yaml.safe_load(old["spec_yaml"])["description"]
    assert r.data.tags["mlflow.source.git.commit"] == old["tags"]["git_commit"]
    assert r.data.tags["mlflow.source.name"] == "python -m harness"
    ds = {d.dataset.name: d.dataset for d in r.inputs.dataset_inputs}  # train and test: the record's split had no val
    assert sorted(ds) == ["cifar10-mini.npz [test]", "cifar10-mini.npz [train]"]
    assert json.loads(ds["cifar10-mini.npz [train]"].profile) == {"num_rows": 4068, "train_size": 4068,
                                                                  "val_size": 0, "test_size": 1017}
    assert "system/train_seconds" in r.data.metrics and "system/images_per_s" in r.data.metrics
    assert not {"images_per_s", "train_seconds", "final_iteration"} & set(r.data.metrics)
    assert "optimizer.betas" not in r.data.params and "None" not in r.data.params.values()
    assert r.data.params["optimizer.momentum"] == "0.9" and "heavy" not in r.data.params

    assert main(["results", "export", "--dir", "out"]) == 0
    (path,) = (store.parent / "out").rglob("*.json")
    assert path.name == COMMITTED.name  # same spec_hash: the same file name
    new = json.loads(path.read_text())
    assert new["format"] == 2 and (new["start_time"], new["end_time"]) == (None, None)
    assert "run_times" not in new["tags"] and new["final"]["test_error"] == old["final"]["test_error"]
    assert new["dataset"]["name"] == "cifar10-mini.npz [train]" and "mlflow.note.content" in new["tags"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store.parent}/again/mlflow.db")
    assert main(["results", "import", str(path)]) == 0
    c = MlflowClient()
    (again,) = c.search_runs(group_experiments(c, "table6"))
    assert abs((again.info.end_time - again.info.start_time) / 1000 - seconds) < 1
    assert again.data.tags["run_times"] == r.data.tags["run_times"]
    assert again.data.tags["mlflow.note.content"] == r.data.tags["mlflow.note.content"]


def test_readme_names_as_unmeasured_each_group_with_no_record():
    """README's "Where it stands" claims only what a record or a committed page backs: a group of specs with no
    record in results/ is listed as unmeasured, and no run time is typed (each comes from a record, per machine)."""
    stands = (ROOT / "README.md").read_text().split("## Where it stands", 1)[1].split("\n## ", 1)[0]
    unmeasured = stands.split("Unmeasured so far", 1)[1].split("GPU time.", 1)[0]
    for group, words in (("ladder", "ladder"), ("tuned", "tuned schedule")):
        if not list((ROOT / "results" / group).glob("*.json")):
            assert words in unmeasured, group
    assert not re.search(r"\d+\s*[–-]\s*\d+ h on a", (ROOT / "README.md").read_text())  # no typed machine times


def test_an_older_record_imports_with_the_params_and_tags_its_run_had(store):
    """A committed record written before model.init was a param gets it (the value its run trained with) on import,
    as the identity tags it lacks: two seeds of one spec compare alike in MLflow whatever harness recorded them."""
    from harness.tracking.importing import import_results

    old = ROOT / "results" / "table6" / "resnet20-s0-b0.03125-d693b0f8852db80c.json"
    assert "model.init" not in json.loads(old.read_text())["params"]  # what the test is about
    assert import_results([old]) == 0
    c = MlflowClient()
    (r,) = c.search_runs(group_experiments(c, "table6"))
    assert r.data.params["model.init"] == "he" and r.data.params["model.depth"] == "20"
    assert (r.data.tags["official_test_set"], r.data.tags["tested_on_official"]) == ("false", "true")
    assert r.data.tags["spec_hash"] == "d693b0f8852db80c"  # its identity is the record's own
