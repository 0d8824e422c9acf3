"""Per-layer stack measurements as torchmetrics Metrics, exact under DDP.

The metrics keep every per-problem value (dist_reduce_fx="cat") rather than running sums, so
after the sync of a distributed evaluation the median and percentiles are those of all test
problems, exactly as one process seeing them all would get. A test set is a few thousand
problems times a few dozen layers: small enough to keep.

    errors = LayerErrors(num_layers=3, fields=["simplex", "fvals"])
    errors.update(1, "simplex", e)       # e: (B,) per-problem errors at layer 1
    errors.compute()["simplex"]["median"]  # (3,)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

QUANTILES = {"median": 0.5, "p10": 0.1, "p90": 0.9}
"""The summaries every per-layer measurement reports, name -> quantile."""


def quantiles(values: Tensor) -> dict[str, Tensor]:
    """Median, p10 and p90 of values (N,) without NaN, as torch.quantile; inf allowed.

    torch.quantile turns an interpolation towards inf into NaN. Here a quantile that
    interpolates towards +inf is +inf (towards -inf, -inf), so a blown-up problem counts as the
    worst one rather than as missing. N = 0 gives NaN.
    """
    q = torch.tensor(list(QUANTILES.values()), dtype=torch.float64, device=values.device)
    values = values.double()
    if values.numel() == 0:
        result = torch.full_like(q, math.nan)
    elif values.isfinite().all():
        result = torch.quantile(values, q)
    else:
        # Infinities replaced by the finite extremes keep the order, hence every quantile whose
        # two neighbours are finite; the others are set from their neighbours.
        finite = values[values.isfinite()]
        lo, hi = (finite.min().item(), finite.max().item()) if finite.numel() else (0.0, 0.0)
        result = torch.quantile(values.nan_to_num(posinf=hi, neginf=lo), q)
        ordered = values.sort().values
        rank = q * (values.numel() - 1)  # torch.quantile's linear interpolation rank
        result = torch.where(ordered[rank.ceil().long()] == math.inf, math.inf, result)
        result = torch.where(ordered[rank.floor().long()] == -math.inf, -math.inf, result)
    return dict(zip(QUANTILES, result.unbind(), strict=True))


def summarize(errors: Tensor) -> dict[str, float]:
    """Median, 10th and 90th percentile of (B,) errors (inf kept as the worst, NaN left out,
    as `quantiles`), and how many counted."""
    valid = errors[~errors.isnan()]
    return {name: q.item() for name, q in quantiles(valid).items()} | {"count": valid.numel()}


class LayerQuantiles(Metric):
    """Per-problem values of several series at each layer, summarized per series and layer.

    update(layer, key, values (B,)) adds one layer's values of one series; NaN means no value
    (a problem left out, an error that is not defined) and is dropped, inf is kept.

    compute() -> {key: {"median", "p10", "p90": (L,) float64, "count": (L,) int64}} for layers
    first_layer .. first_layer + L - 1; a layer with no values has NaN quantiles.

    Args:
        num_layers: L.
        keys: the series (field names, say), in the order compute() lists them.
        first_layer: the index of the first layer (1 for blocks, 0 to include s_0).
    """

    is_differentiable = False
    full_state_update = False

    def __init__(
        self, num_layers: int, keys: Sequence[Hashable], first_layer: int = 1, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"{type(self).__name__}: num_layers must be an int >= 1, "
                             f"got {num_layers!r}")
        keys = list(keys)
        if not keys or len(set(keys)) != len(keys):
            raise ValueError(f"{type(self).__name__}: keys must be distinct and not empty, "
                             f"got {keys!r}")
        self.num_layers, self.first_layer, self.keys = num_layers, first_layer, keys
        self._index = {key: i for i, key in enumerate(keys)}
        # States are numbered, not named after the keys: a key need not be an identifier.
        for i in range(len(keys)):
            self.add_state(f"values_{i}", default=[], dist_reduce_fx="cat")
            self.add_state(f"layers_{i}", default=[], dist_reduce_fx="cat")

    @property
    def layers(self) -> range:
        return range(self.first_layer, self.first_layer + self.num_layers)

    def update(self, layer: int, key: Hashable, values: Tensor) -> None:
        if layer not in self.layers:
            raise ValueError(f"{type(self).__name__}: layer {layer} is outside {self.layers}")
        if key not in self._index:
            raise ValueError(f"{type(self).__name__}: unknown key {key!r}; expected one of "
                             f"{self.keys}")
        values = values.detach().reshape(-1).double()
        kept = values[~values.isnan()]
        i = self._index[key]
        # An empty tensor is appended too, so every process holds every state at sync time.
        getattr(self, f"values_{i}").append(kept)
        getattr(self, f"layers_{i}").append(torch.full_like(kept, layer, dtype=torch.int64))

    def compute(self) -> dict[Hashable, dict[str, Tensor]]:
        out = {}
        for i, key in enumerate(self.keys):
            values, layers = _cat(getattr(self, f"values_{i}")), _cat(getattr(self, f"layers_{i}"))
            per_layer = [quantiles(values[layers == k]) for k in self.layers]
            out[key] = {name: torch.stack([q[name] for q in per_layer]) for name in QUANTILES}
            out[key]["count"] = torch.stack([(layers == k).sum() for k in self.layers])
        return out


def _cat(state: list[Tensor] | Tensor) -> Tensor:
    """A cat state as one tensor: a list before sync, a tensor after; empty if never updated."""
    if isinstance(state, list) and not state:
        return torch.empty(0)
    return dim_zero_cat(state)


class LayerErrors(LayerQuantiles):
    """Per-layer, per-field normalized emulation errors of B problems, layers 1..L.

    update(layer, field, errors (B,)); compute() -> {field: {"median", "p10", "p90",
    "count": (L,)}}, as `LayerQuantiles`.
    """

    higher_is_better = False

    def __init__(self, num_layers: int, fields: Sequence[str], **kwargs) -> None:
        super().__init__(num_layers, fields, first_layer=1, **kwargs)


def progress_ratio(start: Tensor, teacher: Tensor, emulated: Tensor) -> Tensor:
    """(B,) log(start / emulated) / log(start / teacher), from optimality gaps f - f* (B,) > 0
    at s_0, at the teacher's s_k and at the emulated s_k: 1 = the teacher's progress on a log
    scale, 0 = none, > 1 better; NaN where the teacher made no progress (its ratio would mean
    nothing), -inf where the emulated gap is inf (a blow-up)."""
    made = torch.log(start / teacher)
    return torch.where(made > 0, torch.log(start / emulated) / made, math.nan)


class ProgressRatio(LayerQuantiles):
    """The progress ratio per problem at layers 1..L, summarized per layer.

    update(layer, start, teacher, emulated) with optimality gaps (B,) as `progress_ratio` takes
    them; compute() -> {"median", "p10", "p90", "count": (L,)}.
    """

    higher_is_better = True

    def __init__(self, num_layers: int, **kwargs) -> None:
        super().__init__(num_layers, ["ratio"], first_layer=1, **kwargs)

    def update(self, layer: int, start: Tensor, teacher: Tensor, emulated: Tensor) -> None:
        super().update(layer, "ratio", progress_ratio(start, teacher, emulated))

    def compute(self) -> dict[str, Tensor]:
        return super().compute()["ratio"]


def breakdown_depth(median: Tensor, threshold: float = 1.0) -> int | None:
    """The first layer (1-indexed) whose median error (L,) exceeds `threshold`; None if none."""
    above = (median > threshold).nonzero().flatten()
    return int(above[0]) + 1 if above.numel() else None
