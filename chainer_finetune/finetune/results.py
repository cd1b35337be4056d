"""What a job returns: :class:`RunResult` per training run and
:class:`FinetuneResult` for the whole job."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

from chainer_finetune.copy import CopyReport


@dataclasses.dataclass
class RunResult:
    """The outcome of one training run (pretrained or scratch).

    Attributes:
        name: ``'pretrained'`` or ``'scratch'`` (its directory and label).
        log: LogReport's entries (one per epoch).
        accuracy: Held-out accuracy after the last epoch.
        best_accuracy: Best held-out accuracy of any epoch.
        best_epoch: Its epoch.
        seconds: Wall time of the training loop.
        epoch_seconds: Wall time of each epoch (training and evaluation).
        copy_report: What was copied from the Caffe model (pretrained).
        frozen: Link paths frozen at the start.
        out: Directory of the run's files.
        pretrained: Whether the run started from the Caffe model's values
            (False: from random weights).
    """

    name: str
    log: List[Dict[str, Any]]
    accuracy: float
    best_accuracy: float
    best_epoch: int
    seconds: float
    epoch_seconds: List[float]
    copy_report: Optional[CopyReport]
    frozen: List[str]
    out: str
    pretrained: bool


@dataclasses.dataclass
class FinetuneResult:
    """The outcome of :func:`run_finetune`.

    Attributes:
        runs: The pretrained run, then the scratch run if any.
        report_path: The Markdown report.
        plot_path: The comparison plot (PNG), or None without matplotlib.
        summary: The one-line summary
            (``pretrained: 0.873 scratch: 0.652``).
    """

    runs: List[RunResult]
    report_path: str
    plot_path: Optional[str]
    summary: str
