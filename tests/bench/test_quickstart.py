"""The quickstart keeps its statistical power: >= 10 paired splits per budget, >= 60 test
subjects per split, a supervised positive control. Read from the shipped TOML and the synthetic
cohort's ground truth (no rendering, no training)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ssltk.config import load_config
from ssltk.data.splits import stratified_split
from ssltk.registry import get_registry
from ssltk.store.synth import cohort_specs

QUICKSTART = Path(__file__).parents[2] / "benchmarks" / "quickstart.toml"


def test_pairs_test_size_and_positive_control():
    config = load_config(QUICKSTART, get_registry())
    f, d = config.finetune, config.data
    assert len(config.seeds) * f.repeats >= 10, "fewer than 10 paired splits per budget"
    assert f.modes == ["frozen"]  # scratch frozen = the random-init encoder
    supervised = [o for o in config.pretrain.objectives if o.name == "supervised"]
    assert supervised, "the positive control is missing"
    spec = d.synth["finetune"]
    baseline = [s for s in cohort_specs(spec.subjects, spec.seed) if s.session == "ses-01"]
    labels = [d.classes.index(s.diagnosis) for s in baseline if s.diagnosis in d.classes]
    assert min(Counter(labels).values()) >= 40  # both classes well represented
    for seed in config.seeds:
        for repeat in range(f.repeats):
            pool, val, test = stratified_split(np.array(labels), f.val_fraction,
                                               f.test_fraction, seed, repeat)
            assert len(test) >= 60, (seed, repeat, len(test))
            assert min(np.bincount(np.array(labels)[pool])) >= max(f.n_per_class)
