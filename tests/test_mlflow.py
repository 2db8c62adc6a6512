"""MLflow as its users see it: an unreachable store fails fast, and runs carry MLflow's own source tags, dataset
input, logged model and descriptions, read back through a real `mlflow server`'s REST API."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from harness.cli import main
from harness.core.data import load_arrays, to_device
from harness.core.spec import load_spec
from harness.core.train import param_dtype
from harness.errors import UserError
from harness.tracking.experiments import group_experiments
from harness.tracking.store import check_store, environ

from .helpers import ROOT, TINY

DEAD = "http://127.0.0.1:1"  # nothing listens on port 1
FAST = TINY.replace("milestones: [8, 10], total_iters: 12", "milestones: [4, 5], total_iters: 6").replace(
    "eval_points: 4", "eval_points: 2")


@pytest.mark.parametrize("command", ["run", "table", "tune", "report", "import"])
def test_an_unreachable_store_is_one_line_and_exit_2_in_seconds(command, tmp_path, env_with, write_spec):
    """MLflow's own HTTP retries take minutes; the check up front says which URI and what failed, before any data
    is loaded (the --data named here does not exist, so a data error would mean the data came first)."""
    spec = write_spec(tmp_path / "experiments" / "t", "tiny", TINY + "tune: {lr: [0.01, 0.3]}\n")
    missing = str(tmp_path / "missing.npz")
    args = {"run": ["run", str(spec), "--data", missing], "table": ["table", str(spec.parent), "--data", missing],
            "tune": ["tune", str(spec), "--trials", "1", "--data", missing, "--storage", "journal:j.log"],
            "report": ["report"], "import": ["import", str(tmp_path / "records")]}[command]
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "harness", *args], cwd=tmp_path, capture_output=True, text=True,
                       env=env_with(MLFLOW_TRACKING_URI=DEAD), timeout=120)
    took = time.monotonic() - t0
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: MLFLOW_TRACKING_URI={DEAD}: "), p.stderr
    assert "refused" in lines[0].lower() and took < 60, (took, lines)
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "j.log").exists()  # nothing half-written


def test_a_switch_set_for_one_block_is_restored_or_removed_after_it(monkeypatch):
    monkeypatch.setenv("HARNESS_TEST_KEPT", "before")
    monkeypatch.delenv("HARNESS_TEST_NEW", raising=False)
    with contextlib.suppress(RuntimeError), environ(HARNESS_TEST_KEPT="inside", HARNESS_TEST_NEW="inside"):
        assert (os.environ["HARNESS_TEST_KEPT"], os.environ["HARNESS_TEST_NEW"]) == ("inside", "inside")
        raise RuntimeError  # a failing block restores them too
    assert os.environ["HARNESS_TEST_KEPT"] == "before" and "HARNESS_TEST_NEW" not in os.environ


def test_an_unreachable_database_is_one_line():
    with pytest.raises(UserError, match=r"MLFLOW_TRACKING_URI=postgresql\+psycopg2://u@127\.0\.0\.1:1/db: .*refused"):
        check_store("postgresql+psycopg2://u@127.0.0.1:1/db")


@contextlib.contextmanager
def mlflow_server(uri: str, cwd, port: int, env: dict[str, str]):
    """`mlflow server` on 127.0.0.1 over the test's store, stopped by its process group (it forks workers)."""
    p = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host",
                          "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=cwd, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(240):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(base + "/health", timeout=2).close()
                break
            assert p.poll() is None, "mlflow server exited"
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _get(base: str, path: str, **query) -> dict:
    with urllib.request.urlopen(f"{base}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}", timeout=30) as r:
        return json.loads(r.read())


def _post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


LOAD_WITHOUT_HARNESS = """
import sys
sys.modules["harness"] = None  # `import harness` fails here, whatever the environment has installed
import mlflow.pytorch, numpy as np, torch
model = mlflow.pytorch.load_model(sys.argv[1])
x, y = torch.from_numpy(np.load(sys.argv[2])), torch.from_numpy(np.load(sys.argv[3]))
wrong = sum(int((model(x[i:i + 1000]).argmax(1) != y[i:i + 1000]).sum()) for i in range(0, len(y), 1000))
print(100.0 * wrong / len(y))
"""


