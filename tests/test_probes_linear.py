"""The linear probes against independent references: numpy's least squares, leave-one-out by
refitting, and multinomial logistic regressions whose answers can be worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from blockwise.probes.linear import RidgeProbe, fit_logistic, logistic_probe, r2_score

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int, p: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, p, generator=g, dtype=torch.float64), g


def test_ridge_with_a_vanishing_penalty_is_numpys_least_squares():
    x, g = _data(400, 12)
    y = x @ torch.randn(12, 3, generator=g, dtype=torch.float64) + 0.3 * torch.randn(
        400, 3, generator=g, dtype=torch.float64)
    train, test = slice(0, 300), slice(300, None)
    _, pred, lam = RidgeProbe(x[train], x[test], lambdas=(1e-12,)).predict(y[train])
    design = np.hstack([x[train].numpy(), np.ones((300, 1))])  # the intercept, unpenalized
    coef = np.linalg.lstsq(design, y[train].numpy(), rcond=None)[0]
    expected = np.hstack([x[test].numpy(), np.ones((100, 1))]) @ coef
    assert lam == 1e-12
    np.testing.assert_allclose(pred.numpy(), expected, rtol=0, atol=1e-9)


def test_leave_one_out_predictions_equal_refitting_without_each_problem():
    x, g = _data(40, 5)
    y = x[:, :1] * 2 + torch.randn(40, 1, generator=g, dtype=torch.float64)
    lam = 0.3
    loo, _, _ = RidgeProbe(x, x[:2], lambdas=(lam,)).predict(y)
    # Refit on 39 rows: the probe's penalty is lam times the mean eigenvalue of the centred
    # Gram matrix of all 40 rows (the scale its lambda is relative to).
    centred = x - x.mean(0)
    penalty = lam * float(torch.linalg.eigvalsh(centred.T @ centred).mean())
    for i in range(40):
        keep = torch.arange(40) != i
        xs, ys = x[keep].numpy(), y[keep].numpy()
        mx, my = xs.mean(0), ys.mean(0)
        w = np.linalg.solve((xs - mx).T @ (xs - mx) + penalty * np.eye(5), (xs - mx).T @ (ys - my))
        refit = float(((x[i].numpy() - mx) @ w + my)[0])
        assert loo[i, 0].item() == pytest.approx(refit, abs=1e-10)


def test_a_stream_that_holds_the_target_linearly_gives_r2_one_and_shuffled_labels_zero():
    # 60 stream dimensions, 3 of which are a random mixture of the 2 target outputs.
    x, g = _data(2000, 57)
    y = torch.randn(2000, 2, generator=g, dtype=torch.float64)
    stream = torch.cat([x, y @ torch.randn(2, 3, generator=g, dtype=torch.float64)], 1)
    probe = RidgeProbe(stream[:1500], stream[1500:])
    assert probe.score(y[:1500], y[1500:]).r2 > 0.9999
    shuffled = y[:1500][torch.randperm(1500, generator=g)]
    assert abs(probe.score(shuffled, y[1500:]).r2) < 0.02


def test_r2_is_one_minus_the_error_over_the_variance_and_nan_for_a_constant():
    y = torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]], dtype=torch.float64)
    pred = torch.tensor([[1.0, 5.0], [2.0, 5.0], [4.0, 5.0]], dtype=torch.float64)
    r2 = r2_score(pred, y)
    assert r2[0].item() == pytest.approx(1 - 1 / 2)
    assert math.isnan(r2[1].item())


def test_logistic_on_a_category_gives_each_categorys_class_frequencies():
    # With one-hot features the model is saturated: its maximum-likelihood probabilities in
    # category c are the class frequencies observed there.
    counts = torch.tensor([[30, 10, 60], [5, 80, 15], [25, 25, 50]])
    rows = [(c, k) for c in range(3) for k in range(3) for _ in range(int(counts[c, k]))]
    category = torch.tensor([c for c, _ in rows])
    labels = torch.tensor([k for _, k in rows])
    features = torch.nn.functional.one_hot(category, 3).double()
    w = fit_logistic(features, labels, 3, lam=1e-10)
    probabilities = torch.softmax(torch.eye(3, dtype=torch.float64) @ w[:-1] + w[-1], -1)
    expected = counts.double() / counts.sum(1, keepdim=True)
    torch.testing.assert_close(probabilities, expected, rtol=0, atol=1e-6)


def test_binary_logistic_weight_is_the_log_odds_worked_out_by_hand():
    # x = +1: class 1 three times out of four; x = -1: class 1 once out of four. The maximum
    # likelihood logit is log 3 at x = +1 and -log 3 at x = -1: weight log 3, bias 0, per the
    # difference of the two classes' columns.
    x = torch.tensor([[1.0]] * 4 + [[-1.0]] * 4, dtype=torch.float64)
    labels = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0])
    w = fit_logistic(x, labels, 2, lam=1e-12)
    weight, bias = (w[:, 1] - w[:, 0]).tolist()
    assert weight == pytest.approx(math.log(3), abs=1e-6)
    assert bias == pytest.approx(0.0, abs=1e-6)


def test_class_probe_reads_linearly_separable_classes_and_not_shuffled_ones():
    x, g = _data(3000, 20)
    classes = (x[:, :3] @ torch.randn(3, 4, generator=g, dtype=torch.float64)).argmax(-1)
    fit = logistic_probe(x[:2000], classes[:2000], x[2000:], classes[2000:])
    # One multinomial logistic regression on all 20 features, the probe's two stages' ceiling.
    w = fit_logistic(x[:2000], classes[:2000], 4, lam=1e-4)
    full = float(((x[2000:] @ w[:-1] + w[-1]).argmax(-1) == classes[2000:]).double().mean())
    assert full > 0.97
    assert full - 0.04 < fit.accuracy <= full
    shuffled = classes[:2000][torch.randperm(2000, generator=g)]
    control = logistic_probe(x[:2000], shuffled, x[2000:], classes[2000:])
    assert control.accuracy < fit.chance + 0.05
    assert fit.chance == pytest.approx(
        float((classes[2000:] == torch.bincount(classes[:2000]).argmax()).double().mean()))
