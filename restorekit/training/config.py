"""Training configuration: a pydantic model loaded from TOML (or YAML) plus ``key=value`` overrides.

A plugin's trainer subclasses :class:`TrainConfig` and adds its model and loss fields; the file
and the command line are validated against that subclass, so an unknown key is an error that
names the key. Overrides use dotted keys for nested models (``data.factors=[1,2,4]``); values
are parsed as TOML literals (numbers, booleans, lists, quoted strings) and fall back to a plain
string, so ``--set optimizer=adam`` works without quotes.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import RestorekitError
from ..options import FLOAT32_MAX, OptionError, annotation_at, coerce, structure_hint


class ConfigError(RestorekitError):
    """A training config file or override is unreadable or invalid."""


class _Strict(BaseModel):
    # allow_inf_nan: a bound lets inf through (gt=0) and NaN through none; no setting means either.
    # (protected_namespaces: a trainer's ``model_name`` setting is no clash with pydantic's ``model_`` methods)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, protected_namespaces=())


class DataConfig(_Strict):
    """Where the training faces come from and how LR inputs are made from them."""

    # Folder of HR images (recursive); `restorekit train --data DIR` sets it.
    root: str | None = None
    # Factors drawn uniformly per sample; the LR is the HR at input size downscaled by F.
    factors: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16])
    # Validation split: a file listing validation images (text, one relative path per line, `!path`
    # for one left out of training too, e.g. a re-encoded copy of a validation image; or JSON
    # {"val": [...], "train": [...], "exclude": [...]}) or the last fraction of the sorted file list.
    # Byte-for-byte copies of validation images are left out of training either way.
    split_file: str | None = None
    holdout_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    flip: bool = True
    # Round LR inputs to 8-bit levels, as real inputs are 8-bit files.
    quantize: bool = True
    # Keep decoded, resized HR images in memory (uint8) across epochs.
    cache: bool = False
    max_val_images: int = Field(default=16, ge=1)
    # Training images under these subfolders of the root appear this many times per epoch, to
    # balance a small subset against a large one (e.g. {"ffhq128" = 4}); validation is unchanged.
    repeat: dict[str, int] = Field(default_factory=dict)
    # A training image that cannot be read (corrupt, truncated, not an image): "skip" leaves it
    # out with a warning naming it, so one bad file does not end a long run; "stop" ends the run
    # with an error naming it (after a checkpoint), for data that must be used whole.
    bad_images: Literal["skip", "stop"] = "skip"

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if not self.factors or any(f < 1 for f in self.factors):
            raise ValueError(f"factors must be positive integers; got {self.factors}")
        if any(k < 1 for k in self.repeat.values()):
            raise ValueError(f"repeat counts must be ≥ 1; got {self.repeat}")
        return self


#: Adam's (beta1, beta2): each in [0, 1); outside, the optimizer would fail mid-build.
Betas = tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]]


class TrainConfig(_Strict):
    """Fields every trainer understands; plugins subclass it for their model and losses."""

    steps: int = Field(default=1000, ge=1, description="optimizer steps in total (not per session)")
    batch_size: int = Field(default=8, ge=1, description="images per micro-batch per process")
    grad_accum: int = Field(default=1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(default=1e-4, gt=0)
    # Learning rate as a function of the step only (so resuming reproduces it): constant; a cosine
    # decay from `lr` to `lr·lr_final_ratio` between `lr_decay_start` and `steps`; or linear: `lr`
    # until `lr_decay_start`, then falling linearly to 0 at `steps` (pix2pixHD's `niter` constant
    # epochs then `niter_decay` decaying ones, counted in steps; `lr_final_ratio` is not used).
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    lr_decay_start: int = Field(default=0, ge=0)
    lr_final_ratio: float = Field(default=0.1, ge=0, le=1)
    optimizer: Literal["adam", "ranger"] = "ranger"
    # None: the optimizer's defaults (adam: 0.9, 0.999 / 1e-8; ranger: 0.95, 0.999 / 1e-5 as pSp's).
    betas: Betas | None = None
    eps: float | None = Field(default=None, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    # Ranger = RAdam + Lookahead (+ gradient centralization), pSp's optimizer.
    lookahead_k: int = Field(default=6, ge=1)
    lookahead_alpha: float = Field(default=0.5, ge=0, le=1)
    grad_centralization: bool = True
    grad_clip: float | None = Field(default=None, gt=0)
    amp: bool = Field(default=False, description="autocast on CUDA (on the CPU only with amp_cpu)")
    amp_dtype: Literal["bf16", "fp16"] = "bf16"
    amp_cpu: bool = Field(default=False, description="with amp, bf16 autocast on the CPU too: pays where the "
                                                     "CPU has AMX or AVX-512 BF16 (oneDNN), costs elsewhere")
    seed: int = Field(default=0, ge=0, lt=2**32, description="the run's random seed (initial weights, data "
                                                           "order, noise); below 2**32")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
                        description="auto, cpu, cuda or cuda:N")
    num_threads: int | None = Field(default=None, ge=1, description="torch.set_num_threads")
    num_workers: int = Field(default=0, ge=0)
    log_every: int = Field(default=10, ge=1)
    val_every: int = Field(default=500, ge=1)
    ckpt_every: int = Field(default=500, ge=1)
    keep_ckpts: int = Field(default=2, ge=1, description="how many of the newest step checkpoints are kept (all told)")
    out: str | None = None
    ddp_find_unused: bool = False
    data: DataConfig = Field(default_factory=DataConfig)

    # Settings added with a default that is not what runs did before them: the value a checkpoint
    # saved before the setting existed trained with (``{"key": value}``, top-level settings). A
    # resumed run takes it from such a checkpoint, and a comparison with one reads it there; a
    # setting added with the earlier behaviour as its default needs no entry.
    SETTINGS_BEFORE: ClassVar[dict[str, Any]] = {}

    # Settings (dotted for tables) that `--resume` does not report when they differ from the
    # checkpoint's: changing them on resume is expected and leaves what is trained as it was.
    # Subclasses add their own: ``RESUME_EXEMPT = {**TrainConfig.RESUME_EXEMPT, "key": "why"}``.
    RESUME_EXEMPT: ClassVar[dict[str, str]] = {
        "steps": "the total: raising it extends a run and lowering it to the checkpoint's step ends one "
                 "(what `--resume --steps N` is for); the steps already taken are unchanged",
        "log_every": "how often losses are averaged and logged; the optimizer steps are the same",
        "val_every": "validation runs under its own RNG and leaves the training state untouched",
        "ckpt_every": "when checkpoints are written; the training state is the same",
        "keep_ckpts": "how many checkpoints stay on disk",
        "num_workers": "loader processes; the batches are functions of (seed, epoch, index) whoever loads them",
        "num_threads": "CPU threads for the same computation",
        "out": "the run folder, which may be moved or copied between sessions",
        "data.bad_images": "what happens at an unreadable image; while every image reads, nothing changes",
    }

    # Settings (dotted for tables) a trainer does not use, with what it does instead: the subclass
    # refuses a value other than the default (its validator), and a checkpoint's value of one is
    # dropped on resume (it had no effect; a run saved before the refusal may hold one).
    UNUSED: ClassVar[dict[str, str]] = {}

    # Settings (dotted for tables) that name a file or folder. A checkpoint saves them absolute
    # (:func:`absolute_settings`), so `--resume` reads the same files from any working folder:
    # "path" is always a path; "name_or_path" is a weights name or a file, made absolute only
    # when it names one that exists (a name stays a name). Subclasses add their own:
    # ``PATH_SETTINGS = {**TrainConfig.PATH_SETTINGS, "key": "name_or_path"}``.
    PATH_SETTINGS: ClassVar[dict[str, Literal["path", "name_or_path"]]] = {
        "data.root": "path", "data.split_file": "path", "out": "path",
    }

    @model_validator(mode="after")
    def _check_amp(self) -> "TrainConfig":
        if self.amp and self.amp_cpu and self.amp_dtype != "bf16":
            raise ValueError("amp_cpu autocasts to bf16 only (amp_dtype=bf16): fp16 would need a gradient scaler")
        return self

    @model_validator(mode="after")
    def _check_learning_rates(self) -> "TrainConfig":
        """Every ``lr*`` number a float32 optimizer step can take (a subclass's ``lr_d`` included)."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name.startswith("lr") and isinstance(value, float) and abs(value) > FLOAT32_MAX:
                raise ValueError(f"{name} {value:g} is beyond float32's range ({FLOAT32_MAX:.4g}): the optimizer "
                                 "cannot take it")
        return self

    def saved_settings(self) -> dict[str, Any]:
        """What a checkpoint saves: the settings as JSON, paths made absolute (:func:`absolute_settings`)."""
        return absolute_settings(type(self), self.model_dump(mode="json"))


C = TypeVar("C", bound=TrainConfig)


def _names_registered_weights(value: str) -> bool:
    """Whether a ``name_or_path`` setting means registered weights (no folder in it, a registered
    name) rather than a file; False when the registry cannot be read."""
    from ..weights import registered_name

    try:
        return registered_name(value) is not None
    except RestorekitError:
        return False


def absolute_settings(cls: type[TrainConfig], data: dict[str, Any]) -> dict[str, Any]:
    """A copy of the settings ``data`` with each of ``cls.PATH_SETTINGS`` that is relative made
    absolute against the current folder, where the files it names are read from (a
    ``name_or_path`` setting only when such a file or folder exists and it is no registered weights
    name). Applied to what a checkpoint saves, and to both sides when a resumed run's settings are
    compared with it."""
    out = json.loads(json.dumps(data))
    for key, kind in cls.PATH_SETTINGS.items():
        *tables, last = key.split(".")
        node: Any = out
        for table in tables:
            node = node.get(table) if isinstance(node, dict) else None
        value = node.get(last) if isinstance(node, dict) else None
        if not isinstance(value, str) or not value or Path(value).is_absolute():
            continue
        if kind == "name_or_path" and (not Path(value).exists() or _names_registered_weights(value)):
            continue  # a name stays a name, even beside a same-named file (./NAME is the file)
        node[last] = os.path.abspath(value)
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML (``.toml``) or YAML (``.yaml``/``.yml``, needs pyyaml) file as a dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}); a config is a TOML or YAML text file") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            raise ConfigError(f"{p}: YAML configs need pyyaml (pip install pyyaml), or use TOML") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: invalid YAML ({exc})") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a table of settings")
    return data


