"""The block against independent references: torch's MultiheadAttention, an explicit linear
attention sum, and von Oswald et al.'s construction of one gradient-descent step."""

from __future__ import annotations

import pytest
import torch

from blockwise import problems, teachers
from blockwise.codec import make_codec
from blockwise.model import Attention, Block, ReadIO
from blockwise.rollout import rollout
from blockwise.stack import Stack


def test_softmax_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    ours = Attention(16, 4, "softmax").double()
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).double()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.out.weight)
        ref.out_proj.bias.copy_(ours.out.bias)
    h = torch.randn(3, 7, 16, dtype=torch.float64)
    expected, _ = ref(h, h, h, need_weights=False)
    torch.testing.assert_close(ours(h), expected, rtol=1e-12, atol=1e-12)


def test_linear_attention_is_the_unnormalized_sum():
    torch.manual_seed(1)
    att = Attention(8, 2, "linear").double()
    h = torch.randn(2, 5, 8, dtype=torch.float64)
    q, k, v = att.qkv(h).split(8, dim=-1)
    heads = []
    for s in (slice(0, 4), slice(4, 8)):
        # out_j = sum_i (q_j . k_i) v_i, written as a loop over tokens.
        out = torch.zeros(2, 5, 4, dtype=torch.float64)
        for i in range(5):
            score = (q[:, :, s] * k[:, i : i + 1, s]).sum(-1, keepdim=True)  # (B, T, 1)
            out = out + score * v[:, i : i + 1, s]
        heads.append(out)
    expected = att.out(torch.cat(heads, -1))
    torch.testing.assert_close(att(h), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", ["pre", "post", "none"])
@pytest.mark.parametrize("mlp_ratio", [0.0, 2.0])
def test_block_equals_its_formula(norm, mlp_ratio):
    torch.manual_seed(2)
    block = Block(12, 3, mlp_ratio=mlp_ratio, norm=norm).double()
    h = torch.randn(2, 6, 12, dtype=torch.float64)

    def n1(x):
        if norm == "none":
            return x
        ln = block.norm_attn
        return torch.nn.functional.layer_norm(x, (12,), ln.weight, ln.bias)

    def n2(x):
        if norm == "none":
            return x
        ln = block.norm_mlp
        return torch.nn.functional.layer_norm(x, (12,), ln.weight, ln.bias)

    mlp = block.mlp if block.mlp is not None else torch.zeros_like
    if norm == "post":
        mid = n1(h + block.attn(h))
        out = n2(mid + mlp(mid)) if block.mlp is not None else mid
    else:
        mid = h + block.attn(n1(h))
        out = mid + mlp(n2(mid))
    torch.testing.assert_close(block(h), out, rtol=1e-12, atol=1e-12)


def test_a_layer_whose_block_changes_nothing_is_the_identity():
    block = Block(16, 2)
    with torch.no_grad():
        block.attn.out.weight.zero_()
        block.attn.out.bias.zero_()
        block.mlp[-1].weight.zero_()
        block.mlp[-1].bias.zero_()
    tokens = torch.randn(4, 9, 6)
    assert torch.equal(ReadIO(6, 16).layer(block, tokens), tokens)


def test_bad_block_settings_are_named():
    with pytest.raises(ValueError, match="divisible by heads"):
        Block(10, 3)
    with pytest.raises(ValueError, match="norm"):
        Block(8, 2, norm="middle")
    with pytest.raises(ValueError, match="kind"):
        Block(8, 2, attention="cosine")


def test_linear_attention_block_computes_one_gradient_descent_step_exactly():
    """von Oswald et al. 2023, Prop. 1, on tokens with separate slots for each quantity.

    Token layout (width 2d + 2): [x (d) | y (1) | w (d) | is_iterate (1)]. Context token i is
    [x_i, y_i, 0, 0], the iterate token is [0, 0, w, 1]. Head 1 scores w . x_i and carries x_i;
    head 2 scores y_i and carries x_i; the output projection adds -(eta/N) (head1 - head2) to
    the w slots, which is w - eta * grad L(w) for L(w) = (1/2N) sum_i (w . x_i - y_i)^2.
    """
    d, n_ctx, batch, eta = 4, 10, 8, 0.7
    problem = problems.make("least_squares", batch=batch, dim=d, seed=5, n_context=n_ctx)
    w = problem.sample_x0(seed=6)
    x, y = problem.params["x"], problem.params["y"]
    width, head = 2 * d + 2, d + 1
    ctx = torch.cat([x, y[..., None], torch.zeros(batch, n_ctx, d + 1, dtype=torch.float64)], -1)
    it = torch.cat(
        [
            torch.zeros(batch, 1, d + 1, dtype=torch.float64),
            w[:, None],
            torch.ones(batch, 1, 1, dtype=torch.float64),
        ],
        -1,
    )
    tokens = torch.cat([ctx, it], 1)  # (B, N+1, width)

    xs, ys, ws, flag = slice(0, d), d, slice(d + 1, 2 * d + 1), 2 * d + 1
    block = Block(width, 2, mlp_ratio=0.0, norm="none", attention="linear").double()
    wq, wk, wv = (torch.zeros(width, width, dtype=torch.float64) for _ in range(3))
    wo = torch.zeros(width, width, dtype=torch.float64)
    h1, h2 = slice(0, head), slice(head, 2 * head)
    wq[h1][:d, ws] = torch.eye(d)  # head 1 query: w
    wk[h1][:d, xs] = torch.eye(d)  # head 1 key: x_i
    wv[h1][:d, xs] = torch.eye(d)  # head 1 value: x_i
    wq[h2][0, flag] = 1.0  # head 2 query: 1 on the iterate token
    wk[h2][0, ys] = 1.0  # head 2 key: y_i
    wv[h2][:d, xs] = torch.eye(d)  # head 2 value: x_i
    wo[ws, h1.start : h1.start + d] = -eta / n_ctx * torch.eye(d, dtype=torch.float64)
    wo[ws, h2.start : h2.start + d] = eta / n_ctx * torch.eye(d, dtype=torch.float64)
    with torch.no_grad():
        block.attn.qkv.weight.copy_(torch.cat([wq, wk, wv]))
        block.attn.qkv.bias.zero_()
        block.attn.out.weight.copy_(wo)
        block.attn.out.bias.zero_()

    out = block(tokens)
    gd = teachers.make("gradient_descent", lr=eta)
    expected = gd.step(problem, gd.init(problem, w))[0]["x"]
    torch.testing.assert_close(out[:, -1, ws], expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out[:, :-1], tokens[:, :-1], rtol=0, atol=1e-15)


def exact_gd_block(codec, width: int, eta: float, n_ctx: int) -> Block:
    """One linear-attention head that computes a GD step in the codec's own token layout.

    In the frame the iterate is w' = 0 and context token i holds [x_i, y_i'] with the residual
    y_i' = y_i - x_i . w, so the step is w' <- w' + (eta/N) sum_i y_i' x_i: query the constant
    1, key y_i' (zero on every other token), value x_i, written to the iterate's coordinates.
    """
    d = codec.dim
    one, ctx, coords = (codec.slots[name] for name in ("one", "context", "coords"))
    block = Block(width, 1, mlp_ratio=0.0, norm="none", attention="linear").double()
    wq, wk, wv, wo = (torch.zeros(width, width, dtype=torch.float64) for _ in range(4))
    wq[0, one.start] = 1.0
    wk[0, ctx.start + d] = 1.0
    eye = torch.eye(d, dtype=torch.float64)
    wv[:d, ctx.start : ctx.start + d] = eye
    wo[coords.start : coords.start + d, :d] = eta / n_ctx * eye
    with torch.no_grad():
        block.attn.qkv.weight.copy_(torch.cat([wq, wk, wv]))
        block.attn.qkv.bias.zero_()
        block.attn.out.weight.copy_(wo)
        block.attn.out.bias.zero_()
    return block


def test_a_stack_of_exact_gd_blocks_rolls_out_exactly():
    """f is bookkeeping: recomputed from the objective between layers, never a block's output,
    so a stack exact in x stays exact at every layer (a learned f fed into the next layer's
    frame once broke this: rollout error 0.08 at layer 2 from blocks exact to 1e-7)."""
    d, n_ctx, batch, eta, depth = 4, 10, 8, 0.7, 6
    problem = problems.make("least_squares", batch=batch, dim=d, seed=5, n_context=n_ctx)
    gd = teachers.make("gradient_descent", lr=eta)
    codec = make_codec(gd, problem, mode="in_context")
    width = 16
    blocks = [exact_gd_block(codec, width, eta, n_ctx) for _ in range(depth)]
    stack = Stack(codec, ReadIO(codec.token_dim, width).double(), blocks)
    traj = rollout(gd, problem, problem.sample_x0(seed=6), depth)
    emulated = stack(problem, traj[0])
    for k, state in enumerate(emulated, start=1):
        torch.testing.assert_close(state["x"], traj.states["x"][k], rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(state["f"], traj.states["f"][k], rtol=1e-12, atol=1e-13)
    assert "f" not in codec.learned_fields
