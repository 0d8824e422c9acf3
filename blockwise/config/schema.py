"""The recipe schema: frozen dataclasses, every field typed, defaulted and documented once.

A field's doc string and any constraint on its value alone live in its metadata (`setting`,
`section`), so the loader (`load.py`) and the printed documentation (`docs.py`) read one
source. Constraints between fields, and those that need a problem or teacher to be built, are
checked by the loader after the fields themselves.

The defaults are the quickstart, Nelder–Mead on 2-D quadratics: 5 small blocks, a few epochs
on 4096 problems, sized to train on 2 CPU cores in under 3 minutes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, Literal

from blockwise import problems, teachers


@dataclasses.dataclass(frozen=True)
class Check:
    """A constraint on a value of the right type: `ok(value)`, and the words for what it wants,
    appended to the type's description ("an int" + ">= 1")."""

    ok: Callable[[Any], bool]
    expects: str


def at_least(low: float) -> Check:
    return Check(lambda v: v >= low, f">= {low}")


def above(low: float) -> Check:
    return Check(lambda v: v > low, f"> {low}")


def between(low: float, high: float) -> Check:
    return Check(lambda v: low <= v <= high, f">= {low} and <= {high}")


def one_of(registry: dict[str, Any]) -> Check:
    # The words list the registry as imported; a name registered later still passes `ok`.
    return Check(lambda v: v in registry, f"naming one of {', '.join(sorted(registry))}")


# Seeds reach Lightning's seed_everything, which wants an unsigned 32-bit int.
SEED = Check(lambda v: 0 <= v < 2**32, "in [0, 2^32)")

# A run writes to runs/<name>: a name must stay one plain directory name on every system.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
SAFE_NAME = Check(
    lambda v: NAME.fullmatch(v) is not None,
    "of 1 to 100 ASCII letters, digits, '.', '_', '+' or '-', the first a letter or digit "
    "(a run writes to runs/<name>)",
)

# Upper bounds on sizes, so that a typo fails at validation instead of exhausting memory. Each
# lies far above what a study of emulated optimizer steps needs (the shipped recipes: n <= 10,
# K <= 12, 65536 problems, width 128); the field docs give the reasons, and the loader also
# refuses a recipe whose rollout could not fit in this machine's memory.
MAX_DIM = 256
MAX_STEPS = 10_000
MAX_PROBLEMS = 2**24
MAX_WIDTH = 8192
MAX_HEADS = 1024
MAX_MLP_RATIO = 64


def setting(default: Any, doc: str, check: Check | None = None) -> Any:
    """A field with its default, its one doc string and an optional constraint."""
    metadata = {"doc": doc, "check": check}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(factory: Callable[[], Any], doc: str) -> Any:
    """A nested section; `factory` makes its defaults (two sections may share a type)."""
    return dataclasses.field(default_factory=factory, metadata={"doc": doc, "check": None})


# Lightning's precision names, so a typo stops at validation rather than at Trainer().
Precision = Literal["64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true"]


@dataclasses.dataclass(frozen=True)
class ProblemConfig:
    family: str = setting(
        "quadratic", "Objective family, a key of blockwise.problems.REGISTRY.",
        one_of(problems.REGISTRY),
    )
    dim: int = setting(
        2, f"n, the dimension of the search space. At most {MAX_DIM}: the codecs spend a token "
        "per coordinate or per vertex, a quadratic an n x n matrix per problem, and validation "
        "itself starts the teacher on one problem (a simplex of n + 1 points).",
        between(1, MAX_DIM),
    )
    settings: dict[str, Any] = setting(
        {}, "The family's settings (e.g. condition for quadratic); omitted ones take the "
        "family's defaults, and the resolved recipe lists them all."
    )
    x0_radius: float = setting(
        2.0, "Starting points are the minimizer (or 0) + U(-r, r)^n with r this radius.",
        above(0),
    )


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    name: str = setting(
        "nelder_mead", "The optimizer emulated, a key of blockwise.teachers.REGISTRY.",
        one_of(teachers.REGISTRY),
    )
    settings: dict[str, Any] = setting(
        {}, "The teacher's settings (e.g. adaptive for nelder_mead, sigma0 for cma_es); "
        "omitted ones take the teacher's defaults, and the resolved recipe lists them all."
    )