def parse_value(text: str) -> Any:
    """A command-line value: a TOML literal when it parses as one, else the string itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def override_value(model: type[BaseModel] | None, key: str, text: str) -> Any:
    """One ``--set`` value, read by the type of the setting it is for in ``model``.

    Booleans take only true/false/1/0/yes/no (any case); strings are taken as written (TOML
    quotes optional); lists, tables and numbers as TOML or JSON literals. Without a model, or for
    a key the model does not know (validation then names it), a TOML literal or the text.
    """
    annotation = annotation_at(model, key.split(".")) if model is not None else None
    if annotation is None:
        return parse_value(text)
    try:
        value = coerce(key, annotation, text)
    except OptionError as exc:
        raise ConfigError(f"--set: {exc}") from None
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return parse_value(value)  # a TOML-quoted string
    return value


def apply_overrides(data: dict[str, Any], pairs: list[str] | tuple[str, ...],
                    model: type[BaseModel] | None = None) -> dict[str, Any]:
    """Apply ``key=value`` / ``a.b=value`` overrides to a nested dict (a copy); values are read
    by the types of ``model``'s settings when given (see :func:`override_value`)."""
    out = json.loads(json.dumps(data))
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set '{pair}': expected key=value")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set '{pair}': '{part}' is not a table")
            node = child
        node[parts[-1]] = override_value(model, key, value.strip())
    return out


