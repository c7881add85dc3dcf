"""Synthetic brain-MRI cohort: MNI152 tissue maps, warped and aged per subject, in a store.

The generative model (documented with figures in ``docs/synthetic-cohort.md``):

1. Tissue maps: the MNI152 2009 grey-matter, white-matter and brain-mask templates that nilearn
   ships (2 mm, no download); CSF = brain mask - GM - WM.
2. Per subject: sex-dependent head size (global scale), a small rigid repositioning, a smooth
   random displacement field (anatomical variability), ageing (ventricles expand, grey matter
   thins, the medial temporal lobes and temporo-parietal cortex atrophy) and, for MCI/AD, a
   disease severity (MCI about halfway to AD) that acts as accelerated ageing (the same
   effects at an older apparent age) plus AD-specific extra atrophy of the ventricles, medial
   temporal lobes and temporo-parietal cortex;
   longitudinal sessions keep the anatomy and let atrophy progress with age and disease.
3. Per site: tissue contrast, intensity gain, bias-field strength and Rician noise level.

Every random draw comes from ``numpy.random.SeedSequence([seed, stream, subject, ...])``, so a
subject's volumes depend only on the seed and its index: the same seed gives bit-identical
stores, and a larger cohort starts with the same subjects as a smaller one.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ssltk.errors import ConfigError

logger = logging.getLogger(__name__)

# MNI coordinates (mm) of the structures the model acts on.
VENTRICLE_CENTRE = (0.0, -8.0, 14.0)
VENTRICLE_SIGMA = (16.0, 26.0, 14.0)
HIPPOCAMPI = ((-27.0, -22.0, -14.0), (27.0, -22.0, -14.0))
HIPPOCAMPUS_SIGMA = (7.0, 13.0, 9.0)
# Temporo-parietal cortex and precuneus: the cortical "AD signature" (Dickerson et al. 2009).
AD_CORTEX = ((-50.0, -45.0, 10.0), (50.0, -45.0, 10.0), (0.0, -62.0, 38.0))
AD_CORTEX_SIGMA = (12.0, 18.0, 14.0)
DIAGNOSES = ("CN", "MCI", "AD")
AGE_RANGE = (55.0, 90.0)
TISSUE_MEANS = (0.15, 0.55, 0.85)  # CSF, GM, WM: T1-weighted, normalised to ~[0, 1]

# Effect sizes (docs/synthetic-cohort.md). ``a`` is the ageing score (0 at 55, 1 at 90, plus a
# per-subject brain-age offset), ``d`` the disease severity (CN 0, MCI ~0.4, AD ~0.8). AD is
# partly accelerated ageing: every ageing effect acts on the apparent age ``a + ACCEL * d``
# (the "brain age gap" of AD, Franke et al. 2010; atrophy of ageing and of AD overlap in the
# same regions, Fjell et al. 2013), and the ``*_AD`` terms add what is specific to AD.
SEVERITY = {"CN": (0.0, 0.0, 0.0), "MCI": (0.25, 0.55, 0.05), "AD": (0.6, 1.0, 0.08)}
BRAIN_AGE_SD = 0.12  # per-subject offset of the ageing score (faster or slower agers)
ACCEL = 0.5  # apparent extra ageing per unit of d (d = 0.8: 0.4 x 35 = 14 years older)
VENTRICLE_AGE, VENTRICLE_AD = 0.35, 0.22  # linear ventricle expansion per unit of a, of d
GM_AGE, GM_AD = 0.15, 0.0  # global grey-matter loss per unit of a, of d
MTL_AGE, MTL_AD = 0.20, 0.50  # medial-temporal atrophy per unit of a, of d
CORTEX_AGE, CORTEX_AD = 0.15, 0.42  # temporo-parietal grey-matter loss per unit of a, of d
_TEMPLATE_STEP = 2.0
_MARGIN_MM = 6.0


@dataclass(frozen=True)
class SiteParams:
    """Acquisition effects of one site: tissue contrast, gain, bias field and noise."""

    name: str
    tissue_means: tuple[float, float, float]
    gain: float
    bias_sd: float
    noise_sd: float


@dataclass(frozen=True)
class SessionSpec:
    """Everything that defines one synthetic scan (a row of the store)."""

    subject_index: int
    subject_id: str
    session: str
    age: float
    sex: str
    site: int
    diagnosis: str
    head_scale: float
    ventricle: float  # linear expansion of the ventricles (0.2 = 20%)
    gm_loss: float  # fraction of grey matter turned to CSF everywhere
    hippocampus: float  # medial-temporal shrinkage and grey-matter loss
    cortex: float = 0.0  # grey-matter loss in the temporo-parietal "AD signature"

    def meta(self, sites: list[SiteParams]) -> dict:
        """The row's metadata columns."""
        return {"subject_id": self.subject_id, "session": self.session, "age": self.age,
                "sex": self.sex, "site": sites[self.site].name, "diagnosis": self.diagnosis}


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def make_sites(n_sites: int, seed: int) -> list[SiteParams]:
    """Draw the acquisition parameters of ``n_sites`` sites (named site-A, site-B, ...)."""
    if not 1 <= n_sites <= 26:
        raise ConfigError(f"sites: {n_sites} is out of range; use 1 to 26 sites.")
    rng = _rng(seed, 0)
    sites = []
    for k in range(n_sites):
        means = np.asarray(TISSUE_MEANS) + rng.uniform(-0.04, 0.04, 3)
        sites.append(SiteParams(
            name=f"site-{chr(65 + k)}", tissue_means=tuple(float(m) for m in means),
            gain=float(rng.uniform(0.85, 1.05)), bias_sd=float(rng.uniform(0.02, 0.08)),
            noise_sd=float(rng.uniform(0.01, 0.03))))
    return sites


