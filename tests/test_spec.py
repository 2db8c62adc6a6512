import json
import subprocess
import sys

import pytest
import yaml

from harness.cli import main
from harness.core.spec import expand_paths, flatten, load_spec, resolve_runs, with_overrides
from harness.errors import SpecError

from .helpers import ROOT, TINY

NO_VAL = TINY.replace("val_fraction: 0.1", "val_fraction: 0")

# (name, spec text, words the one-line error must contain: the key and what was expected)
MALFORMED = [
    ("unknown_top", TINY + "momentun: 0.9\n", ["momentun", "unknown key"]),
    ("unknown_nested", TINY.replace("depth: 8", "depth: 8, dept: 8"), ["model.dept", "unknown key"]),
    ("depth_not_6n2", TINY.replace("depth: 8", "depth: 33"), ["model.depth", "6n+2"]),
    ("depth_string", TINY.replace("depth: 8", "depth: deep"), ["model.depth", "integer"]),
    ("bad_arch", TINY.replace("arch: resnet", "arch: vgg"), ["model.arch", "resnet"]),
    ("bad_shortcut", TINY.replace("depth: 8", "depth: 8, shortcut: C"), ["model.shortcut", "'A'"]),
    ("milestone_past_end", TINY.replace("[8, 10]", "[8, 20]"), ["schedule.milestones", "total_iters=12"]),
    ("milestones_unsorted", TINY.replace("[8, 10]", "[10, 8]"), ["schedule.milestones", "increasing"]),
    ("negative_lr", TINY.replace("lr: 0.1", "lr: -0.1"), ["optimizer.lr", "greater than 0"]),
    ("lr_text", TINY.replace("lr: 0.1", "lr: fast"), ["optimizer.lr", "number"]),
    ("bad_optimizer", TINY.replace("name: sgd", "name: rmsprop"), ["optimizer.name", "sgd"]),
    ("bad_schedule", TINY.replace("name: multistep", "name: step"), ["schedule.name", "multistep"]),
    ("batch_zero", TINY.replace("batch_size: 32", "batch_size: 0"), ["batch_size", "greater than or equal to 1"]),
    ("bad_dtype", TINY + "dtype: float16\n", ["dtype", "float32"]),
    ("seeds_not_list", TINY.replace("seeds: [0]", "seeds: zero"), ["seeds", "list"]),
    ("empty_seeds", TINY.replace("seeds: [0]", "seeds: []"), ["seeds", "at least 1"]),
    ("both_val_rules", TINY.replace("val_fraction: 0.1", "val_fraction: 0.1, val_size: 100"), ["val_fraction"]),
    ("val_fraction_one", TINY.replace("val_fraction: 0.1", "val_fraction: 1.5"), ["data.val_fraction", "less than 1"]),
    ("not_a_mapping", "- just\n- a list\n", ["top level", "mapping"]),
    ("bad_yaml", "model: {arch: resnet\nschedule: [\n", ["not valid YAML", "line"]),
    ("bad_compile_mode", TINY + "compile: fastest\n", ["compile", "reduce-overhead"]),
    ("bad_tune_range", TINY + "tune: {lr: [0.5, 0.1]}\n", ["tune.lr", "low < high"]),
    ("milestones_repeated", TINY.replace("[8, 10]", "[8, 8]"), ["schedule.milestones", "increasing"]),
    ("empty_file", "", ["empty spec", "expected a mapping of spec keys"]),
    ("all_comments", "# a spec to fill in\n\n   # later\n", ["empty spec", "expected a mapping of spec keys"]),
    ("plateau_without_val", NO_VAL.replace("name: multistep, milestones: [8, 10]", "name: plateau, milestones: []"),
     ["schedule.name", "plateau", "no validation split", "data.val_fraction > 0"]),
    ("early_stopping_without_val", NO_VAL.replace("total_iters: 12", "total_iters: 12, early_stopping_patience: 4"),
     ["schedule.early_stopping_patience", "no validation split", "data.val_fraction > 0"]),
    ("tune_section_without_val", NO_VAL + "tune: {lr: [0.01, 0.5]}\n", ["tune", "no validation split"]),
    ("torchvision_depth", TINY.replace("arch: resnet, depth: 8", "arch: torchvision_resnet34, depth: 32"),
     ["model.depth", "expected 34", "got 32"]),
    ("imagenet_stem_on_cifar_net", TINY.replace("depth: 8", "depth: 8, stem: imagenet"),
     ["model.stem", "expected cifar (or no stem)"]),
    ("name_climbs_out", TINY + "name: ../../evil\n", ["name", "expected letters, digits", "'../../evil'"]),
    ("duplicate_key", TINY + "batch_size: 64\n", ["key 'batch_size' given twice", "line 5 and line 8"]),
    ("duplicate_nested_key", TINY.replace("lr: 0.1", "lr: 0.1, lr: 0.2"), ["key 'lr' given twice", "line 2"]),
    ("seed_past_64_bits", TINY.replace("seeds: [0]", "seeds: [18446744073709551616]"),
     ["seeds", "below 2**63", "18446744073709551616"]),
    ("negative_seed", TINY.replace("seeds: [0]", "seeds: [-1]"), ["seeds", "non-negative", "-1"]),
    ("seed_twice", TINY.replace("seeds: [0]", "seeds: [0, 0]"), ["seeds", "distinct", "0 more than once"]),
    ("threshold_of_one", TINY.replace("total_iters: 12", "total_iters: 12, threshold: 1"),
     ["schedule.threshold", "less than 1", "got 1"]),
    ("more_eval_points_than_iterations", TINY.replace("eval_points: 4", "eval_points: 13"),
     ["eval_points", "at most schedule.total_iters=12", "got 13"]),
]


