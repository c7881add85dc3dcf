"""Training engine: pretraining, finetuning, distillation, embeddings, checkpoints, metrics.

Every stage is a plain function, usable from a notebook as from the CLI:

>>> from ssltk.engine import PretrainRun, pretrain, FinetuneRun, finetune
>>> run = finetune_run(config, rows, "frozen", seed=0)   # a run from a benchmark TOML
"""

from importlib import import_module

_EXPORTS = {
    "PretrainRun": "runs", "FinetuneRun": "runs", "pretrain_run": "runs", "finetune_run": "runs",
    "PretrainResult": "pretraining", "pretrain": "pretraining",
    "FinetuneResult": "finetuning", "finetune": "finetuning",
    "DistillRun": "runs", "distill_run": "runs",
    "DistillResult": "distillation", "distill": "distillation",
    "embed_store": "embed", "export_encoder": "embed",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy: importing ssltk.engine.metrics must not pull in torch training code and the store.
    if name in _EXPORTS:
        return getattr(import_module(f"ssltk.engine.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ssltk.engine' has no attribute '{name}'")
