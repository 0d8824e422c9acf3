"""Probes: look inside a trained stack for the optimizer it emulates.

    from blockwise.probes import probe
    results = probe("checkpoints/quickstart")   # also `blockwise probe checkpoints/quickstart`

One module per instrument: `capture` (run a stack with hooks, TransformerLens-style),
`quantities` (the teacher's intermediate quantities in each layer's frame), `linear` (ridge
and logistic probes), `sites` (one layer probed at every site beside its controls), `attention`,
`counterfactual`, `ood`, `similarity`, `report`, and `run`, which runs them all.
"""

from blockwise.probes.capture import HOOKS, capture_layer, run_with_cache
from blockwise.probes.linear import RidgeProbe, logistic_probe
from blockwise.probes.run import probe
from blockwise.probes.similarity import linear_cka

__all__ = ["HOOKS", "RidgeProbe", "capture_layer", "linear_cka", "logistic_probe", "probe",
           "run_with_cache"]