@pytest.mark.parametrize("name,text,words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_spec_gives_one_line_exit_2_and_leaves_nothing(name, text, words, store, mini, capsys, write_spec):
    path = write_spec(store.parent / "experiments" / "bad", name, text)
    before = sorted(p for p in store.parent.rglob("*"))
    code = main(["run", str(path), "--data", str(mini), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(path) in lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    assert sorted(p for p in store.parent.rglob("*")) == before  # no MLflow store, no checkpoint, nothing
    assert not store.exists()


def test_a_name_from_a_file_or_folder_that_climbs_out_is_refused(tmp_path, write_spec):
    """The group is the spec's folder and the name its file's stem when it says none: `..` is neither."""
    path = write_spec(tmp_path / "experiments" / "t", "tiny")
    spec = load_spec(path)
    with pytest.raises(SpecError, match=r"group \(the spec's folder\): .* got '\.\.'"):
        resolve_runs(tmp_path / "experiments" / "t" / ".." / "tiny.yaml", spec.model_copy(update={"name": None}), 1.0)
    assert resolve_runs(path, spec, 100.0)[0].spec.schedule.total_iters == 1200  # the largest budget validates


def test_missing_spec_file(store, capsys):
    assert main(["validate", str(store.parent / "nope.yaml")]) == 2
    assert "nope.yaml: spec file not found" in capsys.readouterr().err


@pytest.mark.parametrize("argv,words", [
    (["--set", "seeds=[0,"], ["--set seeds", "expected a YAML value", "'[0,'"]),
    (["--device", "gpu"], ["--device gpu", "expected cpu, cuda or cuda:N"]),
    (["--device", "cuda:7"], ["--device cuda:7"]),  # no GPU here; on a GPU machine: not 8 of them
    (["--set", "name=../../evil"], ["name:", "'../../evil'", "tiny.yaml"]),
    (["--set", "seeds=[18446744073709551616]"], ["seeds:", "below 2**63"]),
    (["--set", "seeds=[0, 0]"], ["seeds:", "distinct"]),
    (["--set", "model={depth: 8, depth: 20}"], ["--set model", "key 'depth' given twice"]),
    (["--budget", "1e308"], ["--budget: expected at most 100", "got 1e+308"]),
    (["--budget", "1e9"], ["--budget: expected at most 100", "got 1e+09"]),
], ids=["set_not_yaml", "device_typo", "device_missing_gpu", "name_climbs_out", "seed_past_64_bits", "seed_twice",
        "set_duplicate_key", "budget_overflows", "budget_past_100x"])
def test_bad_set_value_or_device_is_one_line_before_anything_runs(argv, words, store, mini, capsys, write_spec):
    path = write_spec(store.parent / "experiments" / "t", "tiny", TINY)
    assert main(["run", str(path), "--data", str(mini), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err
    assert not store.exists()


def test_every_bad_spec_of_a_folder_is_named_at_once(tmp_path, capsys, write_spec):
    folder = tmp_path / "experiments" / "bad"
    a = write_spec(folder, "a", TINY.replace("depth: 8", "depth: 33"))
    write_spec(folder, "b", TINY)
    c = write_spec(folder, "c", TINY + "momentun: 0.9\n")
    assert main(["validate", str(folder)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"error: {a}: model.depth") and f"{c}: momentun" in lines[1], lines
    assert main(["validate", str(folder), "--budget", "0"]) == 2  # the same bad budget for all: one line
    assert capsys.readouterr().err.count("--budget: expected a positive fraction") == 1


def test_table_with_a_folder_that_is_not_there_is_an_error(tmp_path, mini, capsys):
    out = tmp_path / "reports"
    assert main(["table", str(tmp_path / "nonexist"), "--data", str(mini), "--out", str(out)]) == 2
    assert "nonexist: spec folder not found" in capsys.readouterr().err
    assert not out.exists()


def test_table_with_a_bad_budget_is_one_line_before_anything_runs(store, mini, capsys, write_spec):
    """As for `run`: the budget every spec would share is one error, and nothing trains or is written."""
    folder = store.parent / "experiments" / "t"
    write_spec(folder, "a", TINY)
    write_spec(folder, "b", TINY)
    out = store.parent / "reports"
    assert main(["table", str(folder), "--budget", "0", "--data", str(mini), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--budget: expected a positive fraction" in err, err
    assert not store.exists() and not out.exists()


def test_cli_exit_code_is_really_2():
    p = subprocess.run([sys.executable, "-m", "harness", "validate", str(ROOT / "experiments/table6/resnet32.yaml"),
                        "--set", "model.depth=33"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "model.depth" in p.stderr and "Traceback" not in p.stderr


def test_overrides_seeds_and_budget_scaling(tmp_path):
    path = ROOT / "experiments/table6/resnet32.yaml"
    spec = load_spec(path, ["model.depth=56", "seeds=[3, 4]"])
    assert spec.model.depth == 56 and spec.name == "resnet32"
    runs = resolve_runs(path, spec, 0.002)
    assert [r.run_name for r in runs] == ["resnet32-s3-b0.002", "resnet32-s4-b0.002"]
    s = runs[0].spec.schedule
    assert (s.total_iters, s.milestones) == (128, [64, 96])
    full = resolve_runs(path, load_spec(path), 1.0)[0]
    assert (full.spec.schedule.total_iters, full.spec.schedule.milestones) == (64000, [32000, 48000])
    assert full.run_name == "resnet32-s0"
    with pytest.raises(SpecError, match="--set model: expected KEY.PATH=VALUE"):
        load_spec(path, ["model"])


def test_paper_recipe_in_table6_specs():
    """§4.2: lr 0.1, /10 at 32k and 48k, stop at 64k (chosen on 45k/5k), then Table 6 trained on all 50k images."""
    for arch, depth in [("resnet", d) for d in (20, 32, 44, 56, 110, 1202)] + [("plain", d) for d in (20, 32, 44, 56)]:
        path = ROOT / f"experiments/table6/{arch}{depth}.yaml"
        s = load_spec(path)
        assert (s.model.arch, s.model.depth, s.model.shortcut) == (arch, depth, "A")
        o = s.optimizer
        assert (o.name, o.lr, o.momentum, o.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
        assert (s.schedule.name, s.schedule.milestones, s.schedule.total_iters, s.schedule.gamma) == \
            ("multistep", [32000, 48000], 64000, 0.1)
        assert (s.batch_size, s.data.val_fraction, s.data.mean, s.data.augment) == (128, 0, "per_pixel", "crop_flip")
        assert not s.data.has_validation and s.dtype == "float32" and not s.channels_last
        assert (s.schedule.warmup is not None) == (depth in (110, 1202))
        if s.schedule.warmup:  # the paper's rule, and our cap on it named in the file itself
            assert (s.schedule.warmup.lr, s.schedule.warmup.until_train_error) == (0.01, 80.0)
            assert "max_iters: 4000" in path.read_text()
    for folder in ("ablations", "tuning", "tuned"):  # the 45k/5k split stays where validation is read or compared
        for p in (ROOT / "experiments" / folder).glob("*.yaml"):
            assert load_spec(p).data.val_fraction == (0.05 if p.stem == "split_47500" else 0.1), p


def test_hash_depends_on_seed_budget_and_data():
    path = ROOT / "experiments/table6/resnet20.yaml"
    spec = load_spec(path)
    a, b = resolve_runs(path, spec, 1.0)[:2]
    small = resolve_runs(path, spec, 0.5)[0]
    hashes = {a.spec_hash("d1"), b.spec_hash("d1"), small.spec_hash("d1"), a.spec_hash("d2")}
    assert len(hashes) == 4
    assert a.spec_hash("d1") == resolve_runs(path, load_spec(path), 1.0)[0].spec_hash("d1")


def test_a_folder_walk_reads_specs_not_the_store_or_hidden_folders(tmp_path, write_spec):
    good = write_spec(tmp_path / "experiments", "ok", TINY)
    for junk in ("mlruns/artifacts/1/spec.yaml", ".venv/lib/site/conf.yaml"):
        (tmp_path / junk).parent.mkdir(parents=True)
        (tmp_path / junk).write_text("seed: 0\n")  # not a spec: would be an error if read
    assert expand_paths([str(tmp_path)]) == [good]
    assert main(["validate", str(tmp_path)]) == 0


def test_set_and_tuning_overrides_walk_dotted_keys_alike():
    """--set on the YAML and a trial's sampled overrides on a Spec go through one walker: same fields, same
    error for a key that runs into a value."""
    path = ROOT / "experiments/table6/resnet32.yaml"
    by_set = load_spec(path, ["schedule.gamma=0.2", "optimizer.lr=0.05", "schedule.milestones=[100, 200]"])
    tuned = with_overrides(load_spec(path), {"schedule.gamma": 0.2, "optimizer.lr": 0.05,
                                             "schedule.milestones": [100, 200]})
    assert tuned == by_set
    with pytest.raises(SpecError, match="'batch_size' is not a section"):
        load_spec(path, ["batch_size.x=1"])
    with pytest.raises(SpecError, match="'batch_size' is not a section"):
        with_overrides(load_spec(path), {"batch_size.x": 1})


def test_a_spec_file_that_is_not_text_is_one_line(store, mini, capsys):
    path = store.parent / "experiments" / "t" / "weights.yaml"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x80\x02}q\x00(X\x05\x00\x00\x00modelq\x01\xff\xfe" * 40)  # a pickle, renamed
    for argv in (["validate", str(path)], ["run", str(path), "--data", str(mini)]):
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}: not a text file") and \
            "expected a YAML spec" in lines[0], lines
    assert not store.exists()


BUDGETS = [
    ("inf", ["--budget: expected a positive fraction", "finite", "got inf"]),
    ("nan", ["--budget: expected a positive fraction", "got nan"]),
    ("1e-9", ["--budget 1e-09 is too small", "milestones [8, 10] of 12 iterations become [0, 0] of 1",
              "fewer than eval_points=4", "expected --budget 0.5 or more"]),
    ("0.34", ["--budget 0.34 is too small", "milestones [8, 10] of 12 iterations become [3, 3] of 4",
              "expected --budget 0.5 or more"]),
]


@pytest.mark.parametrize("budget,words", BUDGETS, ids=[b[0] for b in BUDGETS])
def test_a_budget_that_breaks_the_schedule_is_refused_before_anything_runs(budget, words, store, mini, capsys,
                                                                           write_spec):
    """--budget inf was an OverflowError traceback, 1e-9 three 'finished' one-iteration runs: refused, and by
    validate too. The budget suggested is enough: 0.5 leaves 6 iterations, milestones 4 and 5."""
    path = write_spec(store.parent / "experiments" / "t", "tiny", TINY)
    for argv in (["validate", str(path)], ["run", str(path), "--data", str(mini), "--no-progress"]):
        assert main([*argv, "--budget", budget]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        assert all(w in lines[0] for w in words), lines[0]
        assert budget in ("inf", "nan") or str(path) in lines[0]
    assert not store.exists()
    assert main(["validate", str(path), "--budget", "0.5"]) == 0
    assert "6 iters, multistep (milestones [4, 5])" in capsys.readouterr().out


def test_budget_rule_holds_for_the_shipped_specs_at_the_tables_small_budget():
    """`make reproduce-table BUDGET=0.001` stays possible: every shipped spec keeps its schedule at 64 iterations."""
    for path in expand_paths([str(ROOT / "experiments")]):
        resolve_runs(path, load_spec(path), 0.001)
    with pytest.raises(SpecError, match="resnet32.yaml: --budget 0.0004 is too small"):
        resolve_runs(ROOT / "experiments/table6/resnet32.yaml", load_spec(ROOT / "experiments/table6/resnet32.yaml"),
                     0.0004)


def test_the_committed_records_keep_their_spec_hash():
    """A store from before finds its finished runs: the shipped spec, seed, budget and data still hash to the name
    of the committed record, and the ladder's last rung still is the table6/resnet32 run."""
    record = ROOT / "results/table6/resnet20-s0-b0.0005-9103120fb7e2d533.json"
    tags = json.loads(record.read_text())["tags"]
    path = ROOT / "experiments/table6/resnet20.yaml"
    (run,) = [r for r in resolve_runs(path, load_spec(path, ["eval_points=4"]), 0.0005) if r.seed == 0]  # as run
    assert run.spec_hash(tags["data_id"]) == tags["spec_hash"] == "9103120fb7e2d533"
    rung, t6 = (ROOT / "experiments" / p for p in ("ladder/13_all_50k.yaml", "table6/resnet32.yaml"))
    for seed in (0, 1):
        hashes = {resolve_runs(p, load_spec(p, [f"seeds=[{seed}]"]), 1.0)[0].spec_hash("d") for p in (rung, t6)}
        assert len(hashes) == 1, seed


def test_new_spec_fields_at_their_default_leave_the_hash_alone():
    """model.init and model.bn_batch, added after the committed records were made, are left out of the hash while
    they hold their default (naming the default changes nothing); off it, a run is a new run."""
    record = ROOT / "results/table6/resnet20-s0-b0.0005-9103120fb7e2d533.json"
    data_id = json.loads(record.read_text())["tags"]["data_id"]
    path = ROOT / "experiments/table6/resnet20.yaml"

    def hash_with(*changes):
        (run,) = resolve_runs(path, load_spec(path, ["eval_points=4", "seeds=[0]", *changes]), 0.0005)
        return run.spec_hash(data_id)

    assert hash_with() == hash_with("model.init=he") == hash_with("model.bn_batch=null") == "9103120fb7e2d533"
    assert hash_with("schedule.threshold=1.0e-4") == hash_with("data.augment=crop_flip") == "9103120fb7e2d533"
    # the path a run is computed on is not the run: a campaign moved to the fast path still finds its records
    assert hash_with("channels_last=true") == hash_with("compile=true") == "9103120fb7e2d533"
    assert len({hash_with(), hash_with("model.init=torchvision"), hash_with("model.bn_batch=64"),
                hash_with("schedule.threshold=1.0e-5")}) == 4


def test_augment_names_none_flip_or_crop_flip_and_its_old_bools_keep_their_hashes(tmp_path, capsys, write_spec):
    """data.augment: the old true/false read as crop_flip/none and hash as they did, flip only is a run of its own,
    and anything else is one line naming the key and the three values."""
    path = ROOT / "experiments/table6/resnet20.yaml"

    def hash_with(value):
        return resolve_runs(path, load_spec(path, [f"data.augment={value}"]), 1.0)[0].spec_hash("d")

    assert load_spec(path, ["data.augment=true"]).data.augment == "crop_flip"
    assert load_spec(path, ["data.augment=false"]).data.augment == "none"
    assert hash_with("true") == hash_with("crop_flip") != hash_with("false") == hash_with("none")
    assert len({hash_with("crop_flip"), hash_with("none"), hash_with("flip")}) == 3
    bad = write_spec(tmp_path, "rotate", TINY.replace("val_fraction: 0.1", "val_fraction: 0.1, augment: rotate"))
    assert main(["validate", str(bad)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {bad}: data.augment: ") and all(v in line for v in ("'none'", "'flip'",
                                                                                      "'crop_flip'", "rotate"))


def test_plateau_and_early_stopping_patience_stay_as_the_spec_says_at_any_budget():
    """The seed log's SGD run held lr 0.1 for 223 epochs: at ~20 epochs its plateau has not fired, so a short run
    keeps the spec's patience (it does not compress a long run's decays into its first epochs)."""
    path = ROOT / "experiments/seedlog/sgd_plateau.yaml"
    for budget in (1.0, 0.0625):
        s = resolve_runs(path, load_spec(path), budget)[0].spec.schedule
        assert (s.patience, s.early_stopping_patience) == (37000, None)
    s = resolve_runs(ROOT / "experiments/seedlog/adam.yaml", load_spec(ROOT / "experiments/seedlog/adam.yaml"),
                     0.0625)[0].spec.schedule
    assert (s.total_iters, s.patience, s.early_stopping_patience) == (4000, 185000, 92500)


def test_bn_batch_must_tile_the_batch(tmp_path, capsys, write_spec):
    path = write_spec(tmp_path, "ghost", TINY.replace("depth: 8}", "depth: 8, bn_batch: 12}"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: model.bn_batch: expected a divisor of batch_size=32 (BN statistics over equal "
                   "groups of the batch), got 12"], err
    assert load_spec(path, ["model.bn_batch=16"]).model.bn_batch == 16


def test_resnet110s_warmup_cap_is_a_safety_net_the_budget_does_not_shrink():
    """The cap is ten times the paper's typical warm-up (~400 iterations), so the rule (training error below 80 %,
    checked every 20 iterations) ends an ordinary warm-up; and it is not scaled by --budget, so at a small budget
    the rule is still consulted before the cap."""
    from harness.core.schedule import WARMUP_CHECK_EVERY

    path = ROOT / "experiments/table6/resnet110.yaml"
    spec = load_spec(path)
    assert spec.schedule.warmup.max_iters >= 10 * 400
    for budget in (1.0, 0.05, 0.01, 0.0005):
        (run, *_) = resolve_runs(path, spec, budget, check_budget=False)
        assert run.spec.schedule.warmup.max_iters == spec.schedule.warmup.max_iters > WARMUP_CHECK_EVERY


def test_validate_says_the_schedule_a_run_follows(capsys):
    """A plateau run's line names its patience, not the milestones its family never reads."""
    assert main(["validate", str(ROOT / "experiments/seedlog/sgd_plateau.yaml"), "--budget", "0.0625"]) == 0
    out = capsys.readouterr().out
    assert "4000 iters, plateau (patience 37000), batch 256, augment flip" in out and "milestones" not in out


def test_each_ablation_states_only_its_difference_from_the_baseline():
    """An ablation names its base and its one change; resolved, it differs from the baseline in exactly the fields
    it names (and in what those fields decide: torchvision's ResNet-34 brings its own init)."""
    ablations = ROOT / "experiments" / "ablations"
    base = flatten(load_spec(ablations / "baseline.yaml").model_dump(mode="json", exclude={"name", "description"}))
    for path in sorted(ablations.glob("*.yaml")):
        if path.name == "baseline.yaml":
            continue
        raw = yaml.safe_load(path.read_text())
        assert raw.pop("base") == "baseline.yaml" and raw.pop("description"), path
        named = set(flatten(raw))
        resolved = flatten(load_spec(path).model_dump(mode="json", exclude={"name", "description"}))
        changed = {k for k in resolved if resolved[k] != base[k]}
        decided = {"model.init"} if "model.arch" in named else set()
        assert named <= changed and changed - named <= decided, (path.name, named, changed)


@pytest.mark.parametrize("base,words", [
    ("../../elsewhere.yaml", ["base: expected a .yaml spec beside this one", "'../../elsewhere.yaml'"]),
    ("nope.yaml", ["base: nope.yaml: spec file not found"]),
    ("loop.yaml", ["loop.yaml: base: child.yaml: bases that lead back to this spec"]),
    ("[1]", ["base: expected a .yaml spec", "[1]"]),
])
def test_a_bad_base_is_one_line(base, words, tmp_path, capsys, write_spec):
    folder = tmp_path / "experiments" / "ablations"
    write_spec(folder, "loop", "base: child.yaml\n")
    child = write_spec(folder, "child", f"base: {base}\nbatch_size: 16\n")
    assert main(["validate", str(child)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert all(w in line for w in words), line


def test_a_spec_on_a_base_resolves_as_the_whole_recipe_written_out(tmp_path, write_spec):
    """Sections merge key by key, a list replaces, the base's description and name stay with it."""
    folder = tmp_path / "experiments" / "t"
    whole = write_spec(folder, "whole", TINY.replace("batch_size: 32", "batch_size: 16").replace("[8, 10]", "[6]"))
    write_spec(folder, "base", "description: the base\n" + TINY)
    short = write_spec(folder, "short", "base: base.yaml\nbatch_size: 16\nschedule: {milestones: [6]}\n")
    a, b = (resolve_runs(p, load_spec(p), 1.0)[0] for p in (whole, short))
    assert a.spec_hash("d") == b.spec_hash("d") and b.name == "short" and b.spec.description == ""
