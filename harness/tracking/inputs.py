"""What MLflow's UI and tooling read off a run, written the way MLflow defines it: the source (system tags), the
data (a dataset input), the model (an MLflow PyTorch model) and the descriptions (`mlflow.note.content`).

Our own tags (`git_commit`, `data_id`, ...) stay for the reports and for finding runs again; these make the
Source, Dataset and Model columns of the runs list, run filtering by dataset and `mlflow.pytorch.load_model(
"runs:/<id>/model")` work as MLflow users expect.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from harness.core.groups import load_paper, note_of, paper_file

NOTE = "mlflow.note.content"  # the description MLflow's UI shows and edits, for experiments and runs alike
MODEL_NAME = "model"  # runs:/<run_id>/model
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


def dataset(x: np.ndarray, y: np.ndarray, data_id: str, sizes: dict[str, int]) -> dict[str, str]:
    """The run's data as an MLflow dataset (name, digest, source, schema, profile), as a plain dict so that an
    offline record carries it to `import`. The digest is the file's SHA-256 prefix already in the data id, so
    nothing is hashed again; the profile holds the split sizes the run trained, validated and tested on."""
    import mlflow.data
    from mlflow.data.sources import HTTPDatasetSource, LocalArtifactDatasetSource

    name, _, digest = data_id.partition(":")
    if digest:  # an .npz: name is the file's name
        source = LocalArtifactDatasetSource(name)
    else:  # a cifar-10-batches-py folder holds torchvision's copy of the official archive
        source, digest = HTTPDatasetSource(CIFAR10_URL), CIFAR10_MD5[:16]
    ds = mlflow.data.from_numpy(x, source=source, targets=y, name=name, digest=digest)
    out = ds.to_dict()
    out["profile"] = json.dumps({**json.loads(out.get("profile") or "{}"), **{f"{k}_size": v for k, v in
                                                                            sizes.items()}})
    return out


def log_run_inputs(c, run_id: str, ds: dict[str, str] | None) -> None:
    """One dataset input per run, in context `training`: the Dataset column and `dataset.name` filters."""
    if not ds:
        return
    from mlflow.entities import Dataset, DatasetInput, InputTag

    keys = ("name", "digest", "source_type", "source", "schema", "profile")
    c.log_inputs(run_id, datasets=[DatasetInput(Dataset(**{k: ds.get(k) for k in keys}),
                                                tags=[InputTag("mlflow.data.context", "training")])])


def _model_kwargs(model: torch.nn.Module) -> dict:
    """A signature (normalized NCHW images in the weights' dtype in, 10 logits out) written from the shapes, and no
    input example: MLflow reloads and runs the model on an example at every log (0.5 s to 9 s a run on a busy CPU,
    against 0.3 s without), and the test of the logged model checks more. The pip requirements are given, not
    inferred: inference imports and pip-resolves the environment (slow, may reach the network). Pickled, not
    MLflow's default pt2: torch.export takes seconds and fixes the batch size to the example's; the pickle loads
    wherever `harness` is importable (the model classes are harness.core.models')."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    dtype = np.dtype(np.float64 if next(model.parameters()).dtype == torch.float64 else np.float32)
    signature = ModelSignature(inputs=Schema([TensorSpec(dtype, (-1, 3, 32, 32))]),
                               outputs=Schema([TensorSpec(dtype, (-1, 10))]))
    return {"signature": signature, "serialization_format": "pickle",
            "pip_requirements": [f"torch=={torch.__version__.split('+')[0]}"]}


@contextmanager
def pickle_chosen():
    """MLflow warns on every pickled model that pickle runs code when loaded; we chose it knowingly (see
    _model_kwargs), so that one warning is dropped around our calls and every other MLflow warning stays."""
    log = logging.getLogger("mlflow.pytorch")
    drop = logging.Filter()
    drop.filter = lambda record: "Pickle or CloudPickle" not in record.getMessage()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def ready(model: torch.nn.Module) -> torch.nn.Module:
    """On the CPU (a GPU run's model loads anywhere) and in eval mode (what a loaded model is for)."""
    if hasattr(model, "_orig_mod"):  # torch.compile's wrapper pickles badly; the module underneath is the model
        model = model._orig_mod
    return model.cpu().eval()


def log_final_model(c, run_id: str, model: torch.nn.Module) -> float:
    """The final weights as the run's MLflow PyTorch model, `runs:/<run_id>/model`; returns the seconds it took.
    The logged model is made in the run's experiment first: left to itself, log_model puts it in the process's
    active experiment (Default), where `runs:/` does not look for it."""
    import mlflow.pytorch

    t0 = time.perf_counter()
    model = ready(model)
    made = c.create_logged_model(c.get_run(run_id).info.experiment_id, name=MODEL_NAME, source_run_id=run_id)
    with pickle_chosen():
        mlflow.pytorch.log_model(model, name=MODEL_NAME, run_id=run_id, model_id=made.model_id,
                                 **_model_kwargs(model))
    return time.perf_counter() - t0


def save_final_model(path: Path, model: torch.nn.Module) -> None:
    """The same MLflow model as a folder, for `run --offline`; `import` logs it. Written beside and renamed, so a
    killed run leaves the whole folder or none."""
    import mlflow.pytorch

    model = ready(model)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with pickle_chosen():
        mlflow.pytorch.save_model(model, str(tmp), **_model_kwargs(model))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def import_final_model(c, run_id: str, path: Path) -> None:
    """Log an offline run's saved MLflow model on its imported run, as `execute` logs a model."""
    import mlflow.pytorch

    log_final_model(c, run_id, mlflow.pytorch.load_model(str(path)))
