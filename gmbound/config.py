"""Run configuration: defaults, YAML files, dotted ``key=value`` overrides and validation.

A configuration is a plain nested dict (so it goes into checkpoints as it is) with four
sections, ``data``, ``model``, ``train`` and ``eval``, plus a few top-level keys. Every key
has a default in ``DEFAULTS``; a key that is not there is an error that names it (and the
closest known key), as is a value of the wrong type or range, an unknown method, model or
dataset name, and a data folder that does not exist.
"""
from __future__ import annotations

import copy
import difflib
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import yaml

from .data import DATASET_NAMES, canonical_name
from .losses import WEIGHT_SHAPES
from .models import MODEL_NAMES
from .schedules import RAMPS

# Training methods: the bound used by the robust loss and whether it spans N radii.
#   natural       plain cross-entropy (the non-robust baseline)
#   ibp           IBP training (Gowal et al.), one radius
#   crown-ibp     CROWN-IBP training (Zhang et al.), one radius
#   gm-ibp        GM loss over N radii with IBP bounds
#   gm-crown-ibp  GM loss over N radii with CROWN-IBP bounds (the paper's method)
TRAIN_METHODS = ("natural", "ibp", "crown-ibp", "gm-ibp", "gm-crown-ibp")
VERIFIERS = ("ibp", "crown-ibp", "crown")
BACKENDS = ("auto", "cuda", "cpu", "reference")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float64")


