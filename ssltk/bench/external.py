"""Encoders trained elsewhere as methods of a benchmark grid (``[[pretrain.external]]``).

An external encoder is a pretraining job that needs no training: its "checkpoint" is a weights
file. Sources it reads (always with ``torch.load(..., weights_only=True)``, so a pickle that
holds code is refused, never run):

* a plain ``state_dict``: of ssltk's backbone (``torch.save(backbone.state_dict())``) or of the
  network it wraps (a MONAI ``ResNet``'s, what ``ssltk export`` writes);
* a checkpoint holding one under a key (``{"state_dict": {...}}``: MedicalNet, Models Genesis),
  with a ``module.`` or other prefix to strip or map;
* another ssltk run's ``encoder.pt`` or ``checkpoint.pt``.

The weights are mapped (``state_key``, ``drop``, ``strip_prefix``, ``key_map``), matched against
the backbone (either ssltk's own keys or the wrapped network's, whichever the file uses) and
checked before anything trains: a missing key, an unexpected key or a shape difference is one
line naming the TOML entry and the file. At run time the mapped weights are written as an
ssltk ``encoder.pt`` under ``RUN_DIR/pretrain/``, which the finetuning cells load like any
pretrained encoder. A cell's key holds the file's sha256, so a changed file reruns its cells.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssltk.config import BenchmarkConfig, ComponentSpec, ExternalEncoder
from ssltk.engine.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from ssltk.errors import ConfigError, SsltkError
from ssltk.registry import Registry
from ssltk.store import VolumeStore

__all__ = ["ExternalJob", "check_externals", "external_jobs", "file_sha256", "fit_state",
           "load_external", "materialise", "read_state"]

STATE_KEYS = ("state_dict", "model", "net", "encoder", "backbone")
"""Sub-dicts tried, in order, when ``state_key`` is not set and the file is no state_dict."""
SHOWN = 3
"""Mismatches listed per kind in an error."""
HOWTO = "docs/how-to/external-encoders.md"


@dataclass
class ExternalJob:
    """One ``[[pretrain.external]]`` entry: shared by its cells of every seed."""

    method: str
    index: int
    entry: ExternalEncoder
    backbone: ComponentSpec
    sha256: str
    seed: None = None  # the same encoder for every seed: its cells repeat per seed

    @property
    def field(self) -> str:
        return f"pretrain.external[{self.index}]"

    def content_hash(self) -> str:
        """sha256 of what determines the encoder: the file's content, the mapping, the
        backbone and the label (not the path: a moved file is the same encoder)."""
        ident = {"external": self.entry.model_dump(mode="json", exclude={"path", "backbone"}),
                 "backbone": self.backbone.model_dump(mode="json"), "sha256": self.sha256}
        text = json.dumps(ident, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def key(self) -> str:
        return self.content_hash()[:16]

    def out_dir(self, run_dir: Path) -> Path:
        return run_dir / "pretrain" / f"{self.method}-external-{self.key[:8]}"

    def describe(self) -> dict:
        """The ``pretrain`` field of this job's results lines."""
        return {"external": self.method, "path": str(self.entry.path), "sha256": self.sha256,
                "backbone": self.backbone.name, "hash": self.content_hash()}


