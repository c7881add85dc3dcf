"""Representation monitors of a pretraining run: is it collapsing, is it learning?

Measured on the *backbone's* representation (what the frozen probe and finetuning get), in eval
mode and without augmentation, on a fixed subset of the pretraining store: before the first step
(the random-init encoder) and after every ``every`` epochs. Written to ``history.jsonl`` under
``"monitor"``; the random-init measurement is the line with ``"epoch": -1, "step": 0``.

* ``rank`` – RankMe effective rank (Garrido, Balestriero, Najman, LeCun, "RankMe: Assessing the
  Downstream Performance of Pretrained Self-Supervised Representations by Their Rank", ICML
  2023, eq. 1-2): ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / ||s||_1 + 1e-7`` over the
  singular values ``s`` of the ``(N, D)`` embedding matrix. 1 when every sample maps to the same
  direction, at most ``min(N, D)``.
* ``proj_rank`` – the same effective rank of the *objective's* embeddings (its projection head
  output, ``ObjectiveOutput.embeddings[0]``) on the same subset, both views un-augmented, the
  objective in eval mode: where a contrastive loss collapses first (y-Aware at the quickstart's
  scale: the projections collapse while the backbone's rank keeps rising, see
  docs/methods/yaware.md). Absent for objectives without embeddings (Genesis) and under DDP.
* ``head_std`` – the same spread of the projection *before* the head's output batch norm
  (:class:`~ssltk.heads.OutputNorm`; the projection itself for heads without one). After that
  norm every dimension has unit variance over the batch, so ``proj_std * sqrt(D)`` is about 1
  however collapsed the head is; before it, a collapse shows. The collapse alarm reads this.
* ``embed_std`` – mean over dimensions of the std over samples of the L2-normalised embeddings;
  ``embed_std_ref = 1/sqrt(D)`` is its value for isotropic (non-collapsed) features, 0 is
  complete collapse (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021).
* ``knn_auc`` / ``knn_acc`` (with a target column) – weighted k-NN (Wu et al. 2018; the DINO and
  solo-learn protocol): cosine similarity, the ``k`` = 20 nearest labelled samples vote with
  weight ``exp(cos / 0.07)``, leave one *subject* out over the labelled subset (a row's other
  sessions never vote for it); class scores are the normalised votes. ROC-AUC (macro
  one-vs-rest for >2 classes) and accuracy.
* ``linear_auc`` / ``linear_acc`` – logistic regression on standardised embeddings, stratified
  ``folds``-fold cross-validation grouped by subject (out-of-fold predictions), fixed ``C``.

The labelled subset never holds a subject of ``exclude_subjects``: a benchmark puts there every
subject that is a test subject in any (seed, repeat) of its grid, so no label of a test subject
is read before the test (docs/engine.md#representation-monitors).

:func:`diagnose` turns a history into warnings: a collapsed run (final ``rank`` below
:data:`COLLAPSE_RANK`) or one whose final probe is below its own random-init probe; when the
random-init encoder is already collapsed, the one warning says the inputs look constant.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ssltk.config import MonitorConfig
from ssltk.engine.metrics import classification_metrics
from ssltk.engine.targets import load_targets
from ssltk.errors import SsltkError

if TYPE_CHECKING:  # the report reads histories without importing torch
    import torch

log = logging.getLogger(__name__)

RANKME_EPS = 1e-7
"""The epsilon of RankMe's normalised singular values (Garrido et al. 2023, for float32)."""
COLLAPSE_RANK = 2.0
"""A run whose final effective rank is below this has collapsed: its representation of every
sample lies (almost) along one direction. See docs/engine.md#representation-monitors."""
COLLAPSE_STD = 0.25
"""A run whose objective's projection (before any output batch norm) ends with ``std * sqrt(d)``
below this, and below :data:`COLLAPSE_DROP` times its value at random init, has collapsed into a
narrow cone (mean pairwise cosine near 1): the loss no longer separates samples. RankMe, being
scale-invariant, misses this kind of collapse. See docs/engine.md#representation-monitors."""
COLLAPSE_DROP = 0.25
"""The fraction of its random-init spread below which the projection's spread counts as
collapsed: a random-init head may already sit in a cone (a projection ending with a batch norm
starts near 0.13 before the norm), and healthy training narrowed it to about half of that in
the tests; the forced collapses of tests/engine/test_collapse.py fall below a tenth."""
CONSTANT_INPUT_STD = 1e-3
"""A random-init encoder whose embeddings' ``embed_std * sqrt(dim)`` is below this, with an
effective rank below :data:`COLLAPSE_RANK`, gives every monitored sample the same features:
its inputs look constant (a store of blank or flattened volumes), whatever the objective."""
INIT_EPOCH = -1
"""``epoch`` of the history line measured before the first step (random initialisation)."""