def _test_error_of_logged_model(uri: str, spec_path, npz, tmp_path) -> float:
    """The logged model, loaded as any MLflow user would where only mlflow and torch are installed (a subprocess
    in which `harness` cannot be imported), evaluated on the run's own test split normalized here."""
    from harness.core.data import normalize

    spec = load_spec(spec_path)
    data = to_device(load_arrays(npz), spec.data, torch.device("cpu"), param_dtype(spec))
    np.save(tmp_path / "x.npy", normalize(data.x_test, data.eval_mean, data.dtype).numpy())
    np.save(tmp_path / "y.npy", data.y_test.numpy())
    p = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_HARNESS, uri, str(tmp_path / "x.npy"),
                        str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert p.returncode == 0, p.stderr[-3000:]
    return float(p.stdout.split()[-1])


def test_the_logged_model_loads_where_harness_cannot_be_imported(store, mini_quarter, tmp_path, write_spec):
    """`mlflow.pytorch.load_model` with only mlflow and torch: the model is named by its architecture and depth,
    and gives the run's own test error."""
    spec = write_spec(tmp_path / "experiments" / "table6", "tiny", FAST)
    assert main(["run", str(spec), "--data", str(mini_quarter), "--no-progress"]) == 0
    (r,) = MlflowClient().search_runs(group_experiments(MlflowClient(), "table6"))
    error = _test_error_of_logged_model(f"runs:/{r.info.run_id}/resnet8", spec, mini_quarter, tmp_path)
    assert error == pytest.approx(r.data.metrics["test_error"])


@pytest.mark.slow
def test_runs_show_source_dataset_model_and_descriptions_through_the_rest_api(store, mini, tmp_path, write_spec,
                                                                              env_with, free_port):
    spec = write_spec(tmp_path / "experiments" / "table6", "tiny", "description: depth 8, a test\n" + FAST)
    other = write_spec(tmp_path / "experiments" / "ablations", "tiny_offline", FAST.replace("[0]", "[1]"))
    assert main(["run", str(spec), "--data", str(mini), "--no-progress"]) == 0
    assert main(["run", str(other), "--data", str(mini), "--no-progress", "--offline", str(tmp_path / "rec")]) == 0
    assert main(["import", str(tmp_path / "rec")]) == 0
    c = MlflowClient()
    runs = {g: c.search_runs(group_experiments(c, g))[0] for g in ("table6", "ablations")}
    for g, path in (("table6", spec), ("ablations", other)):  # the model logged by `run` and by `import`
        error = _test_error_of_logged_model(f"runs:/{runs[g].info.run_id}/resnet8", path, mini, tmp_path)
        assert error == pytest.approx(runs[g].data.metrics["test_error"])

    uri = os.environ["MLFLOW_TRACKING_URI"]
    with mlflow_server(uri, tmp_path, free_port(), env_with(MLFLOW_TRACKING_URI=uri)) as base:
        run = _get(base, "runs/get", run_id=runs["table6"].info.run_id)["run"]
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        inputs = {t["value"]: d["dataset"] for d in run["inputs"]["dataset_inputs"] for t in d["tags"]
                  if t["key"] == "mlflow.data.context"}
        (out,) = run["outputs"]["model_outputs"]
        model = _get(base, f"logged-models/{out['model_id']}")["model"]
        found = _post(base, "runs/search", {"experiment_ids": [run["info"]["experiment_id"]],
                                            "filter": "dataset.name = 'cifar10-mini.npz [train]'"})
        exp = _get(base, "experiments/get-by-name",
                   experiment_name="table6 · cifar10-mini.npz · budget 1")["experiment"]
        imported = _get(base, "runs/get", run_id=runs["ablations"].info.run_id)["run"]
    assert tags["mlflow.source.type"] == "LOCAL" and len(tags["mlflow.source.git.commit"]) >= 7
    assert tags["mlflow.note.content"].startswith("depth 8, a test\n\nThis run: seed 0; 6 iterations of batch 32")
    assert set(inputs) == {"training", "validation", "evaluation"}  # one dataset per split, each in its context
    assert [inputs[c]["name"] for c in ("training", "validation", "evaluation")] == \
        ["cifar10-mini.npz [train]", "cifar10-mini.npz [val]", "cifar10-mini.npz [test]"]
    profile = json.loads(inputs["training"]["profile"])
    assert (profile["num_rows"], profile["train_size"], profile["val_size"], profile["test_size"]) == \
        (3661, 3661, 407, 1017)
    assert inputs["training"]["schema"]  # the panel shows the features and targets
    assert model["info"]["name"] == "resnet8" and model["info"]["source_run_id"] == runs["table6"].info.run_id
    model_params = {p["key"]: p["value"] for p in model["data"]["params"]}
    model_metrics = {m["key"]: m for m in model["data"]["metrics"]}
    assert model_params["model.arch"] == "resnet" and model_params["optimizer.lr"] == "0.1"
    assert model_metrics["test_error"]["value"] == pytest.approx(runs["table6"].data.metrics["test_error"])
    assert model_metrics["test_error"]["dataset_name"] == "cifar10-mini.npz [test]"
    assert [r["info"]["run_id"] for r in found["runs"]] == [runs["table6"].info.run_id]
    assert "7.51" in {t["key"]: t["value"] for t in exp["tags"]}["mlflow.note.content"]  # the paper's ResNet-32
    assert imported["inputs"]["dataset_inputs"] and imported["outputs"]["model_outputs"]
    info = imported["info"]  # the offline run's own times, not the import's
    assert int(info["end_time"]) - int(info["start_time"]) >= 1000 * runs["ablations"].data.metrics[
        "system/train_seconds"]


