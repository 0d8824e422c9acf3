"""The per-layer trade of fine-tuning, against hand-computed ratios."""

from __future__ import annotations

from blockwise.evaluation.trade import format_trade, layer_trade


def evaluation(tf: list, ro: list) -> dict:
    return {
        "primary": "x",
        "teacher_forced": {"x": {"median": tf}},
        "rollout": {"x": {"median": ro}},
    }


def test_the_trade_names_every_layer_fine_tuning_made_worse():
    stacked = evaluation([0.01, 0.02, 0.04], [0.01, 0.10, 0.50])
    tuned = evaluation([0.10, 0.01, None], [0.02, 0.05, 0.25])
    trade = layer_trade(stacked, tuned)
    assert trade["ratio"]["teacher_forced"] == [10.0, 0.5, None]
    assert trade["ratio"]["rollout"] == [2.0, 0.5, 0.5]
    assert trade["worse"] == {"teacher_forced": [1], "rollout": [1]}
    said = format_trade(trade)
    assert "worse at layer(s) 1" in said and "10.00 0.50 -" in said


def test_no_layer_worse_is_said_too():
    same = evaluation([0.1, 0.2], [0.1, 0.3])
    assert "no layer worse" in format_trade(layer_trade(same, same))