def merge_settings(base: dict[str, Any], top: dict[str, Any], model: type[BaseModel] | None = None) -> dict[str, Any]:
    """``base`` with ``top`` laid over it (copies; the inputs are left as they were): a table that
    is a nested model of ``model`` (``data``) is merged key by key; every other value of ``top``,
    a dict-valued setting (``data.repeat``) included, replaces ``base``'s whole."""
    out = json.loads(json.dumps(base))
    for key, value in json.loads(json.dumps(top)).items():
        table = _table_model(model, key)
        if table is not None and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_settings(out[key], value, table)
        else:
            out[key] = value
    return out


def _table_model(model: type[BaseModel] | None, key: str) -> type[BaseModel] | None:
    """The nested model setting ``key`` of ``model`` holds (``X`` or ``X | None``), else None."""
    annotation = annotation_at(model, [key]) if model is not None else None
    for candidate in typing.get_args(annotation) or (annotation,):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


@dataclass(frozen=True)
class Layer:
    """Settings laid under the others (a checkpoint's, a file's), to name where a bad one came from:
    ``source`` starts the error line; ``hint`` (if any) follows the setting, instead of "did you mean"."""

    source: str
    data: dict[str, Any]
    hint: str = ""


def checkpoint_layer(path: str | Path, data: dict[str, Any]) -> Layer:
    """The settings a checkpoint was saved with, as the bottom :class:`Layer` of a resumed run."""
    return Layer(str(path), data, "in the run's saved config (the run was made by another restorekit version: "
                                  "resume it with that version, or start a new run in another --out)")