def test_tune_and_every_group_get_a_description(store):
    from harness.tracking import store as tracking

    c = tracking.client()
    notes = {g: c.get_experiment(tracking.experiment_id(c, g)).tags["mlflow.note.content"]
             for g in ("table6", "ablations", "ladder", "tuning", "tuned")}
    assert len(set(notes.values())) == 5 and "validation split" in notes["tuning"]
    assert str(ROOT) not in notes["table6"] and "resnet32 7.51%" in notes["table6"]  # the paper's figures it faces


def test_tune_plots_of_a_small_study_are_drawn_without_warnings(store, tmp_path):
    """A small study (two trials, one value) makes Optuna 5's PED-ANOVA and matplotlib warn; tune's plots are as
    quiet under Optuna 5 as under 4 (where matplotlib's equal-ylim warning shows too)."""
    import warnings

    import matplotlib
    import optuna

    from harness.tracking import store as tracking
    from harness.tune.command import _plots

    def objective(t):
        if t.suggest_categorical("family", ["multistep", "cosine"]) == "multistep":
            t.suggest_float("gamma", 0.05, 0.5, log=True)
        t.suggest_float("lr", 1e-5, 0.3, log=True)
        return 50.0

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=2)
    c = tracking.client()
    parent = c.create_run(tracking.experiment_id(c, "tuning")).info.run_id
    style = {k: matplotlib.rcParams[k] for k in ("axes.facecolor", "axes.grid", "axes.prop_cycle")}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _plots(c, parent, study, tmp_path / "plots")
    assert [str(w.message) for w in seen if issubclass(w.category, UserWarning)] == []
    # Optuna draws in its ggplot style; the campaign figures a later `report` draws in this process keep theirs
    assert {k: matplotlib.rcParams[k] for k in style} == style
    assert {"optimization_history.png", "parallel_coordinate.png"} <= {p.name for p in (tmp_path / "plots").iterdir()}


def test_two_runs_that_log_one_dataset_at_once_both_get_it(store, monkeypatch):
    """Runs of one batch (--jobs) start together and log the same dataset: MLflow looks it up, misses it in both,
    and the second insert breaks the datasets table's unique key (seen with 4 processes on one SQLite store). The
    fault is injected as MLflow raises it, after the other run's insert; the run still gets its dataset input."""
    from mlflow.exceptions import MlflowException

    from harness.tracking.inputs import log_run_inputs
    from harness.tracking.store import client

    c = client()
    exp = c.create_experiment("t")
    first, second = c.create_run(exp).info.run_id, c.create_run(exp).info.run_id
    ds = {"name": "cifar10-mini.npz", "digest": "0123abcd", "source_type": "local", "source": "mini.npz"}
    original, raced = MlflowClient.log_inputs, []

    def racing(self, run_id, datasets=None, models=None):
        if not raced:  # the other run's insert lands between this one's lookup and insert
            raced.append(run_id)
            original(self, second, datasets=datasets)
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                                  "datasets.name, datasets.digest")
        return original(self, run_id, datasets=datasets, models=models)

    monkeypatch.setattr(MlflowClient, "log_inputs", racing)
    log_run_inputs(c, first, {"train": ds})
    got = {r: [d.dataset.digest for d in c.get_run(r).inputs.dataset_inputs] for r in (first, second)}
    assert raced == [first] and got == {first: ["0123abcd"], second: ["0123abcd"]}, got
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST|not found|No run"):
        log_run_inputs(c, "0" * 32, {"train": ds})  # any other error still raises