def _diagnosis(rng: np.random.Generator, age: float) -> str:
    a = (age - AGE_RANGE[0]) / (AGE_RANGE[1] - AGE_RANGE[0])
    p_ad, p_mci = 0.10 + 0.30 * a, 0.25  # AD prevalence rises with age
    return str(rng.choice(DIAGNOSES, p=[1.0 - p_ad - p_mci, p_mci, p_ad]))


def subject_sessions(index: int, seed: int, n_sites: int,
                     sessions_fraction: float) -> list[SessionSpec]:
    """Draw one subject's demographics, diagnosis and atrophy for each of its sessions.

    Args:
        index: Subject index (0-based); the subject id is ``sub-{index + 1:04d}``.
        seed: Cohort seed.
        n_sites: Number of sites to assign the subject to.
        sessions_fraction: Probability that the subject has 2-3 longitudinal sessions.

    Returns:
        One :class:`SessionSpec` per session, ages increasing.
    """
    rng = _rng(seed, 1, index)
    longitudinal = rng.random() < sessions_fraction
    gaps = np.cumsum(rng.uniform(1.0, 2.5, int(rng.integers(1, 3)))) if longitudinal else []
    gaps = np.concatenate([[0.0], gaps])
    age0 = float(np.clip(rng.normal(72.0, 8.0), AGE_RANGE[0], AGE_RANGE[1] - gaps[-1]))
    sex = "F" if rng.random() < 0.55 else "M"
    diagnosis = _diagnosis(rng, age0)
    site = int(rng.integers(n_sites))
    head = rng.normal(0.93 if sex == "F" else 1.0, 0.03)
    brain_age = rng.normal(0.0, BRAIN_AGE_SD)  # faster or slower ager than the average
    low, high, rate = SEVERITY[diagnosis]
    severity0 = low + (high - low) * rng.random()
    sessions = []
    for j, gap in enumerate(gaps):
        age = age0 + float(gap)
        sessions.append(SessionSpec(
            subject_index=index, subject_id=f"sub-{index + 1:04d}", session=f"ses-{j + 1:02d}",
            age=round(age, 2), sex=sex, site=site, diagnosis=diagnosis, head_scale=float(head),
            **atrophy(age, brain_age, severity0 + rate * float(gap))))
    return sessions


def atrophy(age: float, brain_age: float, d: float) -> dict[str, float]:
    """The atrophy fields of a :class:`SessionSpec` at ``age`` (years) for a subject with
    brain-age offset ``brain_age`` and disease severity ``d`` (0 for CN).

    Ageing acts on the apparent age ``a = max(0, (age - 55) / 35 + brain_age) + ACCEL * d``:
    AD is, in part, accelerated ageing of the same structures; the ``*_AD`` terms add the
    AD-specific atrophy (docs/synthetic-cohort.md gives the formulas and references).
    """
    a = max(0.0, (age - AGE_RANGE[0]) / (AGE_RANGE[1] - AGE_RANGE[0]) + brain_age) + ACCEL * d
    return {"ventricle": 0.03 + VENTRICLE_AGE * a + VENTRICLE_AD * d,
            "gm_loss": 0.02 + GM_AGE * a + GM_AD * d,
            "hippocampus": MTL_AGE * a + MTL_AD * d,
            "cortex": CORTEX_AGE * a + CORTEX_AD * d}


