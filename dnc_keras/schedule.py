"""DnCSchedule: what divide and conquer does at the start of each epoch, decided before training.

A pure, serializable plan: epoch -> actions, from the number of learners the model starts and
ends with (its `SubspaceMasks`), the re-clustering period T, the epoch count and the conquer
epoch and mode. One callback (`dnc_keras.callbacks.DnCScheduleCallback`) executes it under
`model.fit` and the distributed loop, and `dnc-keras train --dry-run` prints it; nothing else
decides when to cluster.

Actions (method: docs/method.md):
- `cluster`: epoch 0, when the model starts with K > 1: k-means into K clusters.
- `divide`: every T epochs (T, 2T, ...) while K is below the final K and the conquer phase has
  not begun, progressive division (TPAMI): each cluster split in two by 2-means, K doubles.
- `recluster`: every T epochs where nothing divides, while K > 1: k-means with the current K,
  matched to the old clusters. In the CVPR conquer mode re-clustering stops at the conquer.
- `conquer`: at the conquer epoch: the loss sees the full embedding, masks freeze; the CVPR
  mode also merges the clusters into one, so batches are drawn from all the data.
"""

from __future__ import annotations

import dataclasses

KINDS = ("cluster", "divide", "recluster", "conquer")
CONQUER_MODES = ("tpami", "cvpr")


@dataclasses.dataclass(frozen=True)
class Action:
    """One planned step: its epoch, what it does, and K once it is done."""

    epoch: int
    kind: str
    learners: int

    def describe(self):
        return {"cluster": f"k-means into {self.learners} clusters",
                "divide": f"divide every cluster in two -> {self.learners} learners",
                "recluster": f"re-cluster into {self.learners} clusters",
                "conquer": "conquer: loss on the full embedding"}[self.kind]


@dataclasses.dataclass(frozen=True)
class DnCSchedule:
    """The divide-and-conquer plan of a run.

    Args:
        epochs: epochs of the run.
        final_learners: K at the end (the `SubspaceMasks`' `max_learners`).
        initial_learners: K at the start: 1 for progressive division, else `final_learners`.
            Defaults to `None`: `final_learners`.
        period: T, epochs between two re-clusterings or divisions. Defaults to `2`.
        conquer_epoch: first epoch of the conquer phase, or `None` for none (an epoch past
            `epochs` is none in this run, as when a longer run is resumed in parts). Defaults
            to `None`.
        conquer_mode: `"tpami"` (per-cluster batches and re-clustering go on) or `"cvpr"`
            (batches from all the data, no more re-clustering). Defaults to `"tpami"`.
    """

    epochs: int
    final_learners: int
    initial_learners: int | None = None
    period: int = 2
    conquer_epoch: int | None = None
    conquer_mode: str = "tpami"

    def __post_init__(self):
        if self.initial_learners is None:
            object.__setattr__(self, "initial_learners", self.final_learners)
        for name in ("epochs", "final_learners", "initial_learners", "period"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1. Received: {name}={value!r}")
        k, final = self.initial_learners, self.final_learners
        if k > final or final % k or (final // k) & (final // k - 1):
            raise ValueError(f"Division doubles K: final_learners must be initial_learners "
                             f"times a power of 2. Received: initial_learners={k}, "
                             f"final_learners={final}")
        if self.conquer_epoch is not None and (not isinstance(self.conquer_epoch, int)
                                               or self.conquer_epoch < 0):
            raise ValueError(f"conquer_epoch must be an epoch >= 0 or None (one past the run's "
                             f"epochs never conquers). Received: conquer_epoch="
                             f"{self.conquer_epoch!r}")
        if self.conquer_mode not in CONQUER_MODES:
            raise ValueError(f"conquer_mode must be one of {CONQUER_MODES}. Received: "
                             f"conquer_mode={self.conquer_mode!r}")

    @classmethod
    def from_model(cls, model, epochs, period=2, conquer_epoch=None, conquer_mode="tpami"):
        """The schedule of a `DnCModel`: K from its `SubspaceMasks`, now and at the end."""
        return cls(epochs, int(model.subspaces.max_learners), int(model.active_learners),
                   period, conquer_epoch, conquer_mode)

    def actions(self):
        """Every planned action, in epoch order (within an epoch: as executed)."""
        planned, k = [], self.initial_learners
        cvpr = self.conquer_mode == "cvpr"
        last_division = self.conquer_epoch
        if cvpr and last_division is not None:
            last_division -= 1  # CVPR's conquer merges the clusters at once: no division there
        for epoch in range(self.epochs):
            merged = cvpr and self.conquer_epoch is not None and epoch >= self.conquer_epoch
            if epoch == 0 and k > 1:
                planned.append(Action(0, "cluster", k))
            elif epoch > 0 and epoch % self.period == 0:
                if k < self.final_learners and (last_division is None or epoch <= last_division):
                    k *= 2
                    planned.append(Action(epoch, "divide", k))
                elif k > 1 and not merged:
                    planned.append(Action(epoch, "recluster", k))
            if epoch == self.conquer_epoch:
                planned.append(Action(epoch, "conquer", 1 if cvpr else k))
        return planned

    def at(self, epoch):
        """The actions planned at the start of `epoch`."""
        return [a for a in self.actions() if a.epoch == epoch]

    def learners_at(self, epoch):
        """K during `epoch` (after its actions)."""
        k = self.initial_learners
        for action in self.actions():
            if action.epoch <= epoch and action.kind in ("cluster", "divide"):
                k = action.learners
        return k

    def to_dict(self):
        return {**dataclasses.asdict(self),
                "actions": [dataclasses.asdict(a) for a in self.actions()]}

    @classmethod
    def from_dict(cls, values):
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in fields})

    def describe(self):
        """One line: the actions, epoch by epoch."""
        parts = [f"epoch {a.epoch}: {a.describe()}" for a in self.actions()]
        start = f"K={self.initial_learners} at the start"
        return "; ".join([start] + parts) if parts else start + "; nothing to divide (K = 1)"
