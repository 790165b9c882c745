"""What a dataset's task is, declared by the dataset and recorded in run.json.

Losses and metrics are over *rows*: one per sample for classification, one per
token position for sequence tasks (a target below 0 marks a position that does
not count). Logits [B, ..., V] and targets [B, ...] flatten to [R, V] and [R]
once, here; nothing downstream assumes one label per sample.

The task also says how κ subsets are ordered (stratified by class, or a seeded
permutation of samples), which metric is primary, which way is better, and how
`report` computes PI from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from kdcli.errors import ArtifactError

if TYPE_CHECKING:  # torch is imported by what calls these methods; `kdcli report` never does
    import torch

IGNORE = -100  # a target that does not count (padding); F.cross_entropy's default ignore_index


def _row_loss(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    return F.cross_entropy(s, y, reduction="none")


def _row_correct(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return s.argmax(-1) == y


# Test metrics by name: one value per counted row (logits [R, V], targets [R]); the mean over
# rows is the metric.
ROW_METRICS = {"test_loss": _row_loss, "test_acc": _row_correct}

# How PI is computed from the primary metric of a KD arm (a) and its label twin (b).
PI_METHODS = {
    "difference_points": "100·(a − b): percentage points, higher is better",
    "relative_reduction": "100·(b − a)/b: relative reduction in %, lower is better",
}


@dataclass(frozen=True)
class Task:
    kind: str  # "classification": one row per sample; "sequence": one row per position
    outputs: int  # logits per row: classes, or the vocabulary
    subsets: str  # "stratified" (by class) or "permutation" (seeded, of samples)
    metrics: tuple[str, ...] = ("test_loss", "test_acc")  # what evaluation reports (ROW_METRICS)
    primary: str = "test_acc"  # the metrics.parquet / run.json `final` column PI is computed from
    pi: str = "difference_points"  # also fixes the primary metric's direction (higher_is_better)
    masked: bool = False  # targets may hold IGNORE

    def __post_init__(self):
        object.__setattr__(self, "metrics", tuple(self.metrics))
        assert self.kind in ("classification", "sequence"), self.kind
        assert set(self.metrics) <= set(ROW_METRICS) and self.primary in self.metrics, self.metrics
        assert self.subsets in ("stratified", "permutation"), self.subsets
        assert self.pi in PI_METHODS, self.pi

    @property
    def higher_is_better(self) -> bool:
        return self.pi == "difference_points"

    @property
    def row_name(self) -> str:
        return "sample" if self.kind == "classification" else "token position"

    @property
    def row_dims(self) -> int:
        """Leading dimensions of a batch that index rows: [B] or [B, T]."""
        return 1 if self.kind == "classification" else 2

    def rows(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [R, V] and targets [R] (views where possible)."""
        return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)

    def mask(self, targets: torch.Tensor) -> torch.Tensor | None:
        """Rows that count ([R] bool), or None when every row does."""
        return targets.reshape(-1) != IGNORE if self.masked else None

    def feature_rows(self, features: torch.Tensor) -> torch.Tensor:
        """Layer outputs [B, ...] (sequence: [B, T, ...]) as one feature vector per row: [R, D].
        An output with no dimension beyond the rows gives one feature per row."""
        if features.ndim == self.row_dims:
            features = features.unsqueeze(-1)
        return features.flatten(self.row_dims).flatten(0, self.row_dims - 1)

    def pi_value(self, arm: float, labels: float) -> float:
        if self.pi == "difference_points":
            return 100 * (arm - labels)
        return 100 * (labels - arm) / labels

    def display(self, value: float) -> float:
        """A primary-metric value as tables show it (accuracy in %, losses as they are)."""
        return 100 * value if self.pi == "difference_points" else value

    def describe(self) -> dict:
        return {**asdict(self), "higher_is_better": self.higher_is_better,
                "pi_definition": PI_METHODS[self.pi]}

    @classmethod
    def from_record(cls, record: dict | None, num_classes: int | None = None, where: str = "run.json") -> Task:
        """The task a run.json recorded; runs of format 1 predate it and are classification."""
        if not record:
            return classification(num_classes or 0)
        known = {k: record[k] for k in ("kind", "outputs", "subsets", "metrics", "primary", "pi",
                                        "masked") if k in record}
        try:
            return cls(**known)
        except (AssertionError, TypeError) as exc:
            raise ArtifactError(f"{where}: not a task this kdcli knows ({record}; {exc})") from None

    @classmethod
    def of_run(cls, run: dict) -> Task:
        """The task a run.json (with `dataset`) records."""
        return cls.from_record(run.get("task"), run["dataset"].get("num_classes"))


def classification(num_classes: int) -> Task:
    """One class per sample; accuracy is primary; PI in points."""
    return Task("classification", num_classes, "stratified")
