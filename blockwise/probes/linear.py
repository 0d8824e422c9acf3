"""Linear probes (Alain & Bengio 2016): closed-form ridge regression for quantities and
multinomial logistic regression for classes, their regularization chosen by cross-validation
on training problems, scored on held-out problems.

    probe = RidgeProbe(x_train, x_test)          # features (N, p), (M, p)
    fit = probe.score(y_train, y_test)           # targets (N, q), (M, q): fit.r2, fit.lam
    fit = logistic_probe(x_train, c_train, x_test, c_test)   # classes (N,), (M,): fit.accuracy

Features are centred on the training rows, not scaled: the penalty acts in the stream's own
geometry, as the network's own linear read-out does, and a direction in which the training
problems barely vary stays shrunk rather than blown up to unit variance (a held-out problem
that moves along it would otherwise get an arbitrary prediction). lambda is relative: ridge
solves (Z^T Z + lambda mean(eig) I) w = Z^T (y - mean y) for centred features Z, mean(eig) the
mean eigenvalue of Z^T Z. Everything is float64.

Ridge picks lambda by leave-one-out cross-validation, k-fold with k = N, which for ridge is
exact in closed form (Allen's PRESS: the held-out residual is e_i / (1 - H_ii), H the hat
matrix): one eigendecomposition of the training Gram matrix serves every lambda and every
target, the quantities and their shuffled controls alike. The class probe builds on it
(`logistic_probe`).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

RIDGE_LAMBDAS = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
LOGISTIC_LAMBDA = 1e-4  # C inputs and thousands of rows: only keeps separable classes finite
NEWTON_STEPS = 50


@dataclasses.dataclass(frozen=True)
class RidgeFit:
    """r2: held-out R^2, the mean over the target's outputs that vary on the held-out rows of
    1 - SSE / SST (NaN if none varies); lam: the lambda cross-validation chose; per_output:
    (q,) held-out R^2 (NaN where an output is constant)."""

    r2: float
    lam: float
    per_output: Tensor


@dataclasses.dataclass(frozen=True)
class LogisticFit:
    """accuracy: held-out accuracy; chance: the held-out share of the training set's most
    common class (what a probe that ignores the stream scores); lam: the chosen lambda."""

    accuracy: float
    chance: float
    lam: float


def r2_score(pred: Tensor, y: Tensor) -> Tensor:
    """R^2 per output (..., q) of predictions pred (..., M, q) for targets y (M, q), around
    y's own mean: NaN where y is constant."""
    sst = ((y - y.mean(0)) ** 2).sum(0)
    sse = ((pred - y) ** 2).sum(-2)
    varies = sst > 1e-24 * (y**2).sum(0).clamp_min(1e-300)
    return torch.where(varies, 1 - sse / torch.where(varies, sst, 1.0), torch.nan)


def _columns(y: Tensor) -> Tensor:
    """Targets as float64 (N, q): (N,) is one output, (N, ...) is flattened."""
    y = y.double()
    return y[:, None] if y.ndim == 1 else y.reshape(y.shape[0], -1)


class RidgeProbe:
    """Ridge regression from features x_train (N, p) to any target, lambda chosen by
    leave-one-out cross-validation on the training rows, scored on x_test (M, p)."""

    def __init__(self, x_train: Tensor, x_test: Tensor, lambdas=RIDGE_LAMBDAS):
        x = x_train.double()
        if x.ndim != 2 or x.shape[0] < 3 or x_test.ndim != 2 or x_test.shape[1] != x.shape[1]:
            raise ValueError(
                f"ridge probe: features must be (N >= 3, p) and (M, p), got {tuple(x.shape)} "
                f"and {tuple(x_test.shape)}"
            )
        mean = x.mean(0)
        z = x - mean
        eig, basis = torch.linalg.eigh(z.T @ z)
        eig = eig.clamp_min(0)
        self.count = x.shape[0]
        self.lambdas = torch.tensor(lambdas, dtype=torch.float64)
        self.rows = z @ basis  # (N, p): the training rows in the Gram matrix's eigenbasis
        self.held = (x_test.double() - mean) @ basis
        # (L, p): each eigenvalue's shrinkage 1 / (eig + lambda mean(eig)), per lambda
        unit = eig.mean().clamp_min(1e-300)
        self.shrink = 1 / (eig[None, :] + self.lambdas[:, None] * unit)
        # (L, N): the hat matrix's diagonal, the intercept's 1/N included
        self.leverage = ((self.rows**2) @ self.shrink.T).T + 1 / self.count

    def predict(self, y_train: Tensor) -> tuple[Tensor, Tensor, float]:
        """For targets y_train (N, q) ((N,) is one output): the leave-one-out predictions of
        the training rows (N, q), the predictions of the held-out rows (M, q), and lambda."""
        y = _columns(y_train)
        centre = y.mean(0)
        projected = self.rows.T @ (y - centre)  # (p, q)
        coef = self.shrink[:, :, None] * projected  # (L, p, q)
        residual = y - centre - self.rows @ coef  # (L, N, q)
        loo = residual / (1 - self.leverage)[:, :, None]
        # Squared error over each output's variance, so that every output counts alike.
        error = ((loo**2).sum(1) / y.var(0).clamp_min(1e-300)).sum(-1)
        best = int(torch.argmin(error))
        return y - loo[best], self.held @ coef[best] + centre, float(self.lambdas[best])

    def score(self, y_train: Tensor, y_test: Tensor) -> RidgeFit:
        """The held-out fit of targets y_train (N, q) -> y_test (M, q); (N,) is one output."""
        _, pred, lam = self.predict(y_train)
        per_output = r2_score(pred, _columns(y_test))
        varies = ~per_output.isnan()
        r2 = float(per_output[varies].mean()) if varies.any() else float("nan")
        return RidgeFit(r2, lam, per_output)