def cohort_specs(subjects: int, seed: int, n_sites: int = 3,
                 sessions_fraction: float = 0.2) -> list[SessionSpec]:
    """All sessions of a cohort of ``subjects`` subjects, in row order."""
    if subjects < 1:
        raise ConfigError(f"subjects: {subjects} must be at least 1.")
    if not 0.0 <= sessions_fraction <= 1.0:
        raise ConfigError(f"sessions_fraction: {sessions_fraction} must lie in [0, 1].")
    return [s for i in range(subjects) for s in subject_sessions(i, seed, n_sites,
                                                                   sessions_fraction)]


@functools.lru_cache(maxsize=1)
def _mni_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tissue maps (4, X, Y, Z) = CSF, GM, WM, brain at 2 mm; their origin (mm); FOV box (mm)."""
    from nilearn import datasets

    gm = datasets.load_mni152_gm_template(resolution=2)
    wm = datasets.load_mni152_wm_template(resolution=2).get_fdata()
    brain = datasets.load_mni152_brain_mask(resolution=2).get_fdata()
    origin = gm.affine[:3, 3].astype(np.float64)
    gm = gm.get_fdata()
    smooth = ndimage.gaussian_filter(brain, 0.7)
    csf = np.clip(smooth - gm - wm, 0.0, 1.0)
    maps = np.stack([csf, gm, wm, smooth]).astype(np.float32)
    nz = np.argwhere(brain > 0)
    box = np.stack([origin + _TEMPLATE_STEP * nz.min(0) - _MARGIN_MM,
                    origin + _TEMPLATE_STEP * nz.max(0) + _MARGIN_MM])
    return maps, origin, box


@dataclass(frozen=True)
class _Grid:
    """The template prepared for one output shape."""

    maps: torch.Tensor  # (1, 4, X, Y, Z), low-passed for the output spacing
    points: torch.Tensor  # (N, 3) output voxel centres in MNI mm
    field_points: torch.Tensor  # (M, 3) where the smooth fields are computed (M <= N)
    field_shape: tuple[int, ...] | None  # their lattice, or None when they are ``points``
    origin: torch.Tensor  # (3,) template origin, mm
    box: torch.Tensor  # (2, 3) field of view, mm
    shape: tuple[int, ...]
    spacing: tuple[float, ...]


_LATTICE = 40  # smooth fields are computed on at most 40^3 points, then interpolated


def _centres(box: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    step = (box[1] - box[0])[: len(shape)] / np.asarray(shape)
    return [box[0, d] + (np.arange(n) + 0.5) * step[d] for d, n in enumerate(shape)]


def _mesh(axes: list[np.ndarray]) -> torch.Tensor:
    points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return torch.from_numpy(points.astype(np.float32))


@functools.lru_cache(maxsize=8)
def template_grid(shape: tuple[int, ...], slice_mm: float = -4.0) -> _Grid:
    """Prepare (and cache) the template for an output ``shape``: 3-D (X, Y, Z) or 2-D (X, Y).

    A 2-D shape is the axial plane at MNI ``z = slice_mm`` (through the medial temporal lobes
    and the third ventricle).
    """
    if len(shape) not in (2, 3) or min(shape) < 4:
        raise ConfigError(f"shape: {shape} must be 2 or 3 sizes of at least 4 voxels.")
    maps, origin, box = _mni_maps()
    step = (box[1] - box[0])[: len(shape)] / np.asarray(shape, dtype=np.float64)
    factor = np.maximum(step / _TEMPLATE_STEP, 1.0)
    sigma = np.concatenate([[0.0], (factor - 1.0) / 2.0, [0.0] * (3 - len(shape))])
    if len(shape) == 2:
        sigma[3] = sigma[1:3].mean()
    smoothed = ndimage.gaussian_filter(maps, sigma) if sigma.max() > 0 else maps
    axes = _centres(box, shape) + ([np.asarray([slice_mm])] if len(shape) == 2 else [])
    points = _mesh(axes)
    field_shape = None
    if len(shape) == 3 and max(shape) > _LATTICE:
        field_shape = tuple(min(n, _LATTICE) for n in shape)
    return _Grid(maps=torch.from_numpy(np.ascontiguousarray(smoothed))[None], points=points,
                 field_points=_mesh(_centres(box, field_shape)) if field_shape else points,
                 field_shape=field_shape, origin=torch.from_numpy(origin.astype(np.float32)),
                 box=torch.from_numpy(box.astype(np.float32)), shape=tuple(shape),
                 spacing=tuple(round(float(s), 4) for s in step))


def _sample(volume: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``volume`` (1, C, X, Y, Z) at normalised ``coords`` (N, 3) in
    [-1, 1] along (X, Y, Z); returns (C, N)."""
    grid = coords.flip(-1).reshape(1, 1, 1, -1, 3)  # grid_sample wants (z, y, x) order
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(volume.shape[1], -1)