@lru_cache(maxsize=64)
def _sha256(path: str, stamp: tuple[int, ...]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path, field: str = "path") -> str:
    """sha256 of a file's bytes (cached per path, inode, size and change times).

    Raises:
        ConfigError: the file does not exist or cannot be read (naming ``field``).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{field}: weights file {path} does not exist; check the path "
                          f"(relative paths start at the working directory)")
    try:
        st = path.stat()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return _sha256(str(path.resolve()), stamp)
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path} ({exc.strerror or exc})") from None


def external_jobs(config: BenchmarkConfig, taken: set[str] = frozenset()) -> list[ExternalJob]:
    """One job per ``[[pretrain.external]]`` entry (each file hashed).

    Args:
        taken: method labels already in the grid (scratch, the objectives).

    Raises:
        ConfigError: a name already used, a missing file.
    """
    jobs, seen = [], set(taken)
    for i, entry in enumerate(config.pretrain.external):
        field = f"pretrain.external[{i}]"
        if entry.name in seen:
            raise ConfigError(f"{field}.name: '{entry.name}' is already a method of the grid; "
                              "give this encoder another name")
        seen.add(entry.name)
        sha = file_sha256(entry.path, f"{field}.path")
        jobs.append(ExternalJob(entry.name, i, entry, entry.backbone or config.backbone, sha))
    return jobs


# -- reading and mapping -----------------------------------------------------------------------
def _load(path: Path, field: str) -> Any:
    try:
        with path.open("rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(
            f"{field}.path: {path} holds pickled objects other than tensors (e.g. a whole "
            "model), which torch.load(weights_only=True) refuses to run; save its weights "
            "with torch.save(model.state_dict(), ...) and point to that file") from None
    except OSError as exc:
        raise ConfigError(f"{field}.path: cannot read {path} ({exc.strerror or exc})") from None
    except Exception as exc:  # truncated or foreign files raise anything
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ConfigError(f"{field}.path: {path} is not a torch weights file "
                          f"({type(exc).__name__}: {first})") from None


def _is_state(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items())


def _ssltk_state(path: Path, field: str) -> tuple[dict[str, Tensor], dict]:
    """The backbone weights of an ssltk ``encoder.pt`` or pretraining ``checkpoint.pt``."""
    try:
        state, meta = load_checkpoint(path)  # the format-version checks of the engine
    except SsltkError as exc:
        raise ConfigError(f"{field}.path: {exc}") from None
    if "backbone" in state:
        return state["backbone"], meta
    objective = state.get("objective") or {}
    weights = {k.removeprefix("backbone."): v for k, v in objective.items()
               if k.startswith("backbone.")}
    if not weights:
        raise ConfigError(f"{field}.path: ssltk checkpoint {path} holds no encoder weights; "
                          "point to a pretraining's encoder.pt or checkpoint.pt")
    return weights, meta


def _keys(value: Any, n: int = 8) -> str:
    """The first ``n`` keys of a dict, for an error message."""
    if not isinstance(value, dict):
        return f"a {type(value).__name__}, no dict"
    keys = list(map(str, value))
    return ", ".join(keys[:n]) + (f", +{len(keys) - n} more" if len(keys) > n else "")


def _pick(payload: Any, entry: ExternalEncoder, path: Path, field: str) -> dict[str, Tensor]:
    if entry.state_key is not None:
        value = payload
        for part in entry.state_key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise ConfigError(f"{field}.state_key: {path} has no '{part}' of "
                                  f"'{entry.state_key}' (it has {_keys(value)})")
            value = value[part]
    elif _is_state(payload):
        value = payload
    else:
        found = [k for k in STATE_KEYS if isinstance(payload, dict) and k in payload]
        if not found:
            raise ConfigError(f"{field}: {path} is neither a state_dict nor holds one under "
                              f"{', '.join(STATE_KEYS)} (it has {_keys(payload)}); set "
                              "state_key")
        value = payload[found[0]]
    if not _is_state(value):
        bad = (next((k for k, v in value.items() if not isinstance(v, Tensor)), None)
               if isinstance(value, dict) else None)
        what = f"'{bad}' is no tensor" if bad is not None else "it is no dict of tensors"
        raise ConfigError(f"{field}: the weights picked in {path} are not a state_dict ({what}); "
                          "set state_key to the sub-dict that holds them")
    return dict(value)


def map_keys(state: dict[str, Tensor], entry: ExternalEncoder) -> dict[str, Tensor]:
    """Apply ``drop``, ``strip_prefix`` and ``key_map`` (first matching prefix), in order."""
    out = {}
    for key, value in state.items():
        if any(key.startswith(p) for p in entry.drop):
            continue
        if entry.strip_prefix:
            key = key.removeprefix(entry.strip_prefix)
        for old, new in entry.key_map.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def read_state(entry: ExternalEncoder, backbone: ComponentSpec,
               field: str) -> dict[str, Tensor]:
    """The weights of ``entry.path`` after the key mapping (not yet checked against a network).

    Raises:
        ConfigError: a missing or unreadable file, a pickle with code, no state_dict found, an
            ssltk encoder of another backbone.
    """
    path = Path(entry.path)
    file_sha256(path, f"{field}.path")  # the missing-file error
    payload = _load(path, field)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        state, meta = _ssltk_state(path, field)
        if meta.get("backbone") not in (None, backbone.name):
            raise ConfigError(f"{field}.backbone: {path} was pretrained with backbone "
                              f"'{meta['backbone']}', not '{backbone.name}'; set backbone = "
                              f"{{name = \"{meta['backbone']}\", ...}} with its parameters")
    else:
        state = _pick(payload, entry, path, field)
    return map_keys(state, entry)


# -- matching a network ------------------------------------------------------------------------
def _plain_keys(backbone: torch.nn.Module, target: dict[str, Tensor]) -> dict[str, str]:
    """Wrapped network's key -> ssltk backbone key, from the backbone's own export mapping."""
    exported = type(backbone).export_state_dict(target) or {}
    by_id = {id(v): k for k, v in target.items()}
    return {k: by_id[id(v)] for k, v in exported.items() if id(v) in by_id}


def prefix_hint(unexpected: list[str], keys: set[str]) -> str | None:
    """The prefix whose removal makes the most ``unexpected`` keys match ``keys`` (when it
    makes at least half of them match), e.g. ``module.``."""
    counts: dict[str, int] = {}
    for u in unexpected:
        for prefix in {u[:-len(k)] for k in keys if u.endswith("." + k)}:
            counts[prefix] = counts.get(prefix, 0) + 1
    if not counts:
        return None
    best = max(counts, key=lambda p: (counts[p], -len(p)))
    return best if 2 * counts[best] >= len(unexpected) else None


def fit_state(state: dict[str, Tensor], backbone: torch.nn.Module,
              ) -> tuple[dict[str, Tensor], list[str], list[str], list[tuple]]:
    """Match ``state`` to ``backbone``'s keys, in ssltk's form or the wrapped network's.

    Missing ``num_batches_tracked`` buffers (older checkpoints have none) keep the backbone's.

    Returns:
        ``(state in the backbone's keys, missing keys, unexpected keys,
        [(key, file shape, backbone shape)])``; the three lists empty when it fits.
    """
    target = backbone.state_dict()
    plain = _plain_keys(backbone, target)
    if len(state.keys() & plain.keys()) > len(state.keys() & target.keys()):
        state = {plain.get(k, k): v for k, v in state.items()}
    for key in target:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = target[key]
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [(k, tuple(v.shape), tuple(target[k].shape)) for k, v in state.items()
              if k in target and v.shape != target[k].shape]
    return state, missing, unexpected, shapes


def _listed(keys: list, label: str) -> str:
    more = f", +{len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return f"{len(keys)} {label} ({', '.join(map(str, keys[:SHOWN]))}{more})"


def mismatch_message(field: str, path: Path, backbone: ComponentSpec, missing: list[str],
                     unexpected: list[str], shapes: list[tuple], hint: str | None = None) -> str:
    """One line: what does not fit, the first few of each kind, and the fix (``hint``: a
    prefix to strip that would make most unexpected keys match)."""
    parts = []
    if missing:
        parts.append(_listed(missing, "missing"))
    if unexpected:
        parts.append(_listed(unexpected, "unexpected"))
    if shapes:
        parts.append(_listed([f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in shapes],
                             "shape differences, file vs backbone"))
    fix = (f"try strip_prefix = \"{hint}\"" if hint is not None else
           "map the keys with state_key / drop / strip_prefix / key_map")
    return (f"{field}: {path} does not fit backbone '{backbone.name}': {'; '.join(parts)}; {fix}, "
            f"or set backbone to the network the weights come from ({HOWTO})")


def load_external(job: ExternalJob, in_channels: int, spatial_dims: int,
                  registry: Registry) -> dict[str, Tensor]:
    """The file's weights as the ssltk backbone's ``state_dict``, checked.

    Raises:
        ConfigError: one line naming ``pretrain.external[i]`` and the file, on any problem.
    """
    backbone = registry.build("backbones", job.backbone, f"{job.field}.backbone",
                              in_channels=in_channels, spatial_dims=spatial_dims)
    state = read_state(job.entry, job.backbone, job.field)
    state, missing, unexpected, shapes = fit_state(state, backbone)
    if missing or unexpected or shapes:
        target = backbone.state_dict()
        hint = prefix_hint(unexpected, set(target) | set(_plain_keys(backbone, target)))
        raise ConfigError(mismatch_message(job.field, Path(job.entry.path), job.backbone,
                                           missing, unexpected, shapes, hint))
    return state


def geometry(config: BenchmarkConfig) -> tuple[int, int] | None:
    """``(in_channels, spatial_dims)`` of the finetuning store (from its ``synth`` spec if it
    is not built yet), None when unknown."""
    path = Path(config.data.finetune_store)
    if path.exists():
        with VolumeStore.open(path) as store:
            return store.shape[0], store.spatial_dims
    synth = config.data.synth.get("finetune")
    return (1, len(synth.shape)) if synth is not None else None


def check_externals(config: BenchmarkConfig, registry: Registry,
                    jobs: list[ExternalJob] | None = None) -> None:
    """Every external encoder loads and fits its backbone (before anything trains).

    When the finetuning store's geometry is unknown (no store, no synth spec), the file is
    read and mapped but not matched against the network: the run's check phase does that.
    """
    jobs = external_jobs(config) if jobs is None else jobs
    if not jobs:
        return
    dims = geometry(config)
    for job in jobs:
        if dims is None:
            read_state(job.entry, job.backbone, job.field)
        else:
            load_external(job, *dims, registry)


def materialise(job: ExternalJob, run_dir: Path, store: str | Path,
                registry: Registry) -> Path:
    """Write (or reuse) the job's ``encoder.pt``: the mapped weights in ssltk's format.

    Raises:
        SsltkError: the file changed since the grid was expanded.
    """
    out = job.out_dir(run_dir) / "encoder.pt"
    if out.exists():
        return out
    sha = file_sha256(Path(job.entry.path), f"{job.field}.path")
    if sha != job.sha256:
        raise SsltkError(f"{job.field}.path: {job.entry.path} changed while the benchmark "
                         "ran; re-run to pick up the new file")
    with VolumeStore.open(store) as s:
        dims = s.shape[0], s.spatial_dims
    state = load_external(job, *dims, registry)
    meta = {"backbone": job.backbone.name, "external": job.method,
            "source": str(job.entry.path), "sha256": job.sha256}
    return save_checkpoint(out, {"backbone": state}, meta)
