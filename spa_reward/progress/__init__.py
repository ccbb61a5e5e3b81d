"""SPA progress estimator: model, training, serving and a synthetic attribution check.

Submodules: :mod:`.model` (``ProgressEstimator``), :mod:`.data` (truncation, batching), :mod:`.train` (CLI
``python -m spa_reward.progress.train``), :mod:`.serve` (``ProgressScorer``, the Ray actor), :mod:`.layouts` (a
record's window-layout rows and packed view), :mod:`.synthetic`.
Names are imported lazily so that ``import spa_reward.progress`` does not load torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ProgressEstimator": ".model",
    "ProgressEstimatorConfig": ".model",
    "predict_batched": ".model",
    "predict_contributions": ".model",
    "truncate_for_estimator": ".data",
    "ProgressScorer": ".serve",
    "get_progress_scorer": ".serve",
    "check_tokenizer_compatible": ".serve",
    "check_estimator_layout": ".serve",
    "check_estimator_objective": ".serve",
    "record_item": ".serve",
    "window_sequences": ".layouts",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
