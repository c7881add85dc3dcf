"""Torch-side data access over a volume store, and subject-level splits.

>>> from ssltk.data import VolumeDataset, make_loader, stratified_split, draw_budget
"""

from ssltk.data.loading import (BatchReader, VolumeDataset, epoch_batches, make_loader,
                                meta_tensors, rank_slice)
from ssltk.data.splits import (REGRESSION_BINS, allocate, draw_budget, draw_spread, first_rows,
                               quantile_bins, split_hash, stratified_split, subject_rows)

__all__ = ["REGRESSION_BINS", "BatchReader", "VolumeDataset", "allocate", "draw_budget",
           "draw_spread", "epoch_batches", "quantile_bins",
           "first_rows", "make_loader", "meta_tensors", "rank_slice", "split_hash",
           "stratified_split", "subject_rows"]
