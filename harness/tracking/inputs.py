"""What MLflow's UI and tooling read off a run, written the way MLflow defines it: the source (system tags), the
data (a dataset input), the model (an MLflow PyTorch model) and the descriptions (`mlflow.note.content`).

Our own tags (`git_commit`, `data_id`, ...) stay for the reports and for finding runs again; these make the
Source, Dataset and Model columns of the runs list, run filtering by dataset and `mlflow.pytorch.load_model(
"runs:/<id>/model")` work as MLflow users expect.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow.data
import mlflow.pytorch
import numpy as np
import torch
from mlflow.data.sources import HTTPDatasetSource, LocalArtifactDatasetSource
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from harness.core.data_tag import DataTag
from harness.core.groups import load_paper, note_of, paper_file

NOTE = "mlflow.note.content"  # the description MLflow's UI shows and edits, for experiments and runs alike
MODEL_NAME = "model"  # the model folder of a `run --offline` record
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # torchvision's tgz_md5 of that archive


def experiment_note(group: str) -> str:
    """What the group is; table6 adds the paper's figures (experiments/paper.yaml) it is compared with."""
    note = note_of(group)
    if group == "table6" and paper_file() is not None:
        paper = load_paper()
        figures = ", ".join(f"{k} {v}%" for k, v in paper.get("test_error", {}).items())
        note += f"\n\nPaper's test error ({paper.get('source', 'He et al. 2015')}): {figures}."
        if "resnet110_mean_std" in paper:
            mean, std = paper["resnet110_mean_std"]
            note += f" ResNet-110 mean±std of 5 runs: {mean}±{std}%."
    return note


def _source(data_id: str):
    """(name, digest, MLflow dataset source) of a data id. The digest is the file's SHA-256 prefix already in the
    data id, so nothing is hashed again; a cifar-10-batches-py folder holds torchvision's copy of the official
    archive, named by its URL and md5."""

    name, _, digest = data_id.partition(":")
    if digest:  # an .npz: name is the file's name
        return name, digest, LocalArtifactDatasetSource(name)
    return name, CIFAR10_MD5[:16], HTTPDatasetSource(CIFAR10_URL)


def _sizes_profile(sizes: dict[str, int]) -> dict[str, int]:
    return {f"{k}_size": v for k, v in sizes.items()}


CONTEXTS = {"train": "training", "val": "validation", "test": "evaluation"}  # each split's mlflow.data.context


def schema_of(x: np.ndarray, y: np.ndarray) -> str:
    """MLflow's schema of CIFAR-10 images and labels (uint8 32x32x3 features, integer targets), as its dataset
    panel shows it; read off two rows, so nothing is hashed."""
    return mlflow.data.from_numpy(x[:2], targets=y[:2], name="schema", digest="0").to_dict()["schema"]