def _smooth_field(rng: np.random.Generator, grid: _Grid, channels: int, size: int,
                  sd: float) -> torch.Tensor:
    """A smooth random field (channels, M) at the field points: Gaussian values on a coarse
    ``size``^3 lattice spanning the field of view, interpolated trilinearly."""
    coarse = torch.from_numpy(rng.normal(0.0, sd, (1, channels, size, size, size))
                              .astype(np.float32))
    norm = 2.0 * (grid.field_points - grid.box[0]) / (grid.box[1] - grid.box[0]) - 1.0
    return _sample(coarse, norm)


def _bump(points: torch.Tensor, centre: tuple, sigma: tuple) -> torch.Tensor:
    """Anisotropic Gaussian weight (M,) around ``centre`` (mm)."""
    z = (points - torch.tensor(centre)) / torch.tensor(sigma)
    return torch.exp(-0.5 * (z * z).sum(-1))


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _fields(spec: SessionSpec, site: SiteParams, grid: _Grid, anatomy: np.random.Generator,
            pose: np.random.Generator) -> torch.Tensor:
    """Smooth per-scan fields (5, M) at the field points: the template coordinate (mm) each
    point samples (pose, head size, anatomical variability, ventricle expansion, hippocampal
    shrinkage), the local grey-matter loss (medial temporal and AD-signature cortex) and the
    log bias field."""
    centre = grid.box.mean(0)
    rot = torch.from_numpy(_rotation(pose.normal(0.0, np.deg2rad(2.0), 3)).astype(np.float32))
    shift = torch.from_numpy(pose.normal(0.0, 2.0, 3).astype(np.float32))
    q = (grid.field_points - centre - shift) @ rot / spec.head_scale + centre
    q = q + _smooth_field(anatomy, grid, 3, 5, 2.5).T
    vc = torch.tensor(VENTRICLE_CENTRE)
    q = vc + (q - vc) * (1.0 - spec.ventricle * _bump(q, VENTRICLE_CENTRE, VENTRICLE_SIGMA))[:, None]
    for hc in HIPPOCAMPI:  # sample farther from the centre: the structure shrinks
        w = 0.8 * spec.hippocampus * _bump(q, hc, HIPPOCAMPUS_SIGMA)
        q = q + (q - torch.tensor(hc)) * w[:, None]
    hippo = sum(_bump(q, hc, HIPPOCAMPUS_SIGMA) for hc in HIPPOCAMPI)
    hippo = 1.2 * spec.hippocampus * hippo + spec.cortex * sum(
        _bump(q, c, AD_CORTEX_SIGMA) for c in AD_CORTEX)
    log_bias = _smooth_field(pose, grid, 1, 3, site.bias_sd)[0]
    return torch.cat([q.T, hippo[None], log_bias[None]])


def _at_points(fields: torch.Tensor, grid: _Grid) -> torch.Tensor:
    """Interpolate fields (C, M) from the field lattice to the output points: (C, N)."""
    if grid.field_shape is None:
        return fields
    lattice = fields.reshape(1, -1, *grid.field_shape)
    centres = _centres(grid.box.numpy(), grid.field_shape)
    lo = torch.tensor([float(c[0]) for c in centres])
    hi = torch.tensor([float(c[-1]) for c in centres])
    return _sample(lattice, 2.0 * (grid.points - lo) / (hi - lo) - 1.0)