# -- metrics: pure functions of an (N, D) embedding matrix -------------------------------------
def effective_rank(z, eps: float = RANKME_EPS) -> float:
    """RankMe effective rank of ``z`` ``(N, D)`` (Garrido et al., ICML 2023, eq. 1-2).

    ``exp(H(p))`` with ``p_k = s_k / sum(s) + eps`` over the singular values ``s`` of ``z``
    (not centred, as in the paper). An all-zero matrix has effective rank 1 (fully collapsed).
    """
    s = np.linalg.svd(np.asarray(z, dtype=np.float64), compute_uv=False)
    total = s.sum()
    if not np.isfinite(total) or total <= 0:
        return 1.0
    p = s / total + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def normalised_std(z) -> float:
    """Mean over dimensions of the std over samples of the L2-normalised rows of ``z`` (N, D).

    ``1/sqrt(D)`` for isotropic features, 0 when every row points the same way (SimSiam, sec.
    4.1). Population std (ddof 0); a zero row stays zero.
    """
    z = np.asarray(z, dtype=np.float64)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    zn = np.divide(z, norms, out=np.zeros_like(z), where=norms > 0)
    return float(zn.std(axis=0).mean())


def knn_scores(z, labels, n_classes: int, k: int = 20, temperature: float = 0.07,
               groups=None) -> np.ndarray:
    """Leave-one-group-out weighted k-NN class scores ``(N, n_classes)``, rows summing to 1.

    Each sample's ``k`` most cosine-similar samples of *other* groups (``groups`` ``(N,)``,
    e.g. subject ids; default: every row its own group) vote for their class with weight
    ``exp(cos / temperature)`` (DINO's and solo-learn's weighted k-NN); ties in similarity are
    broken by row order, so the result is deterministic.
    """
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    g = np.arange(len(y)) if groups is None else np.asarray(groups)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    zn = np.divide(z, norms, out=np.zeros_like(z), where=norms > 0)
    sim = zn @ zn.T  # (N, N)
    same = g[:, None] == g[None, :]  # (N, N): the row itself and its subject's other rows
    sim[same] = -np.inf  # leave one group out
    k = max(1, min(k, int((~same).sum(axis=1).min())))
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]  # (N, k)
    top = np.take_along_axis(sim, nearest, axis=1)
    weights = np.exp((top - 1.0) / temperature)  # shifted by the max cosine: no overflow
    scores = np.zeros((len(y), n_classes))
    np.add.at(scores, (np.arange(len(y))[:, None], y[nearest]), weights)
    return scores / scores.sum(axis=1, keepdims=True)