@dataclasses.dataclass(frozen=True)
class CodecConfig:
    mode: Literal["in_context", "oracle"] = setting(
        "in_context", "How the network learns f: in_context (problem tokens carry f's "
        "parameters, the network evaluates f itself) or oracle (f values computed outside "
        "the network are given as tokens)."
    )
    frame: Literal["auto", "none", "scale", "affine"] = setting(
        "auto", "The frame each state is normalized into, so a step is learned scale-free; "
        "decoding undoes it. scale: translation to the best point and one scale; affine "
        "(Nelder–Mead and CMA-ES): the current simplex becomes the standard simplex, or CMA-ES's "
        "distribution N(0, I), so every step looks alike (a degenerate simplex, cond >= 1e4, "
        "or C, cond >= 1e8, falls back to scale); none: identity; auto: affine where the codec "
        "has it (Nelder–Mead's one-step error is 2-4x lower at every step, benchmarks/frames.py; "
        "CMA-ES's lower on every field, the README), else scale, and the resolved recipe names "
        "the kind. Saved runs from before it had a kind read true as scale, false as none."
    )
    vertex_f: Literal["own", "evaluated"] = setting(
        "own", "Nelder–Mead: the f values of the vertices a layer outputs, as the next layer "
        "reads them: the layer's own output (own), or f evaluated by the harness at those "
        "vertices (evaluated). Blocks learn the same either way, and in context the network "
        "evaluates f itself at every point it moves to; this sets what a stack passes between "
        "layers (`blockwise eval --vertex-f` measures a saved stack both ways)."
    )


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    width: int = setting(
        64, "d_model, the width of the token vectors inside a block. A block has about "
        f"(4 + 2 mlp_ratio) width^2 weights: at most {MAX_WIDTH} keeps one block in memory.",
        between(1, MAX_WIDTH),
    )
    heads: int = setting(4, "Attention heads; must divide width.", between(1, MAX_HEADS))
    mlp_ratio: float = setting(
        4.0, "MLP hidden width / width; 0 means no MLP (an attention-only block). At most "
        f"{MAX_MLP_RATIO}, for the same reason as width.",
        between(0, MAX_MLP_RATIO),
    )
    norm: Literal["pre", "post", "none"] = setting(
        "pre", "Layer norm before each sublayer (pre), after the residual sum (post), or none."
    )
    attention: Literal["softmax", "linear"] = setting(
        "softmax", "Attention kind; linear attention can implement a gradient step exactly."
    )
    dropout: float = setting(
        0.0, "Dropout probability in attention and MLP.", Check(lambda v: 0 <= v < 1, "in [0, 1)")
    )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    train_problems: int = setting(
        4096, "Problems rolled out for training. Every set is at most 2^24 (16.7 M), and the "
        "three sets' rollouts together must fit in memory.", between(1, MAX_PROBLEMS),
    )
    val_problems: int = setting(
        512, "Problems rolled out for validation.", between(1, MAX_PROBLEMS)
    )
    test_problems: int = setting(
        1024, "Held-out problems every reported number is measured on.", between(1, MAX_PROBLEMS)
    )
    train_seed: int = setting(0, "Seed of the training problems.", SEED)
    val_seed: int = setting(
        1, "Seed of the validation problems; differs from the others.", SEED
    )
    test_seed: int = setting(2, "Seed of the test problems; differs from the others.", SEED)
    cache_dir: str = setting(
        "runs/cache", "Where rollouts are cached on disk, by content hash (shared by runs)."
    )


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """The optimization settings that pretraining and fine-tuning share."""

    max_epochs: int = setting(10, "Epochs over the training pairs; 0 skips the stage.", at_least(0))
    batch_size: int = setting(
        256, "Examples per optimizer step (per device): one-step pairs in pretraining, whole "
        "trajectories in fine-tuning. Below about 256 a small block's step is short enough "
        "that Lightning's fixed per-step cost shows (benchmarks/training.py).",
        at_least(1),
    )
    lr: float = setting(1e-3, "Peak learning rate.", above(0))
    weight_decay: float = setting(0.0, "Decoupled weight decay.", at_least(0))
    warmup_steps: int = setting(
        50, "Optimizer steps of linear warmup to the peak rate.", at_least(0)
    )
    schedule: Literal["constant", "cosine"] = setting(
        "cosine", "Learning rate after warmup: constant, or cosine decay to 0 at the last step."
    )
    grad_clip: float = setting(
        1.0, "Gradient norm clipping threshold; 0 turns it off.", at_least(0)
    )
    loss_weights: dict[str, float] = setting(
        {}, "Weight of each field the codec learns in the loss (e.g. simplex: 1, fvals: 0.1); "
        "fields not named weigh 1. Bookkeeping fields (nfev, step, generation, ...) are "
        "carried over, not learned, and cannot be weighed.",
        Check(lambda d: all(w >= 0 for w in d.values()), ">= 0"),
    )
    accelerator: str = setting("auto", "Lightning accelerator: auto, cpu, gpu, mps, ...")
    devices: Literal["auto"] | int = setting(
        "auto", "Lightning devices: auto, or how many.",
        Check(lambda v: v == "auto" or v >= 1, ">= 1"),
    )
    strategy: str = setting("auto", "Lightning strategy: auto, ddp, ddp_spawn, ...")
    precision: Precision = setting(
        "32-true", "Lightning precision of the blocks. Teachers roll out in float64; "
        "their states are cast to this precision for training."
    )
    deterministic: bool = setting(
        False, "Lightning's deterministic mode (on GPU it needs CUBLAS_WORKSPACE_CONFIG)."
    )
    log_every_n_steps: int = setting(50, "Optimizer steps between logged metrics.", at_least(1))