def render_session(spec: SessionSpec, site: SiteParams, grid: _Grid, seed: int) -> np.ndarray:
    """Render one scan.

    Args:
        spec: The session (anatomy, age, diagnosis, atrophy).
        site: Its site's acquisition parameters.
        grid: ``template_grid(shape)``.
        seed: Cohort seed.

    Returns:
        float32 array (1, *shape), intensities in ~[0, 1] (background ~0).
    """
    anatomy = _rng(seed, 2, spec.subject_index)  # same anatomy in every session
    pose = _rng(seed, 3, spec.subject_index, int(spec.session.split("-")[1]))
    fields = _at_points(_fields(spec, site, grid, anatomy, pose), grid)
    extent = _TEMPLATE_STEP * (torch.tensor(grid.maps.shape[2:]) - 1)
    csf, gm, wm, brain = _sample(grid.maps, 2.0 * (fields[:3].T - grid.origin) / extent - 1.0)
    lost = gm * torch.clamp(spec.gm_loss + fields[3], 0.0, 0.9)
    gm, csf = gm - lost, csf + lost
    m_csf, m_gm, m_wm = site.tissue_means
    image = (m_csf * csf + m_gm * gm + m_wm * wm) * brain.clamp(0.0, 1.0)
    image = (site.gain * image * torch.exp(fields[4])).numpy()
    noise = pose.standard_normal((2, image.size), dtype=np.float32) * site.noise_sd
    image = np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude noise
    return image.reshape((1,) + grid.shape).astype(np.float32)


def make_cohort(out: str | Path, subjects: int, shape: tuple[int, ...], seed: int = 0, *,
                sessions_fraction: float = 0.2, sites: int = 3, dtype: str = "float16",
                compression: str = "zstd", overwrite: bool = False,
                progress: Callable[[int, int], None] | None = None) -> Path:
    """Generate a synthetic cohort and write it as a volume store.

    Args:
        out: Path of the HDF5 store to create.
        subjects: Number of subjects (about ``sessions_fraction`` of them get 2-3 sessions).
        shape: Spatial shape, (X, Y, Z) or (X, Y) for one axial slice per scan.
        seed: Seed; the same seed gives bit-identical volumes and metadata.
        sessions_fraction: Fraction of subjects with longitudinal follow-up.
        sites: Number of acquisition sites.
        dtype: Stored dtype (``float16`` or ``float32``).
        compression: Store compression (e.g. ``zstd``, ``lz4``, ``none``).
        overwrite: Replace an existing store.
        progress: Called as ``progress(done, total)`` after each scan.

    Returns:
        The store path. Columns: subject_id, session, age (years), sex (F/M), site, diagnosis
        (CN/MCI/AD); volumes (1, *shape).

    Raises:
        StoreError: ``out`` exists and ``overwrite`` is false.
        ConfigError: an argument is out of range (subjects, sites, shape...).

    The store is built as ``<out>.partial`` and renamed to ``out`` when complete, so an
    interrupted run never leaves a half-written store at ``out``.
    """
    from ssltk.store import StoreError

    out = Path(out)
    if out.exists() and not overwrite:
        raise StoreError(f"{out} already exists; choose another --out or replace it "
                         f"(--overwrite)")
    shape = tuple(int(s) for s in shape)
    specs = cohort_specs(subjects, seed, sites, sessions_fraction)
    site_params = make_sites(sites, seed)
    grid = template_grid(shape)
    partial = out.with_name(out.name + ".partial")  # renamed to ``out`` once complete
    try:
        with _create_writer(partial, grid, dtype, compression, {
                "generator": "ssltk.store.synth", "seed": seed, "subjects": subjects,
                "sessions_fraction": sessions_fraction, "sites": sites,
                "template": "MNI152 2009 GM/WM/brain templates (nilearn, 2 mm)",
                "intensity": "T1-like, ~[0, 1]"}) as writer:
            for i, spec in enumerate(specs):
                volume = render_session(spec, site_params[spec.site], grid, seed)
                writer.append(volume, spec.meta(site_params), source=None)
                if progress is not None:
                    progress(i + 1, len(specs))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)
    logger.info("wrote %d scans of %d subjects to %s", len(specs), subjects, out)
    return out


def _create_writer(path: Path, grid: _Grid, dtype: str, compression: str, preprocessing: dict):
    """A :class:`StoreWriter` on a new (or replaced) store with the cohort's columns."""
    from ssltk.store import ColumnSpec, StoreWriter

    columns = {
        "subject_id": ColumnSpec("id", description="synthetic subject"),
        "session": ColumnSpec("id", description="ses-01 is the baseline"),
        "age": ColumnSpec("continuous", unit="years", description="age at the scan"),
        "sex": ColumnSpec("categorical", description="F or M"),
        "site": ColumnSpec("categorical", description="acquisition site"),
        "diagnosis": ColumnSpec("categorical", description="CN, MCI or AD"),
    }
    return StoreWriter.create(path, shape=(1, *grid.shape), columns=columns, dtype=dtype,
                              compression=compression, spacing=grid.spacing,
                              preprocessing=preprocessing, overwrite=True, flush_every=32)