def test_an_experiment_holds_one_data_set_and_budget(store, mini, write_spec):
    """The paper's setting keeps the group's name; another budget or data file is an experiment of its own, tagged
    with its group, so the reports still find every run of the group."""
    from harness.core.data_tag import DataTag
    from harness.tracking.experiments import experiment_name

    full = DataTag("cifar10-full.npz", 45000, 5000, 10000, official=True)
    assert experiment_name("table6", full, 1.0) == "table6"
    assert experiment_name("table6", full, 0.0625) == "table6 · cifar10-full.npz · budget 0.0625"
    assert experiment_name("table6", DataTag("cifar10-mini.npz", 4068, 0, 1017), 1.0) == \
        "table6 · cifar10-mini.npz · budget 1"
    spec = write_spec(store.parent / "experiments" / "t", "a")
    assert main(["run", str(spec), "--data", str(mini), "--no-progress", "--budget", "0.5"]) == 0
    c = MlflowClient()
    (exp,) = [e for e in c.search_experiments() if e.tags.get("group") == "t"]
    assert exp.name == "t · cifar10-mini.npz · budget 0.5" and exp.tags["budget"] == "0.5"
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's model-training view
    assert [r.info.run_name for r in c.search_runs(group_experiments(c, "t"))] == ["a-s0-b0.5"]


def test_a_runs_inputs_model_and_description_say_what_it_trained(store, mini, write_spec):
    """Each split is its own MLflow dataset (two splits of one file are two training datasets, each with its own
    sizes); the logged model carries the run's params and final metrics on their datasets (the Models tab compares
    them); the description says the run's own iteration counts at its budget."""
    folder = store.parent / "experiments" / "t"
    a = write_spec(folder, "a", "description: 'lr /10 at 32k and 48k (§4.2)'\n" + TINY)
    b = write_spec(folder, "b", TINY.replace("val_fraction: 0.1", "val_fraction: 0.2"))
    assert main(["run", str(a), str(b), "--data", str(mini), "--no-progress", "--budget", "0.5"]) == 0
    c = MlflowClient()
    runs = {r.info.run_name: r for r in c.search_runs(group_experiments(c, "t"))}
    train = {}
    for name, r in runs.items():
        by_context = {t.value: d.dataset for d in r.inputs.dataset_inputs for t in d.tags}
        assert set(by_context) == {"training", "validation", "evaluation"}
        train[name] = by_context["training"]
    assert train["a-s0-b0.5"].name == train["b-s0-b0.5"].name == "cifar10-mini.npz [train]"
    assert train["a-s0-b0.5"].digest != train["b-s0-b0.5"].digest  # MLflow keeps one entry per name and digest
    assert json.loads(train["b-s0-b0.5"].profile)["num_rows"] == 3254
    note = runs["a-s0-b0.5"].data.tags["mlflow.note.content"]
    assert note.startswith("lr /10 at 32k and 48k (§4.2)\n\nThis run: seed 0; 6 iterations of batch 32")
    assert "budget 0.5" in note
    spec_yaml = mlflow.artifacts.load_text(f"{runs['a-s0-b0.5'].info.artifact_uri}/spec.yaml")
    assert "§4.2" in spec_yaml  # not its escape
    assert runs["a-s0-b0.5"].data.tags["mlflow.user"]  # MLflow's "Created by"
    models = c.search_logged_models(experiment_ids=[runs["a-s0-b0.5"].info.experiment_id])
    assert len(models) == 2
    for m in models:
        run = runs[next(n for n, r in runs.items() if r.info.run_id == m.source_run_id)]
        assert m.params["schedule.total_iters"] == "6" and m.params["data.val_fraction"] == \
            run.data.params["data.val_fraction"]
        test = next(x for x in m.metrics if x.key == "test_error")
        assert test.value == pytest.approx(run.data.metrics["test_error"]) and test.dataset_name == \
            "cifar10-mini.npz [test]"

