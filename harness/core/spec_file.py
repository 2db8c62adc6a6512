"""A spec file read: YAML that refuses a key given twice, the `base:` it names merged under it, `--set` applied to
it, and pydantic's first complaint as one line naming the key and what was expected. harness.core.spec validates
and resolves what comes out.
"""

from __future__ import annotations

import copy
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from harness.core.names import inside
from harness.core.schema import Spec
from harness.errors import SpecError


def _pretty_loc(loc) -> str:
    return ".".join(str(p) for p in loc) or "<top level>"


def _allowed_keys(parent_loc) -> list[str]:
    """The keys a section accepts, found by walking the pydantic models along the error's location."""
    model: type[BaseModel] = Spec
    for part in parent_loc:
        field = model.model_fields.get(str(part))
        if field is None:
            break
        sub = next((a for a in typing.get_args(field.annotation) or (field.annotation,)
                    if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None:
            break
        model = sub
    return sorted(model.model_fields)


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = _pretty_loc(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if not err["loc"] and err["type"] == "value_error":  # a check across sections names its keys itself
        return msg
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key (expected one of: {', '.join(_allowed_keys(err['loc'][:-1]))})"
    got = err.get("input")
    if isinstance(got, (dict, list)) or got is None:
        return f"{loc}: {msg}"
    return f"{loc}: {msg}, got {got!r}"


def section_of(raw: dict, keys: list[str], path: str, where: str) -> dict:
    """The section of `raw` that holds the last of `keys` (made where missing): the one walker of dotted keys,
    for --set on a spec's YAML and for the overrides a tuning trial samples, so both reach a field the same way."""
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise SpecError(f"{where}: --set {path}: '{k}' is not a section")
    return node


def apply_override(raw: dict, assignment: str, file: str) -> None:
    """`model.depth=56` -> raw["model"]["depth"] = 56, with the value parsed as YAML. OmegaConf's dotlist parses the
    same `key=value` form, but its values are OmegaConf's grammar (`${...}` interpolation, its own quoting), not the
    YAML a spec is written in, and a bad key would be its error, not one line naming the file and the key; this
    is the few lines that keep `--set` a spec's own language."""
    if "=" not in assignment:
        raise SpecError(f"{file}: --set {assignment}: expected KEY.PATH=VALUE")
    path, value = assignment.split("=", 1)
    keys = path.strip().split(".")
    node = section_of(raw, keys, path, file)
    try:
        node[keys[-1]] = parse_yaml(value)
    except SpecError as e:
        raise SpecError(f"{file}: --set {path}: {e}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{file}: --set {path}: expected a YAML value (e.g. 56, 0.1, [0, 1], true), got {value!r}: "
                        f"{getattr(e, 'problem', e)}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader, refusing a key given twice in one mapping: left to itself the last one wins, and a spec
    edited in two places trains on whichever came second without a word."""

    def construct_mapping(self, node, deep=False):
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise SpecError(f"key {key!r} given twice (line {seen[key]} and line {line}); expected each key once "
                                "in a mapping")
            seen[key] = line
        return super().construct_mapping(node, deep)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader: plain data, no objects


def read_yaml(path: Path):
    """The YAML of a spec file, or one line saying why there is none: not text, not YAML, or no keys at all (an
    empty or all-comment file would otherwise be the default recipe, trained without a word)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not a text file (byte 0x{e.object[e.start]:02x} at offset {e.start} is not UTF-8); "
                        "expected a YAML spec") from None
    try:
        raw = parse_yaml(text)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if raw is None or raw == {}:
        raise SpecError(f"{path}: empty spec (no keys, only blanks or comments); expected a mapping of spec keys "
                        "(model, optimizer, schedule, data, ...)")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: <top level>: expected a mapping of spec keys, got {type(raw).__name__}")
    return raw


NOT_INHERITED = ("description", "name", "heavy")  # what a spec says of itself, never taken from its base


def merged(base: dict, over: dict) -> dict:
    """`over` on top of `base`, section by section (a list or value replaces; a mapping merges key by key)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def with_base(path: Path, raw: dict, seen: tuple[Path, ...] = ()) -> dict:
    """A spec that names `base: FILE` (relative to its folder, inside the folder above it: `baseline.yaml`,
    `../table6/resnet32.yaml`) states only its difference, as Hydra's defaults with an override do: the base's keys,
    less its description, name and heaviness, with this spec's on top. The result is validated as any spec, so the
    resolved spec and its hash are those of the whole recipe written out."""
    base = raw.pop("base", None)
    if base is None:
        return raw
    target = path.parent / str(base)
    if not isinstance(base, str) or target.suffix != ".yaml" or not inside(path.parent.parent, target):
        raise SpecError(f"{path}: base: expected a .yaml spec beside this one or in a folder beside its own (e.g. "
                        f"baseline.yaml), got {base!r}")
    if target.resolve() in seen or target.resolve() == path.resolve():
        raise SpecError(f"{path}: base: {base}: bases that lead back to this spec (expected a chain that ends)")
    if not target.is_file():
        raise SpecError(f"{path}: base: {base}: spec file not found")
    parent = with_base(target, copy.deepcopy(read_yaml(target)), (*seen, path.resolve()))
    return merged({k: v for k, v in parent.items() if k not in NOT_INHERITED}, raw)
