"""What a spec may say: the pydantic models of a spec's sections, each field checked where it is declared.

Everything that changes a result lives here, so that a spec's hash (with seed, budget and data) identifies the
run in MLflow for skipping and resuming. Pydantic rejects unknown keys because a typo ("momentun") that silently
falls back to a default is exactly the kind of error that produces a 70 % reproduction. Fields whose sensible
default depends on another field (a torchvision ResNet-34 is 34 layers deep with option-B shortcuts and an
ImageNet stem) are resolved here, so the resolved spec, its hash and the MLflow params name what was built.
harness.core.spec reads spec files into these models and resolves them into runs.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from harness.core.archs import ARCHS
from harness.core.families import FAMILIES, PLATEAU_THRESHOLD
from harness.core.names import EXPECTED, name_problem
from harness.core.strict import Strict
from harness.core.tuning_schema import FAMILY_NAMES, TunedFrom, TuneRange, TuneSpec  # noqa: F401 - TuneRange: a spec type

ARCH_NAMES = tuple(ARCHS)


class ModelSpec(Strict):
    """`depth`, `shortcut` and `stem` left out take the architecture's own (harness.core.archs.ARCHS): 32, A and
    cifar for the paper's CIFAR nets; 34, B and imagenet for torchvision's ResNet-34 (whose stage layout fixes its
    depth)."""

    arch: Literal[ARCH_NAMES] = "resnet"
    depth: int | None = None
    shortcut: Literal["A", "B"] | None = None
    bn_on_shortcut: bool = True
    fc_relu: bool = False
    # imagenet: 7x7/2 conv + 3x3/2 max-pool (8x8 maps at the first block); cifar: 3x3/1 conv, no pool (32x32 maps).
    stem: Literal["imagenet", "cifar"] | None = None
    # he: He et al.'s init, fan_in normal convs and FC (the paper's nets); torchvision: torchvision's ResNet init,
    # fan_out normal convs and nn.Linear's own uniform FC. None: the arch's own (he for resnet/plain).
    init: Literal["he", "torchvision"] | None = None
    # Ghost batch norm: BN statistics over consecutive groups of this many images of a batch (the paper's two GPUs
    # each normalised 64 of the 128); None: the whole batch.
    bn_batch: int | None = Field(None, ge=1)

    @field_validator("depth")
    @classmethod
    def _depth_of_the_arch(cls, depth, info: ValidationInfo):
        arch = ARCHS.get(info.data.get("arch"))
        if arch is not None and arch.depth is not None:
            if depth not in (None, arch.depth):
                raise ValueError(f"expected {arch.depth} (or no depth) for {arch.name}: its stage layout fixes it")
            return arch.depth
        if depth is None:
            return 32
        if depth < 8 or (depth - 2) % 6:
            raise ValueError("expected 6n+2 with n >= 1 for the CIFAR ResNet (8, 20, 32, 44, 56, 110, ...)")
        return depth

    @field_validator("shortcut")
    @classmethod
    def _shortcut_of_the_arch(cls, shortcut, info: ValidationInfo):
        arch = ARCHS.get(info.data.get("arch"))
        return shortcut or (arch.shortcut if arch else "A")

    @field_validator("stem")
    @classmethod
    def _stem_of_the_arch(cls, stem, info: ValidationInfo):
        arch = ARCHS.get(info.data.get("arch"))
        stems = arch.stems if arch else ("cifar",)
        if stem is not None and stem not in stems:
            others = ", ".join(a.name for a in ARCHS.values() if stem in a.stems) or "no architecture"
            raise ValueError(f"expected {' or '.join(stems)} (or no stem) for {info.data.get('arch')}: the {stem} "
                             f"stem is an option of {others}")
        return stem or stems[0]

    @field_validator("init")
    @classmethod
    def _init_of_the_arch(cls, init, info: ValidationInfo):
        return init or default_init(info.data.get("arch"))


def default_init(arch: str | None) -> str:
    """The init an arch is built with when the spec names none: the one its builder leaves (Arch.init)."""
    return ARCHS[arch].init if arch in ARCHS else "he"


class OptimizerSpec(Strict):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)


class WarmupSpec(Strict):
    """The paper's ResNet-110 trick: a small lr until training error drops below a threshold. `max_iters` is a
    safety net ten times the paper's typical warm-up (about 400 iterations), so the rule ends an ordinary warm-up;
    it counts iterations whatever the --budget, as the rule's check window does, and is reported when it fires."""

    lr: float = Field(0.01, gt=0)
    until_train_error: float = Field(80.0, gt=0, le=100)
    max_iters: int = Field(4000, ge=1)