# An eps grid longer than this is almost surely a typo (0:1:1e-8 would be 10^8 radii and
# gigabytes of lists before any bound); the cost of evaluation grows linearly in it anyway.
MAX_EPS_GRID_POINTS = 10_000


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key or path."""


DEFAULTS: dict[str, Any] = {
    "name": "run",               # run name; the default output folder is runs/<name>
    "out_dir": None,             # output folder (logs, checkpoint); None: runs/<name>
    "seed": 0,
    "device": "auto",            # auto (cuda when available), cpu, cuda, or cuda:<index>
    "threads": None,             # torch CPU threads (None: torch's default); 1 is faster on shared cores
    "keep_freed_memory": True,   # on CPU, glibc keeps freed memory for reuse (gmbound.cpu_allocator)
    "dist_timeout": 1800.0,      # torchrun runs: seconds a collective waits for the other processes before
                                 # the run stops with an error (a dead or stuck rank); above rank 0's test pass
    "data": {
        "name": "embedded-mnist",
        "dir": None,             # torchvision layout; not needed for embedded-mnist
        "download": False,
        "train_subset": None,    # keep the first n training images
        "test_subset": None,     # keep the first n test images
        "augment": False,        # CROWN-IBP's random crops (+ flips on CIFAR-10)
        "num_workers": 0,
        "test_batch_size": 512,
    },
    "model": {
        "name": "dm-small",
        "normalize": False,      # prepend Normalize(mean, std) of the dataset; False: raw [0, 1] pixels
        "hidden": None,          # mlp only: list of hidden widths
    },
    "train": {
        "method": "gm-crown-ibp",
        "epochs": 10,
        "batch_size": 256,       # global batch (split over processes under torchrun)
        "optimizer": "adam",
        "lr": 5.0e-4,
        "weight_decay": 0.0,
        "lr_milestones": [],     # epochs after which the lr is multiplied by lr_gamma
        "lr_gamma": 0.1,
        "grad_clip": None,       # max gradient norm; None: no clipping
        "eps": 0.3,              # eps_train (pixel space, [0, 1] images)
        "warmup_epochs": 0,      # natural training before the eps ramp starts (fractions allowed)
        "ramp_epochs": 1,        # eps ramps 0 -> eps over these epochs (per batch; fractions allowed)
        "ramp": "linear",        # linear or smooth (DeepMind's smoothed ramp)
        "kappa_start": 1.0,
        "kappa_end": 0.5,
        "beta_start": 1.0,
        "beta_end": 0.0,
        "n_radii": 10,           # N of the GM loss (gm-* methods; ibp / crown-ibp use 1)
        "weights": "inverse",    # c_i shape: inverse, uniform, inverse_square, linear_decreasing, increasing
        "stochastic": False,     # stochastic GRT: one radius per sample drawn with probability c_i
        "loss_fusion": False,    # bound CE itself with one CROWN-IBP row per (radius, sample) (gm_loss's loss_fusion)
        "backend": "auto",       # bound engine backend passed to gm_loss
        "test_every": 1,         # test-set check every k epochs (0: never)
        "test_verifier": "ibp",  # verifier of the per-epoch test check (at eps_train)
        "progress": True,        # tqdm bar per epoch
        "tensorboard": "auto",   # auto (when importable), true, false
        "keep_checkpoints": False,  # also keep checkpoint_epoch<k>.pt
    },
    "eval": {
        "eps_grid": "0:0.5:0.05",    # start:stop:step (stop included) or a list
        "verifiers": ["ibp", "crown-ibp"],
        "pgd_steps": 20,
        "pgd_restarts": 1,
        "pgd_step_size": None,       # None: 2.5 * eps / steps
        "pgd_loss": "ce",            # ce (cross-entropy) or margin (max_j f_j - f_y: the stronger attack)
        "pgd_eps_grid": None,        # radii PGD attacks (a subset of eps_grid, e.g. a coarser one); None: all
        "batch_size": 256,
        "radii_chunk": 8,            # radii bounded per call (memory ~ chunk x batch)
        "test_subset": None,         # None: the data section's test set
        "dtype": "float32",          # float64 for the strictest soundness
        "crown_max_neurons": 2000,   # full CROWN only for nets with at most this many ReLU neurons
        "crown_batch_size": 32,
        "exhaustive": False,         # bound every radius, attack every sample (else bisection over the grid)
        "pgd_audit": True,           # bisection: attack each certified sample at its largest certified radius
    },
}

# Keys whose default is None (or a list) need the type spelled out.
_TYPES: dict[str, tuple] = {
    "out_dir": (str, type(None)),
    "threads": (int, type(None)),
    "data.dir": (str, type(None)),
    "data.train_subset": (int, type(None)),
    "data.test_subset": (int, type(None)),
    "model.hidden": (list, type(None)),
    "train.lr_milestones": (list,),
    "train.warmup_epochs": (float,),  # fractions allowed: a short budget keeps CROWN-IBP's proportions
    "train.ramp_epochs": (float,),
    "train.grad_clip": (float, type(None)),
    "train.tensorboard": (str, bool),
    "eval.eps_grid": (str, list),
    "eval.verifiers": (list, str),
    "eval.pgd_step_size": (float, type(None)),
    "eval.pgd_eps_grid": (str, list, type(None)),
    "eval.test_subset": (int, type(None)),
}

# Keys that may change between a run and its resumption without changing the result.
RESUME_MUTABLE = ("train.epochs", "train.progress", "train.tensorboard", "train.keep_checkpoints",
                  "data.dir", "data.download", "data.num_workers", "device", "out_dir", "threads",
                  "keep_freed_memory", "dist_timeout")


# ----------------------------------------------------------------------------- flat views
def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (only known sections are descended)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _known_keys() -> list[str]:
    return list(flatten(DEFAULTS))


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, _known_keys(), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _set(cfg: dict, dotted: str, value: Any) -> None:
    node = cfg
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def _get(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


# ----------------------------------------------------------------------------- merging
def _merge(base: dict, update: Mapping, prefix: str = "") -> None:
    for key, value in update.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str) or key not in base:
            raise ConfigError(f"unknown config key {path!r}{_suggest(str(path))}")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {path!r} is a section; give it a mapping, not {value!r}")
            _merge(base[key], value, path + ".")
        else:
            base[key] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=2"`` -> ``("train.epochs", 2)``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.epochs=2)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key not in _known_keys():
        section = key in DEFAULTS and isinstance(DEFAULTS[key], dict)
        hint = " (it is a section; override one of its keys)" if section else _suggest(key)
        raise ConfigError(f"unknown config key {key!r} in override {text!r}{hint}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: cannot read the value as YAML ({err})") from None
    return key, value


def load_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file (errors name the file)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        with open(p) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{p}: the top level must be a mapping of config keys")
    return dict(data)


def make_config(path: Optional[str | Path] = None, overrides: Iterable[str] = (),
                base: Optional[Mapping] = None, check_paths: bool = True) -> dict:
    """Defaults, then ``base`` (a mapping), then the YAML file, then the ``key=value`` overrides; validated."""
    cfg = copy.deepcopy(DEFAULTS)
    if base is not None:
        _merge(cfg, base)
    if path is not None:
        data = load_yaml(path)
        try:
            _merge(cfg, data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, value)
    return validate(cfg, check_paths=check_paths)


# ----------------------------------------------------------------------------- validation
def _expected_types(key: str) -> tuple:
    if key in _TYPES:
        return _TYPES[key]
    default = _get(DEFAULTS, key)
    return (type(default),)


def _coerce(key: str, value: Any) -> Any:
    types = _expected_types(key)
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(f"config key {key!r} must be {_type_names(types)}, got {value!r}")
    if value is None and type(None) in types:
        return None
    if float in types and isinstance(value, int):
        return float(value)
    if float in types and isinstance(value, str):
        try:  # YAML 1.1 reads "5e-4" (no dot) as a string; "17.6/255" is a fraction
            return parse_number(value)
        except ValueError:
            pass
    if isinstance(value, types):
        return value
    raise ConfigError(f"config key {key!r} must be {_type_names(types)}, got {value!r}")


def parse_number(text: str) -> float:
    """``"0.3"``, ``"5e-4"`` or a fraction ``"17.6/255"`` -> float (ValueError otherwise)."""
    parts = str(text).strip().split("/")
    if len(parts) == 1:
        return float(parts[0])
    if len(parts) == 2:
        den = float(parts[1])
        if den == 0:
            raise ValueError(f"division by zero in {text!r}")
        return float(parts[0]) / den
    raise ValueError(f"not a number: {text!r}")


def _type_names(types: tuple) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true/false",
             list: "a list", type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check(cond: bool, key: str, what: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"config key {key!r} {what}, got {value!r}")


def parse_eps_grid(grid: Any, key: str = "eval.eps_grid") -> list[float]:
    """``"0:0.5:0.01"`` (start:stop:step, stop included; fractions like ``1/255`` allowed), a comma
    list or a list of numbers -> sorted radii (at most ``MAX_EPS_GRID_POINTS``)."""
    if isinstance(grid, str) and ":" not in grid:
        grid = [p for p in grid.split(",") if p.strip()]
    if isinstance(grid, str):
        try:
            nums = [parse_number(p) for p in grid.split(":")]
        except ValueError:
            raise ConfigError(f"{key} {grid!r}: expected start:stop:step or a comma list") from None
        if len(nums) != 3:
            raise ConfigError(f"{key} {grid!r}: expected start:stop:step (e.g. 0:0.5:0.01)")
        else:
            start, stop, step = nums
            if not all(math.isfinite(v) for v in nums):
                raise ConfigError(f"{key} {grid!r}: start, stop and step must be finite numbers")
            if step <= 0 or stop < start or start < 0:
                raise ConfigError(f"{key} {grid!r}: need 0 <= start <= stop and step > 0")
            span = (stop - start) / step  # may overflow to inf for a denormal step
            if not span + 1 <= MAX_EPS_GRID_POINTS + 0.5:
                count = f"{int(round(span)) + 1:,}" if math.isfinite(span) else "too many"
                raise ConfigError(f"{key} {grid!r} has {count} radii, more than the limit of "
                                  f"{MAX_EPS_GRID_POINTS:,}; use a larger step")
            n = int(round(span))
            values = [round(start + i * step, 10) for i in range(n + 1) if start + i * step <= stop + 1e-9 * step]
    elif isinstance(grid, (list, tuple)):
        try:
            values = [parse_number(v) if isinstance(v, str) else float(v) for v in grid]
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: every entry must be a number, got {grid!r}") from None
    else:
        raise ConfigError(f"{key} must be start:stop:step or a list of numbers, got {grid!r}")
    if not values:
        raise ConfigError(f"{key} {grid!r} is empty")
    if len(values) > MAX_EPS_GRID_POINTS:
        raise ConfigError(f"{key} has {len(values):,} radii, more than the limit of {MAX_EPS_GRID_POINTS:,}")
    if any(not v >= 0 or v != v or v == float("inf") for v in values):
        raise ConfigError(f"{key}: radii must be finite and non-negative, got {values}")
    return sorted(set(values))


def parse_verifiers(value: Any, key: str = "eval.verifiers") -> list[str]:
    names = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for n in names:
        n = str(n).strip().lower()
        if n not in VERIFIERS:
            raise ConfigError(f"{key}: unknown verifier {n!r}; choose from {', '.join(VERIFIERS)}")
        if n not in out:
            out.append(n)
    if not out:
        raise ConfigError(f"{key}: give at least one verifier")
    return out


def check_pgd_settings(e: Mapping[str, Any], prefix: str = "eval.") -> None:
    """``pgd_loss`` is a known attack loss and ``pgd_eps_grid`` a subset of ``eps_grid``."""
    from .attacks import LOSSES

    _check(e["pgd_loss"] in LOSSES, f"{prefix}pgd_loss", f"must be one of {', '.join(LOSSES)}", e["pgd_loss"])
    if e["pgd_eps_grid"] is None:
        return
    grid = parse_eps_grid(e["eps_grid"])
    for p in parse_eps_grid(e["pgd_eps_grid"], f"{prefix}pgd_eps_grid"):
        _check(any(abs(p - g) <= 1e-9 * max(1.0, g) for g in grid), f"{prefix}pgd_eps_grid",
               f"radius {p:g} is not on {prefix}eps_grid (PGD runs at a subset of the verification radii)",
               e["pgd_eps_grid"])


def validate(cfg: dict, check_paths: bool = True) -> dict:
    """Check every key of a merged configuration; returns it with values coerced (ints to floats...)."""
    flat = flatten(cfg)
    known = set(_known_keys())
    for key in flat:
        if key not in known:
            raise ConfigError(f"unknown config key {key!r}{_suggest(key)}")
    for key in known:
        if key not in flat:
            raise ConfigError(f"config key {key!r} is missing")
        _set(cfg, key, _coerce(key, flat[key]))
    t, d, m, e = cfg["train"], cfg["data"], cfg["model"], cfg["eval"]

    _check(t["method"] in TRAIN_METHODS, "train.method", f"must be one of {', '.join(TRAIN_METHODS)}",
           t["method"])
    _check(t["optimizer"] in ("adam", "sgd"), "train.optimizer", "must be adam or sgd", t["optimizer"])
    _check(t["ramp"] in RAMPS, "train.ramp", f"must be one of {', '.join(sorted(RAMPS))}", t["ramp"])
    _check(t["weights"] in WEIGHT_SHAPES, "train.weights", f"must be one of {', '.join(WEIGHT_SHAPES)}",
           t["weights"])
    _check(t["backend"] in BACKENDS, "train.backend", f"must be one of {', '.join(BACKENDS)}", t["backend"])
    _check(t["test_verifier"] in ("ibp", "crown-ibp"), "train.test_verifier", "must be ibp or crown-ibp",
           t["test_verifier"])
    _check(t["tensorboard"] in ("auto", True, False), "train.tensorboard", "must be auto, true or false",
           t["tensorboard"])
    for key in ("epochs", "batch_size", "n_radii"):
        _check(t[key] >= 1, f"train.{key}", "must be at least 1", t[key])
    for key in ("warmup_epochs", "ramp_epochs", "test_every"):
        _check(t[key] >= 0, f"train.{key}", "must be non-negative", t[key])
    for key in ("kappa_start", "kappa_end", "beta_start", "beta_end"):
        _check(0.0 <= t[key] <= 1.0, f"train.{key}", "must lie in [0, 1]", t[key])
    _check(t["eps"] >= 0 and t["eps"] < float("inf"), "train.eps", "must be finite and non-negative", t["eps"])
    _check(t["lr"] > 0, "train.lr", "must be positive", t["lr"])
    _check(t["weight_decay"] >= 0, "train.weight_decay", "must be non-negative", t["weight_decay"])
    _check(t["lr_gamma"] > 0, "train.lr_gamma", "must be positive", t["lr_gamma"])
    _check(t["grad_clip"] is None or t["grad_clip"] > 0, "train.grad_clip", "must be positive or null",
           t["grad_clip"])
    ms = t["lr_milestones"]
    _check(all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in ms),
           "train.lr_milestones", "must be a list of positive epoch numbers", ms)
    _check(list(ms) == sorted(set(ms)), "train.lr_milestones", "must be strictly increasing", ms)

    try:
        d["name"] = canonical_name(d["name"])
    except ValueError:
        raise ConfigError(f"config key 'data.name': unknown dataset {d['name']!r}; "
                          f"known: {', '.join(DATASET_NAMES)}") from None
    for key in ("train_subset", "test_subset"):
        _check(d[key] is None or d[key] >= 1, f"data.{key}", "must be a positive count or null", d[key])
    _check(d["num_workers"] >= 0, "data.num_workers", "must be non-negative", d["num_workers"])
    _check(d["test_batch_size"] >= 1, "data.test_batch_size", "must be at least 1", d["test_batch_size"])
    if d["name"] != "embedded-mnist":
        if d["dir"] is None:
            raise ConfigError(f"config key 'data.dir' is required for dataset {d['name']!r} "
                              "(a folder in torchvision's layout, e.g. data.dir=../shared/data)")
        if check_paths and not d["download"] and not Path(d["dir"]).expanduser().is_dir():
            raise ConfigError(f"config key 'data.dir': folder not found: {d['dir']} "
                              "(set data.download=true to fetch the dataset)")

    key = m["name"].lower().replace("_", "-")
    _check(key in MODEL_NAMES, "model.name", f"must be one of {', '.join(MODEL_NAMES)}", m["name"])
    m["name"] = key
    if m["hidden"] is not None:
        _check(key == "mlp", "model.hidden", "applies to the mlp model only", m["hidden"])
        _check(len(m["hidden"]) > 0 and all(isinstance(h, int) and h >= 1 for h in m["hidden"]),
               "model.hidden", "must be a list of positive widths", m["hidden"])

    _check(cfg["threads"] is None or cfg["threads"] >= 1, "threads", "must be a positive count or null",
           cfg["threads"])
    _check(cfg["device"] in DEVICES or str(cfg["device"]).startswith("cuda:"), "device",
           "must be auto, cpu, cuda or cuda:<index>", cfg["device"])
    _check(math.isfinite(cfg["dist_timeout"]) and cfg["dist_timeout"] > 0, "dist_timeout",
           "must be a positive number of seconds", cfg["dist_timeout"])
    parse_eps_grid(e["eps_grid"])
    e["verifiers"] = parse_verifiers(e["verifiers"])
    for key in ("pgd_steps", "pgd_restarts"):
        _check(e[key] >= 0, f"eval.{key}", "must be non-negative", e[key])
    _check(e["pgd_restarts"] >= 1 or e["pgd_steps"] == 0, "eval.pgd_restarts", "must be at least 1",
           e["pgd_restarts"])
    _check(e["pgd_step_size"] is None or e["pgd_step_size"] > 0, "eval.pgd_step_size",
           "must be positive or null", e["pgd_step_size"])
    check_pgd_settings(e)
    for key in ("batch_size", "radii_chunk", "crown_batch_size"):
        _check(e[key] >= 1, f"eval.{key}", "must be at least 1", e[key])
    _check(e["crown_max_neurons"] >= 0, "eval.crown_max_neurons", "must be non-negative",
           e["crown_max_neurons"])
    _check(e["test_subset"] is None or e["test_subset"] >= 1, "eval.test_subset",
           "must be a positive count or null", e["test_subset"])
    _check(e["dtype"] in DTYPES, "eval.dtype", "must be float32 or float64", e["dtype"])
    return cfg


def out_dir(cfg: Mapping) -> Path:
    """The run's output folder."""
    return Path(cfg["out_dir"]) if cfg["out_dir"] else Path("runs") / str(cfg["name"])