def linear_probe_scores(z, labels, n_classes: int, c: float = 0.1, folds: int = 5,
                        seed: int = 0, groups=None) -> np.ndarray:
    """Out-of-fold class probabilities ``(N, n_classes)`` of a logistic-regression probe.

    Standardised features, L2-regularised logistic regression with inverse strength ``c``,
    stratified ``folds``-fold cross-validation with a fixed shuffle (``seed``), grouped by
    ``groups`` ``(N,)`` (subject ids: a subject's rows share a fold; default: one row each).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    g = np.arange(len(y)) if groups is None else np.asarray(groups)
    out = np.zeros((len(y), n_classes))
    cv = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    for train, test in cv.split(z, y, g):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        model.fit(z[train], y[train])
        out[np.ix_(test, model.classes_)] = model.predict_proba(z[test])
    return out


def probe_metrics(scores: np.ndarray, labels) -> tuple[float, float]:
    """``(roc_auc, accuracy)`` of class scores (macro one-vs-rest AUC for >2 classes)."""
    m = classification_metrics(labels, scores)
    return m["roc_auc"], m["accuracy"]


# -- the monitor of one run --------------------------------------------------------------------
def fixed_subset(rows, size: int, seed: int = 0) -> np.ndarray:
    """``size`` rows drawn once with a fixed seed (every run and seed monitors the same rows)."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) <= size:
        return np.sort(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, size, replace=False))


def subjects_per_class(labels, subjects, n_classes: int) -> np.ndarray:
    """``(n_classes,)`` distinct subjects having a row of each class."""
    pairs = set(zip(np.asarray(labels).tolist(), np.asarray(subjects).tolist()))
    return np.bincount([label for label, _ in pairs], minlength=n_classes)


class _Labelled:
    """The labelled monitor subset: a store, its rows, their class indices and subjects.

    Rows of the subjects in ``config.exclude_subjects`` are dropped before anything else is
    read of them (their labels included).
    """

    def __init__(self, config: MonitorConfig, default_store: Path):
        from ssltk.data.loading import BatchReader
        from ssltk.store import VolumeStore

        path = Path(config.store or default_store)
        store = VolumeStore.open(path)
        subjects = np.asarray(store.meta["subject_id"]).astype(str)
        allowed = np.flatnonzero(~np.isin(subjects, list(config.exclude_subjects)))
        targets = load_targets(store, config.target, "classification", config.classes,
                               source=f"pretrain.monitor: {path}")
        labelled = allowed[np.isin(allowed, targets.labelled_rows())]
        self.rows = fixed_subset(labelled, config.labelled_size)
        self.subjects = subjects[self.rows]
        self.labels = targets.values(self.rows)
        self.n_classes = targets.n_classes
        counts = subjects_per_class(self.labels, self.subjects, self.n_classes)
        self.folds = int(min(config.folds, counts.min()))
        self.reader = BatchReader(store)
        self.path = path
        if self.folds < 2:
            excluded = len(set(config.exclude_subjects) & set(subjects.tolist()))
            raise _TooFewLabelled(
                f"pretrain.monitor.target: the labelled monitor subset of {path} has "
                f"{counts.min()} subject(s) of a class ({excluded} test subject(s) left out); "
                "raise labelled_size, declare a labelled store of other subjects as "
                "pretrain.monitor.store, or drop the target", excluded)


class _TooFewLabelled(SsltkError):
    """The labelled subset cannot be cross-validated; ``excluded`` test subjects were left out."""

    def __init__(self, message: str, excluded: int):
        super().__init__(message)
        self.excluded = excluded


def _labelled_subset(config: MonitorConfig, default_store: Path) -> _Labelled | None:
    """The labelled subset, or None (with a warning) when leaving out the test subjects left
    too few to cross-validate: the probes are then off, the rest of the monitors still run."""
    try:
        return _Labelled(config, default_store)
    except _TooFewLabelled as exc:
        if not exc.excluded:
            raise
        log.warning("monitor: probes off. %s", exc)
        return None