class ScheduleSpec(Strict):
    name: Literal[FAMILY_NAMES] = "multistep"
    total_iters: int = Field(64000, ge=1)
    milestones: list[int] = [32000, 48000]
    gamma: float = Field(0.1, gt=0, le=1)
    # ReduceLROnPlateau on validation loss; patience in iterations, checked at evaluation points.
    patience: int = Field(10000, ge=0)
    mode: Literal["min", "max"] = "min"
    # ReduceLROnPlateau's threshold (relative): a validation loss counts as better only below best x (1 - threshold).
    # The seed log's long-patience SGD run set 1e-5; PyTorch's default is 1e-4.
    threshold: float = Field(PLATEAU_THRESHOLD, ge=0, lt=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    warmup: WarmupSpec | None = None
    # Linear ramp of the lr from ~0 over this many iterations (used by tuning; 0 = off).
    warmup_iters: int = Field(0, ge=0)

    @field_validator("milestones")
    @classmethod
    def _milestones_inside_run(cls, milestones, info: ValidationInfo):
        total = info.data.get("total_iters")
        if any(b <= a for a, b in pairwise(milestones)):
            raise ValueError("expected increasing iteration numbers")
        for m in milestones:
            if total is not None and not 0 < m < total:
                raise ValueError(f"expected every milestone inside (0, total_iters={total}), {m} is not")
        return milestones

    @model_validator(mode="after")
    def _warmup_inside_run(self):
        if self.warmup_iters >= self.total_iters:
            raise ValueError(f"warmup_iters: expected fewer than total_iters={self.total_iters}")
        return self


AUGMENT_OF_BOOL = {True: "crop_flip", False: "none"}  # data.augment's values before flip-only existed


class DataSpec(Strict):
    """The train/val split of the training images: `val_fraction` or `val_size`; 0 trains on every training image
    (the paper's Table 6 runs) and leaves nothing to validate on."""

    val_fraction: float | None = Field(None, ge=0, lt=1)
    val_size: int | None = Field(None, ge=0)
    split_seed: int = 0
    mean: Literal["per_pixel", "per_channel", "none"] = "per_pixel"
    # crop_flip: the paper's pad-4 random crop and horizontal flip; flip: the flip alone (the seed log's week-0
    # list names only the flip); none: the images as they are. true/false, the field's older values, read as
    # crop_flip/none.
    augment: Literal["none", "flip", "crop_flip"] = "crop_flip"
    # The seed log evaluated raw images while training on mean-subtracted ones.
    test_time_mean: bool = True

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_from_a_bool(cls, v):
        return AUGMENT_OF_BOOL.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _one_split_rule(self):
        if self.val_fraction is not None and self.val_size is not None:
            raise ValueError("val_fraction/val_size: expected one of them, got both")
        if self.val_fraction is None and self.val_size is None:
            self.val_fraction = 0.1
        return self

    @property
    def has_validation(self) -> bool:
        return bool(self.val_fraction or self.val_size)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

NO_VALIDATION = "data.val_fraction 0 leaves no validation split"


class Spec(Strict):
    name: str | None = None
    description: str = ""
    heavy: bool = False
    model: ModelSpec = ModelSpec()
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    data: DataSpec = DataSpec()
    batch_size: int = Field(128, ge=1)
    seeds: list[int] = Field([0], min_length=1)
    dtype: Literal["float32", "bfloat16", "float64"] = "float32"
    channels_last: bool = False
    # false: eager; true: torch.compile's default mode; "reduce-overhead" adds CUDA-graph capture of the
    # forward and backward (static shapes; on CPU it is the default mode); "max-autotune" also tunes kernels.
    compile: bool | str = False
    eval_points: int = Field(32, ge=1)
    tune: TuneSpec | None = None
    tuned: TunedFrom | None = None  # a tuned spec's provenance: not part of the run (nor its hash), its label

    @field_validator("name")
    @classmethod
    def _name_fits_a_path(cls, name):
        """The name becomes the run's name and its record's file name (results/<group>/<name>-...json)."""
        if name is not None and name_problem(name):
            raise ValueError(EXPECTED)
        return name

    @field_validator("seeds")
    @classmethod
    def _seeds_distinct_and_in_range(cls, seeds):
        """A seed seeds torch's generators (64-bit) and names a run: below 2**63, and never one run twice."""
        bad = [s for s in seeds if not 0 <= s < 2**63]
        if bad:
            raise ValueError(f"expected non-negative integers below 2**63 (torch's 64-bit seeds), got {bad[0]}")
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        if twice:
            raise ValueError(f"expected distinct seeds (each is one run), got {twice[0]} more than once")
        return seeds

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_mode(cls, v):
        if isinstance(v, bool) or v in COMPILE_MODES:
            return v
        raise ValueError(f"expected true, false or one of {', '.join(COMPILE_MODES)}, got {v!r}")

    @model_validator(mode="after")
    def _bn_groups_tile_the_batch(self):
        bn = self.model.bn_batch
        if bn is not None and bn < self.batch_size and self.batch_size % bn:
            raise ValueError(f"model.bn_batch: expected a divisor of batch_size={self.batch_size} (BN statistics "
                             f"over equal groups of the batch), got {bn}")
        return self

    @model_validator(mode="after")
    def _validation_split_for_what_reads_it(self):
        """Plateau drops, early stopping and tuning read the validation loss: without a validation split they are
        refused here, rather than met by a run that cannot make its decisions."""
        if self.data.has_validation:
            return self
        if FAMILIES[self.schedule.name].on_validation:
            blind = ", ".join(f.name for f in FAMILIES.values() if not f.on_validation)
            raise ValueError(f"schedule.name: {self.schedule.name} steps on the validation loss, and {NO_VALIDATION}; "
                             f"expected data.val_fraction > 0, or a schedule that reads no validation loss ({blind})")
        if self.schedule.early_stopping_patience:
            raise ValueError(f"schedule.early_stopping_patience: early stopping reads the validation loss, and "
                             f"{NO_VALIDATION}; expected data.val_fraction > 0, or no early stopping")
        if self.tune is not None:
            raise ValueError(f"tune: tuning scores trials on the validation split, and {NO_VALIDATION}; expected "
                             "data.val_fraction > 0 (the test split never selects)")
        return self