def split_datasets(data_id: str, tag: DataTag, split_seed: int, schema: str | None) -> dict[str, dict[str, str]]:
    """The run's splits as MLflow datasets, by split (train, val, test; none for an empty split). MLflow keeps one
    dataset per experiment, name and digest and shows the first one logged under them, so each split is named as
    one (`cifar10-full.npz [train]`) and its digest is the file's with what selects the split: the split sizes and
    split seed for train and val, the size for test. A 45k/5k run and a 50k run of one file are then two training
    datasets, each with its own sizes in its profile."""
    name, digest, source = _source(data_id)
    selects = {"train": f"{tag.train}/{tag.val}/{split_seed}", "val": f"{tag.train}/{tag.val}/{split_seed}",
               "test": f"{tag.test}"}
    return {split: {"name": f"{name} [{split}]",
                    "digest": hashlib.sha256(f"{digest}:{split}:{selects[split]}".encode()).hexdigest()[:16],
                    "source_type": source._get_source_type(), "source": source.to_json(), "schema": schema,
                    "profile": json.dumps({"num_rows": n, **_sizes_profile(tag.sizes)})}
            for split, n in tag.sizes.items() if n}


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of the final weights (every state_dict tensor's name, dtype, shape and bytes, in order), which a
    record names (tag weights_sha256) so that weights kept elsewhere can be matched to their run; it does not
    depend on the file format the model is saved in."""

    h = hashlib.sha256()
    for k, v in ready(model).state_dict().items():
        t = v.detach().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def log_run_inputs(c, run_id: str, datasets: dict[str, dict[str, str]]) -> None:
    """One dataset input per split, in its context (training, validation, evaluation): the Dataset column, the
    run's dataset panel and `dataset.name` filters."""
    if not datasets:
        return
    keys = ("name", "digest", "source_type", "source", "schema", "profile")
    inputs = [DatasetInput(Dataset(**{k: ds.get(k) for k in keys}), tags=[InputTag("mlflow.data.context", CONTEXTS[s])])
              for s, ds in datasets.items()]
    for attempt in range(3):
        try:
            c.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as e:
            # MLflow looks the dataset up, then inserts it: runs of one batch (--jobs) starting together both miss
            # it and the second insert breaks the table's unique key. That attempt is rolled back; the next one
            # finds the dataset the other run wrote and links to it.
            if attempt == 2 or "unique" not in str(e).lower():
                raise


def _model_kwargs(model: torch.nn.Module) -> dict:
    """torch.export's pt2, so the model loads wherever mlflow and torch are installed (no `harness`, no pickle: a
    loaded file runs no code), with a signature (normalized NCHW images in the weights' dtype in, 10 logits out)
    and an input example of two blank images, enough to keep the batch dimension dynamic, small to store; MLflow's
    check of it by reloading the model at every log is skipped (the test of the logged model checks more). The
    pip requirements are given, not inferred: inference imports and pip-resolves the environment (slow, may reach
    the network)."""

    dtype = np.dtype(np.float64 if next(model.parameters()).dtype == torch.float64 else np.float32)
    signature = ModelSignature(inputs=Schema([TensorSpec(dtype, (-1, 3, 32, 32))]),
                               outputs=Schema([TensorSpec(dtype, (-1, 10))]))
    return {"signature": signature, "serialization_format": "pt2", "input_example": np.zeros((2, 3, 32, 32), dtype),
            "pip_requirements": [f"torch=={torch.__version__.split('+')[0]}", "mlflow"]}


def ready(model: torch.nn.Module) -> torch.nn.Module:
    """On the CPU (a GPU run's model loads anywhere) and in eval mode (what a loaded model is for)."""
    if hasattr(model, "_orig_mod"):  # torch.compile's wrapper pickles badly; the module underneath is the model
        model = model._orig_mod
    return model.cpu().eval()


def model_name(params: dict[str, str]) -> str:
    """The logged model's name, one a registry takes as it is: the architecture and depth (`resnet32`, `plain20`,
    `torchvision_resnet34`), from the run's params."""
    arch, depth = params.get("model.arch", "model"), params.get("model.depth", "")
    return arch if arch.endswith(depth) else f"{arch}{depth}"


@dataclass(frozen=True)
class ModelFacts:
    """What the logged model carries of its run, so that the Models tab compares models as the runs table compares
    runs: the run's params, and its final metrics each on the split's dataset it was measured on."""

    params: dict[str, str]
    final: dict[str, float]  # the last evaluation point: train_*, val_*, test_*
    datasets: dict[str, dict[str, str]]  # split -> its MLflow dataset (split_datasets)
    step: int  # the iteration they were measured at, whose points in the run's history they are


def log_final_model(c, run_id: str, model: torch.nn.Module, name: str, facts: ModelFacts) -> float:
    """The final weights as the run's MLflow PyTorch model `name` (`runs:/<run_id>/<name>`), with the run's params
    and final metrics; returns the seconds it took. The logged model is made in the run's experiment first: left to
    itself, log_model puts it in the process's active experiment (Default), where `runs:/` does not look for it."""
    t0 = time.perf_counter()
    _log_model(c, run_id, ready(model), name, facts)
    return time.perf_counter() - t0


def _log_model(c, run_id: str, model: torch.nn.Module, name: str, facts: ModelFacts) -> None:
    made = c.create_logged_model(c.get_run(run_id).info.experiment_id, name=name, source_run_id=run_id,
                                 params=facts.params)
    mlflow.pytorch.log_model(model, name=name, run_id=run_id, model_id=made.model_id, validate_serving_input=False,
                             **_model_kwargs(model))
    linked = []
    for key, value in facts.final.items():
        ds = facts.datasets.get(key.split("_")[0], {})
        if ds and key.endswith(("_error", "_loss")):
            at = _logged_point(c, run_id, key, facts.step) or Metric(key, float(value), int(time.time() * 1000),
                                                                     facts.step)
            linked.append(Metric(key, at.value, at.timestamp, at.step, model_id=made.model_id,
                                 dataset_name=ds["name"], dataset_digest=ds["digest"]))
    c.log_batch(run_id, metrics=linked)


def _logged_point(c, run_id: str, key: str, step: int) -> Metric | None:
    """The run's own point of `key` at `step`. The model's metric is logged with its value and time, so that the
    store takes it as that point (its key, step, time and value are the history's identity) and the run's history
    gets no second point at the last step."""
    return next((m for m in c.get_metric_history(run_id, key) if m.step == step), None)


def save_final_model(path: Path, model: torch.nn.Module) -> None:
    """The same MLflow model as a folder, for `run --offline`; `import` logs it. Written beside and renamed, so a
    killed run leaves the whole folder or none."""

    model = ready(model)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    mlflow.pytorch.save_model(model, str(tmp), **_model_kwargs(model))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def import_final_model(c, run_id: str, path: Path, name: str, facts: ModelFacts) -> None:
    """Log an offline run's saved MLflow model on its imported run, as a live run logs its model, with the same
    facts (a saved model is already on the CPU and in eval mode)."""

    _log_model(c, run_id, mlflow.pytorch.load_model(str(path)), name, facts)


SYSTEM_METRICS = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"  # MLflow's own switch; here on unless set false


def system_metrics(run_id: str, uri: str):
    """MLflow's system-metrics monitor on the run (CPU, memory, disk, network and, where pynvml sees one, GPU
    utilisation, as `system/...` metrics every 10 s or MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, from a thread of
    its own), or None where MLflow's variable is set false or psutil is missing (`run --no-system-metrics` does not
    call it). MLflow reads its variable only in fluent runs; the harness logs through MlflowClient, so it starts the
    monitor itself."""
    if os.environ.get(SYSTEM_METRICS, "true").lower() in ("false", "0", "no"):
        return None
    try:
        import psutil  # noqa: F401 - what MLflow's CPU and memory monitor reads
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:
        return None
    monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=uri)
    monitor.start()
    return monitor


def stop(monitor) -> None:
    """Its last samples logged, its thread gone, before the run is marked ended."""
    if monitor is not None:
        monitor.finish()