def fit_logistic(features: Tensor, labels: Tensor, classes: int, lam: float = LOGISTIC_LAMBDA,
                 steps: int = NEWTON_STEPS) -> Tensor:
    """Multinomial logistic regression: weights (d + 1, C), the last row the bias (not
    penalized), minimizing the mean cross-entropy of softmax([features, 1] W) for labels (N,)
    in 0..C-1 plus lam |W[:-1]|^2 / 2. Newton's method with a backtracking line search from
    W = 0: with C and d a few, the (d+1) C square Hessian is small, and the loss is convex."""
    x = torch.cat([features.double(), features.new_ones(features.shape[0], 1).double()], 1)
    n, d = x.shape
    target = torch.nn.functional.one_hot(labels, classes).double()
    penalty = torch.full((d, classes), lam, dtype=torch.float64)
    # The bias row gets a token penalty: softmax ignores a constant added to every class.
    penalty[-1] = 1e-10

    def loss(w: Tensor) -> Tensor:
        return -(torch.log_softmax(x @ w, -1) * target).sum() / n + (penalty * w**2).sum() / 2

    w = x.new_zeros(d, classes)
    current = loss(w)
    for _ in range(steps):
        p = torch.softmax(x @ w, -1)  # (N, C)
        grad = x.T @ (p - target) / n + penalty * w
        # H[(a, c), (b, e)] = mean_i x_ia x_ib (p_ic [c = e] - p_ic p_ie) + penalty
        curvature = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (N, C, C)
        hessian = torch.einsum("ia,ib,ice->acbe", x, x, curvature) / n
        hessian = hessian.reshape(d * classes, d * classes) + torch.diag(penalty.flatten())
        step = torch.linalg.solve(hessian, grad.flatten()).view(d, classes)
        decrement = float((grad * step).sum())
        if decrement < 1e-18:
            break
        t = 1.0
        while True:  # Armijo: the Newton direction descends, so a small enough step does
            trial = loss(w - t * step)
            if trial <= current - 0.25 * t * decrement or t < 1e-8:
                break
            t /= 2
        w, current = w - t * step, trial
    return w


def logistic_probe(
    x_train: Tensor,
    c_train: Tensor,
    x_test: Tensor,
    c_test: Tensor,
    ridge: RidgeProbe | None = None,
) -> LogisticFit:
    """Classes c_train (N,) (any integers) from features x_train (N, p), scored by accuracy on
    x_test (M, p), c_test (M,); a class never seen in training counts as wrong. `ridge`, a
    RidgeProbe of the same features, saves its eigendecomposition.

    Two stages, each linear in the features, so the logits are too: a ridge regression onto
    the class indicators (a least-squares discriminant; lambda by leave-one-out
    cross-validation) whose held-out scores, leave-one-out ones on the training rows, feed a
    multinomial logistic regression with C inputs. The indicators' fitted values span the
    directions of linear discriminant analysis (Hastie, Tibshirani & Buja 1994, optimal
    scoring), and the logistic stage sets the thresholds between them, which matter with
    classes as unequal as Nelder-Mead's branches. One logistic regression on the whole stream
    would cost hundreds of passes over it per lambda and fold, and reads a little more (the
    quickstart's branch at layer 5: 0.919 against this probe's 0.903). lam is the first
    stage's lambda.
    """
    known, labels = torch.unique(c_train, return_inverse=True)
    common = known[torch.bincount(labels).argmax()]
    chance = float((c_test == common).double().mean())
    if len(known) == 1:
        return LogisticFit(chance, chance, float("nan"))
    ridge = ridge if ridge is not None else RidgeProbe(x_train, x_test)
    indicators = torch.nn.functional.one_hot(labels, len(known))
    scores, scores_test, lam = ridge.predict(indicators)
    w = fit_logistic(scores, labels, len(known))
    guess = known[(scores_test @ w[:-1] + w[-1]).argmax(-1)]
    return LogisticFit(float((guess == c_test).double().mean()), chance, lam)