def config_diff(saved: Mapping, current: Mapping, ignore: Iterable[str] = RESUME_MUTABLE) -> list[str]:
    """Dotted keys whose values differ between two configurations (``ignore`` left out).

    A key missing on one side counts as its default, so a run saved before a new key existed
    still resumes under the default (which reproduces the old behaviour). The ``eval`` section
    never blocks a resume: it does not touch training.
    """
    a, b = flatten(saved), flatten(current)
    skip = set(ignore)

    def value(flat: Mapping[str, Any], key: str) -> Any:
        if key in flat:
            return flat[key]
        try:
            return _get(DEFAULTS, key)
        except KeyError:
            return None

    return sorted(k for k in set(a) | set(b)
                  if k not in skip and not k.startswith("eval.") and value(a, k) != value(b, k))


def dump_yaml(cfg: Mapping) -> str:
    return yaml.safe_dump(dict(cfg), sort_keys=False)


# The `gmbound demo` run (configs/demo.yaml holds the same values; a test keeps them equal).
# DM-small with stochastic GRT (one radius per sample drawn with probability c_i, the unbiased
# single-radius estimate of the GM loss): the exact N-radius CROWN-IBP loss costs about N times a
# CROWN-IBP step, too much for a few CPU minutes. eps_train 0.1 so that a few hundred steps certify.
DEMO_CONFIG: dict[str, Any] = {
    "name": "demo",
    "data": {"name": "embedded-mnist"},
    "model": {"name": "dm-small"},
    "train": {"method": "gm-crown-ibp", "epochs": 6, "batch_size": 128, "lr": 1.0e-3, "eps": 0.1,
              "warmup_epochs": 1, "ramp_epochs": 4, "ramp": "linear", "kappa_start": 1.0, "kappa_end": 0.5,
              "beta_start": 1.0, "beta_end": 0.0, "n_radii": 10, "weights": "inverse", "stochastic": True,
              "lr_milestones": [5], "lr_gamma": 0.1, "progress": False},
    "eval": {"eps_grid": "0:0.15:0.025", "verifiers": ["ibp", "crown-ibp"], "pgd_steps": 10, "pgd_restarts": 1},
}