def validate_config(cls: type[C], data: dict[str, Any], *, source: str = "config",
                    overrides: list[str] | tuple[str, ...] = (), layers: Sequence[Layer] = ()) -> C:
    """Validate ``data`` against ``cls`` with a one-line error naming the key, and where the
    value came from: the ``--set`` among ``overrides`` that gave it, else the last of ``layers``
    (lowest first) that holds it, else ``source``."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        parts = [str(p) for p in err["loc"]]
        key = ".".join(parts) or "?"
        layer = next((ly for ly in reversed(layers) if _holds(ly.data, parts)), None)
        hint = ""
        if override_for(key, overrides):
            source = str(override_for(key, overrides))
        elif layer is not None:
            source, hint = layer.source, layer.hint
        if err["type"] == "extra_forbidden":
            tail = f" {hint}" if hint else _suggest_key(key, cls)
            raise ConfigError(f"{source}: unknown setting '{key}'{tail}") from None
        tail = f", {hint}" if hint else ""
        if not parts or isinstance(err.get("input"), dict):
            # A check across settings (a model validator): its message names them; the input is the
            # whole table, which says nothing. The values may come from the file, --set or both.
            where = ", ".join([*(ly.source for ly in layers), *(f"--set {p}" for p in overrides)]) or source
            scope = f"settings{' in ' + '.'.join(parts) if parts else ''}"
            raise ConfigError(f"{where}: {scope}: {err['msg']}") from None
        if err["type"] == "finite_number":  # TOML's inf/nan, YAML's .inf/.nan: named by the setting holding it
            setting, value = _setting_of(data, parts)
            raise ConfigError(f"{source}: setting '{setting}' must be a finite number; got {value!r}{tail}") from None
        tail += structure_hint(err)
        raise ConfigError(f"{source}: setting '{key}': {err['msg']} (got {err.get('input')!r}){tail}") from None


def _setting_of(data: dict[str, Any], parts: list[str]) -> tuple[str, Any]:
    """The dotted key and value of the setting at ``parts`` (an error's location) as ``data`` gives
    it: a list is one setting (``betas``, not ``betas.1``), a table's entries are named
    (``data.repeat.a``)."""
    node: Any = data
    names: list[str] = []
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            break
        names.append(part)
        node = node[part]
    return ".".join(names or parts), node if names else None


def setting_source(key: str, overrides: list[str] | tuple[str, ...], layers: Sequence[Layer], fallback: str) -> str:
    """Where the setting ``key`` (dotted) came from, to start an error line: the last ``--set`` that
    gave it, else the last of ``layers`` (lowest first) that holds it, else ``fallback``."""
    given = override_for(key, overrides)
    if given is not None:
        return given
    parts = key.split(".")
    return next((ly.source for ly in reversed(layers) if _holds(ly.data, parts)), fallback)


def _holds(data: dict[str, Any], parts: list[str]) -> bool:
    """Whether ``data`` gives the setting at ``parts`` (or the list or value holding it)."""
    node: Any = data
    for part in parts:
        if not isinstance(node, dict):
            return True  # a list or value set here holds the item that is wrong
        if part not in node:
            return False
        node = node[part]
    return bool(parts)


def override_for(key: str, pairs: list[str] | tuple[str, ...]) -> str | None:
    """``--set PAIR`` for the last of ``pairs`` that set ``key``, a table holding it, or a setting
    inside it (``--set Data.flip=false`` made the unknown table ``Data``)."""
    for pair in reversed(pairs):
        k = pair.partition("=")[0].strip().replace("-", "_")
        if key == k or key.startswith(k + ".") or k.startswith(key + "."):
            return f"--set {pair}"
    return None


def _all_keys(cls: type[BaseModel]) -> list[str]:
    """Every setting of ``cls``, dotted for tables (``lr``, ``data.factors``)."""
    keys = list(cls.model_fields)
    for name, f in cls.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += [f"{name}.{sub}" for sub in ann.model_fields]
    return keys


def _suggest_key(key: str, cls: type[BaseModel]) -> str:
    """' (did you mean X?)' with X a whole dotted key: ``data.factorz`` → ``data.factors``, and a
    table's setting given without its table (``factorz``) → ``data.factors`` too."""
    from ..plugins import suggest

    keys = _all_keys(cls)
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in reversed(keys)}  # a top-level name wins a tie
    exact = by_leaf.get(key.rsplit(".", 1)[-1])
    if exact is not None and exact != key:  # a setting put in the wrong table (data.lr → lr)
        return f" (did you mean '{exact}'?)"
    close = suggest(key, keys)
    if close:
        return close
    leaf = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(by_leaf), n=1, cutoff=0.6)
    return f" (did you mean '{by_leaf[leaf[0]]}'?)" if leaf else ""


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                **fields: Any) -> C:
    """Build a ``cls`` config from a file (optional), then ``fields``, then ``key=value`` overrides."""
    data = read_config_file(path) if path is not None else {}
    for k, v in fields.items():
        if v is not None:
            data[k] = v
    data = apply_overrides(data, overrides, cls)
    return validate_config(cls, data, source=str(path) if path is not None else "config", overrides=overrides)


def without_unused(settings: dict[str, Any], cls: type[TrainConfig]) -> dict[str, Any]:
    """``settings`` less ``cls.UNUSED``'s keys (dotted for tables): what a checkpoint's saved
    settings keep of them is left to the defaults."""
    out = dict(settings)
    for key in cls.UNUSED:
        head, _, rest = key.partition(".")
        if not rest:
            out.pop(head, None)
        elif isinstance(out.get(head), dict):
            out[head] = {k: v for k, v in out[head].items() if k != rest}
    return out