@dataclasses.dataclass(frozen=True)
class TrainConfig(StageConfig):
    workers: int = setting(
        1, "Blocks trained at once, each in its own process. Fine-tuning trains the whole "
        "stack in one process and has no such setting.", at_least(1)
    )
    set_loss: bool = setting(
        False, "Score a block's output points as a set: for codecs whose decode re-sorts them "
        "(a Nelder–Mead simplex and its f values), match the output vertices to the target's "
        "in the order that makes the loss least, per example, since the order a block outputs "
        "them in never reaches the next layer. Off, vertex i is scored against the target's "
        "vertex i, so a block must also learn the order, which flips at every near tie of f. "
        "Fine-tuning's default objective scores decoded, re-sorted states; its frame_mse "
        "scores the vertices in order."
    )
    objective: Literal["frame_mse", "log_normalized"] = setting(
        "frame_mse", "frame_mse: per field, the mean squared error in the input's frame. "
        "log_normalized: per field, the mean over pairs of log(1 + (e / error_scale)^2), e the "
        "pair's normalized error (its miss over the teacher's move), so that the few pairs far "
        "off (a wrong branch near a decision boundary) pull little and the loss is spent on "
        "the precision of the many; pairs whose field did not move are left out. "
        "train.loss_weights tuned for one objective do not carry over to the other."
    )
    error_scale: float = setting(
        1.0, "log_normalized only: the normalized error at which a pair's pull on the loss is "
        "largest; below it the loss is nearly quadratic, above it nearly logarithmic.", above(0)
    )


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(StageConfig):
    objective: Literal["log_normalized", "frame_mse", "optimize"] = setting(
        "log_normalized", "log_normalized: per layer and field, the mean over problems of "
        "log(1+e^2), e the normalized emulation error of the decoded state, as evaluation "
        "reports it (robust: problems that went astray do not dominate). frame_mse: the "
        "squared error of the output fields in the frame of the stack's own state at that "
        "layer (pretraining's loss without set_loss; runs saved before this setting existed "
        "used it). "
        "optimize: no teacher past s_0; per layer, the mean over problems of log of the "
        "optimality gap f - f* at the decoded incumbent relative to s_0's, so the stack may "
        "become a better optimizer than its teacher (loss_weights do not apply)."
    )
    supervision: Literal["every_layer", "last"] = setting(
        "every_layer", "Loss against the teacher's s_k at every layer (deep supervision) or at "
        "the last layer only."
    )
    balance_layers: bool = setting(
        False, "Add up the log of each layer's loss instead of the losses, so that a relative "
        "change weighs alike at every layer: a plain sum lets small relative gains at deep "
        "layers buy a large relative loss at a near-exact early one. Not with optimize."
    )
    layer_weight_ratio: float = setting(
        1.0, "With every_layer supervision, layer k's loss weighs ratio^(k-1): 1 weighs all "
        "layers alike, > 1 favours deep layers.", above(0)
    )
    freeze_blocks_epochs: int = setting(
        0, "Epochs at the start in which the blocks stay frozen and only the shared read-in "
        "and read-out train (needs train_readio).", at_least(0)
    )
    train_readio: bool = setting(
        False, "Train the shared read-in/read-out too. Off keeps the residual stream equal to "
        "the token slots, which probes rely on."
    )
    looped: bool = setting(
        True, "Also train the looped baseline: one block (initialized from block 1) applied "
        "K times with tied weights, fine-tuned the same way."
    )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    threshold: float = setting(
        1.0, "Breakdown depth is the first layer whose median normalized rollout error passes "
        "this (1.0: as far from s_k as the teacher's own step).", above(0)
    )
    shuffled: bool = setting(
        True, "Also train a control stack on shuffled pairs, each input paired with another "
        "problem's next state (in that problem's frame), with the same blocks, data and "
        "budget, and evaluate it beside the others: what a block learns from the targets' "
        "distribution alone, without the map from input to output (a control task, Hewitt & "
        "Liang 2019). Its inputs are the teacher's states under greedy pairing too."
    )


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str = setting(
        "recipe", "Run name, the directory under runs/; a recipe file that omits it is named "
        "after the file.", SAFE_NAME,
    )
    seed: int = setting(0, "Global seed of training (initial weights, shuffling).", SEED)
    steps: int = setting(
        5, f"K, the teacher steps emulated = the number of blocks stacked. At most {MAX_STEPS}: "
        "the rollout holds K + 1 states of every problem.", between(1, MAX_STEPS),
    )
    out: str | None = setting(
        None, "Output directory; null means runs/<name>. Validation never creates it."
    )
    threads: int | None = setting(
        None, "CPU threads torch computes with in this process, and in each process of "
        "train.workers; null: torch's default (one per core), divided among the workers. "
        "Changes how fast a run goes, and what it computes only by float rounding (another "
        "summation order), which fine-tuning can amplify: the quickstart's blocks agree to "
        "1e-5 between 1 and 2 threads, its fine-tuned layer 1 at 0.031 against 0.026.",
        Check(lambda v: v is None or 1 <= v <= 1024, "in [1, 1024]"),
    )
    problem: ProblemConfig = section(ProblemConfig, "The objective family and its instances.")
    teacher: TeacherConfig = section(TeacherConfig, "The optimizer the blocks emulate.")
    codec: CodecConfig = section(CodecConfig, "How states become tokens and back.")
    block: BlockConfig = section(BlockConfig, "The shape of every block.")
    pairing: Literal["teacher", "shared", "greedy"] = setting(
        "teacher", "Inputs of block k in pretraining: the teacher's s_{k-1} (teacher), all "
        "steps pooled so every block learns the same step (shared), or the frozen stack's "
        "output after k-1 blocks (greedy)."
    )
    tied: bool = setting(
        False, "Train one block on the pooled pairs of all K steps (needs pairing: shared) and "
        "apply it at every layer: the stack is a looped stack of depth K, saved as one block "
        "plus its depth, and costs one block's training at any K. A tied stack is its own "
        "looped baseline, so finetune.looped adds none."
    )
    data: DataConfig = section(DataConfig, "Train, validation and test problem sets.")
    train: TrainConfig = section(TrainConfig, "Layer-wise pretraining: each block alone.")
    finetune: FinetuneConfig = section(
        lambda: FinetuneConfig(max_epochs=5, lr=3e-4, warmup_steps=0),
        "End-to-end fine-tuning of the whole stack.",
    )
    eval: EvalConfig = section(EvalConfig, "Evaluation on the test problems.")

    def __post_init__(self) -> None:
        # Resolved here so that every Recipe knows its directory. dataclasses.replace keeps
        # a resolved `out`: pass out=None along with a new name to derive it again.
        if self.out is None:
            object.__setattr__(self, "out", f"runs/{self.name}")