class Monitor:
    """Measures a backbone on the fixed monitor subsets; see the module docstring.

    Args:
        config: the ``[pretrain.monitor]`` settings.
        store: the pretraining store (rows for the effective rank and std).
        rows: the rows pretraining uses.
        device, precision: where and how to embed (as the frozen probe does).
    """

    def __init__(self, config: MonitorConfig, store, rows, device: torch.device,
                 precision: str = "auto"):
        from ssltk.data.loading import BatchReader

        self.config, self.device, self.precision = config, device, precision
        self.labelled = _labelled_subset(config, Path(store.path)) if config.target else None
        same_store = self.labelled is not None and self.labelled.path.resolve() == \
            Path(store.path).resolve()
        # One embedding pass when the labelled subset is drawn from the pretraining store.
        self.rows = None if same_store else fixed_subset(rows, config.size)
        self.reader = BatchReader(store)
        self.store = store
        self.projections = True  # turned off if the objective cannot run on the subset

    def _embed(self, backbone, reader, rows) -> np.ndarray:
        from ssltk.engine.finetuning import embed_rows
        from ssltk.engine.runtime import Context

        was_training = backbone.training
        z = embed_rows(backbone, reader, rows, Context(self.device), self.config.batch_size,
                       self.precision)
        backbone.train(was_training)
        return z

    def _project(self, objective) -> tuple[np.ndarray, np.ndarray | None] | None:
        """First-view embeddings ``(N, D)`` of the objective on the rank subset and, when its
        head ends with an :class:`~ssltk.heads.OutputNorm`, that norm's input ``(N, D)``; or
        None.

        As the loss sees them: both views are the un-augmented images and the objective runs
        in train mode (batch-norm batch statistics; in eval mode a random-init network maps
        every image to nearly the same direction) on fixed, near-equal batches, under
        ``no_grad`` with a fixed generator. Its buffers (queues, running statistics) and
        torch's global RNG are restored afterwards, so training is unaffected.
        """
        import torch

        from ssltk.data.loading import BatchReader
        from ssltk.distributed import is_distributed
        from ssltk.interfaces import Batch

        if not self.projections or is_distributed() or self.config.proj_size < 2:
            return None
        rows = self.labelled.rows if self.rows is None else self.rows
        rows = fixed_subset(rows, self.config.proj_size)
        reader = BatchReader(self.store, objective.required_columns())
        buffers = {k: v.clone() for k, v in objective.named_buffers()}
        rng, was_training = torch.get_rng_state(), objective.training
        objective.train()
        out, pre = [], []
        try:
            with torch.no_grad(), _first_output_norm_input(objective) as seen:
                n_batches = -(-len(rows) // self.config.batch_size)
                for i, part in enumerate(np.array_split(rows, n_batches)):
                    x, meta = reader.read(part)
                    x = x.to(self.device)
                    meta = {k: v.to(self.device) for k, v in meta.items()}
                    batch = Batch(views=[x] * objective.n_views, meta=meta,
                                  generator=torch.Generator().manual_seed(i),
                                  original=x if objective.needs_original else None)
                    seen.clear()
                    emb = objective(batch).embeddings
                    if emb is None:
                        self.projections = False
                        return None
                    out.append(emb[0].float().cpu().numpy())
                    pre += seen[:1]
        except Exception as exc:  # a monitor must never stop a run
            log.warning("monitor: the objective's embeddings are unavailable on the monitor "
                        "subset (%s); proj_* are not measured", exc)
            self.projections = False
            return None
        finally:
            objective.train(was_training)
            torch.set_rng_state(rng)
            for k, v in objective.named_buffers():
                v.copy_(buffers[k])
        return np.concatenate(out), (np.concatenate(pre) if len(pre) == len(out) else None)

    def measure(self, objective) -> dict[str, float]:
        """Every monitor of ``objective`` now: rank, std, probes when labelled, proj_rank."""
        t0 = time.perf_counter()
        backbone = objective.backbone
        out: dict[str, float] = {}
        z_lab = None
        if self.labelled is not None:
            z_lab = self._embed(backbone, self.labelled.reader, self.labelled.rows)
        z = z_lab if self.rows is None else self._embed(backbone, self.reader, self.rows)
        out.update(rank=effective_rank(z), embed_std=normalised_std(z),
                   embed_std_ref=1.0 / math.sqrt(z.shape[1]), n=int(len(z)), dim=int(z.shape[1]))
        projected = self._project(objective)
        if projected is not None:
            proj, pre = projected
            head = proj if pre is None else pre
            out.update(proj_rank=effective_rank(proj), proj_std=normalised_std(proj),
                       proj_std_ref=1.0 / math.sqrt(proj.shape[1]), proj_dim=int(proj.shape[1]),
                       head_std=normalised_std(head), head_std_ref=1.0 / math.sqrt(head.shape[1]))
        if self.labelled is not None:
            lab, c = self.labelled, self.config
            knn = knn_scores(z_lab, lab.labels, lab.n_classes, c.knn_k, c.knn_temperature,
                             groups=lab.subjects)
            lin = linear_probe_scores(z_lab, lab.labels, lab.n_classes, c.probe_c, lab.folds,
                                      groups=lab.subjects)
            out["knn_auc"], out["knn_acc"] = probe_metrics(knn, lab.labels)
            out["linear_auc"], out["linear_acc"] = probe_metrics(lin, lab.labels)
            out["n_labelled"] = int(len(z_lab))
        out["seconds"] = time.perf_counter() - t0
        return out

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether to measure after epoch ``epoch`` (0-based) of ``epochs``: every ``every``
        epochs and after the last one."""
        return (epoch + 1) % self.config.every == 0 or epoch + 1 == epochs

    # -- the engine's hooks -----------------------------------------------------------------
    def start(self, step: int, objective, history: Path) -> None:
        """At fit start: measure the random-init encoder (only before the first step)."""
        if step != 0:
            return
        record = {"epoch": INIT_EPOCH, "step": 0, "monitor": self.measure(objective)}
        history.parent.mkdir(parents=True, exist_ok=True)
        with history.open("a") as f:
            f.write(json.dumps(record) + "\n")
        log.info("monitor at random init: %s", record["monitor"])

    def epoch_end(self, epoch: int, epochs: int, objective) -> dict:
        """``{"monitor": {...}}`` to merge into the epoch's history record (or ``{}``)."""
        return {"monitor": self.measure(objective)} if self.due(epoch, epochs) else {}

    def finish(self, history: list[dict]) -> list[str]:
        """At fit end: log (and return) the warnings of :func:`diagnose`."""
        warnings = diagnose(history)
        for w in warnings:
            log.warning(w)
        return warnings


@contextlib.contextmanager
def _first_output_norm_input(objective):
    """A list that collects the input ``(B, D)`` of every :class:`~ssltk.heads.OutputNorm` of
    ``objective`` as it runs, in call order: its first entry after a forward pass is the first
    view's projection before the norm (each objective projects its first view first)."""
    from ssltk.heads import OutputNorm

    seen: list[np.ndarray] = []

    def record(module, args):
        seen.append(args[0].detach().float().cpu().numpy())

    hooks = [m.register_forward_pre_hook(record) for m in objective.modules()
             if isinstance(m, OutputNorm)]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


class _Off:
    """The monitor when it is disabled (or on a non-main rank): does nothing."""

    def start(self, step, objective, history) -> None:
        return None

    def epoch_end(self, epoch, epochs, objective) -> dict:
        return {}

    def finish(self, history) -> list[str]:
        return []


def build_monitor(config: MonitorConfig, store, rows, device: torch.device, precision: str,
                  is_main: bool = True) -> Monitor | _Off:
    """The run's monitor; a no-op one when ``config.enabled`` is false or off the main rank."""
    if not config.enabled or not is_main:
        return _Off()
    return Monitor(config, store, rows, device, precision)


# -- diagnosis -------------------------------------------------------------------------------
def monitor_series(history: list[dict]) -> list[tuple[int, dict]]:
    """``[(epochs trained, monitor dict)]`` in order: 0 is the random init."""
    out = [(int(h["epoch"]) + 1, h["monitor"]) for h in history if h.get("monitor")]
    return sorted(out, key=lambda t: t[0])


def _std_ratio(m: dict, prefix: str = "") -> float:
    """``std * sqrt(d)`` of the backbone's (``prefix=""``) or the objective's (``"proj"``, or
    ``"head"`` before its output norm) embeddings: 1 for isotropic features, 0 for complete
    collapse; inf when not measured."""
    std, ref = m.get(f"{prefix}_std" if prefix else "embed_std"), \
        m.get(f"{prefix}_std_ref" if prefix else "embed_std_ref")
    return std / ref if std is not None and ref else math.inf


def inputs_look_constant(m: dict) -> bool:
    """Whether a monitor measurement ``m`` has every sample at (almost) the same features:
    effective rank below :data:`COLLAPSE_RANK` and ``embed_std * sqrt(dim)`` below
    :data:`CONSTANT_INPUT_STD` (a random-init encoder only does that on identical inputs)."""
    return (m.get("rank", math.inf) < COLLAPSE_RANK
            and _std_ratio(m) < CONSTANT_INPUT_STD)


def _collapse(first: dict, last: dict) -> list[str]:
    """What collapsed between the random-init measures ``first`` and the last ones ``last``."""
    out = []
    if last.get("rank", math.inf) < min(COLLAPSE_RANK, first.get("rank", math.inf)):
        out.append(f"effective rank {last['rank']:.2f} < {COLLAPSE_RANK:g} (of "
                   f"{last.get('dim')} dims; {first.get('rank', math.nan):.1f} at random init)")
    if last.get("proj_rank", math.inf) < min(COLLAPSE_RANK, first.get("proj_rank", math.inf)):
        out.append(f"effective rank of the objective's embeddings {last['proj_rank']:.2f} "
                   f"< {COLLAPSE_RANK:g}")
    key = "head" if "head_std" in last else "proj"  # histories written before head_std
    spread, start = _std_ratio(last, key), _std_ratio(first, key)
    if spread < min(COLLAPSE_STD, COLLAPSE_DROP * start):
        where = " before its output norm" if key == "head" else ""
        out.append(f"objective's embeddings{where} in a narrow cone: std·√d {spread:.3f} < "
                   f"{COLLAPSE_STD:g} and < {COLLAPSE_DROP:g} x {start:.2f} at random init")
    return out


def diagnose(history: list[dict], label: str = "pretraining") -> list[str]:
    """Warnings about a run's history: collapse, or a final probe below the random-init one.

    * collapsed: the last measured ``rank`` (backbone) or ``proj_rank`` (objective's
      embeddings) is below :data:`COLLAPSE_RANK` and below its value at random init (a tiny
      network can start low; only falling is a collapse), or the projection's spread before
      any output norm, ``head_std * sqrt(d)``, is below :data:`COLLAPSE_STD` and below
      :data:`COLLAPSE_DROP` times its value at random init;
    * not learning: the last ``linear_auc`` (else ``knn_auc``) is below the random-init one;
    * constant inputs, instead of both: the random-init encoder is already collapsed
      (:func:`inputs_look_constant`), so no objective is to blame.
    """
    series = monitor_series(history)
    if not series:
        return []
    (e0, first), (e1, last) = series[0], series[-1]
    if e0 == 0 and inputs_look_constant(first):
        return [f"{label}: the random-init encoder is already collapsed (effective rank "
                f"{first['rank']:.2f}, embeddings' std·√d {_std_ratio(first):.1e} before the "
                f"first step): every monitored sample gives the same features, so the inputs "
                f"look constant; check the store ('ssltk store verify') and the ingest's "
                f"--normalize, not the objective"]
    warnings, collapse = [], _collapse(first, last)
    if collapse:
        warnings.append(f"{label} collapsed after {e1} epoch(s): " + "; ".join(collapse))
    if e0 == 0 and e1 > 0:
        for key, name in (("linear_auc", "linear-probe"), ("knn_auc", "k-NN")):
            if key in first and key in last:
                if last[key] < first[key]:
                    warnings.append(f"{label} did not learn: {name} ROC-AUC {last[key]:.3f} "
                                    f"after {e1} epoch(s) < {first[key]:.3f} at random init")
                break
    return warnings
