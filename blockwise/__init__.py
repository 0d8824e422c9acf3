"""blockwise: train transformer blocks, one at a time, to be the steps of an optimizer."""

from blockwise import problems, random, teachers
from blockwise.checkpoints import CheckpointError, load_stack, read_config, save_stack
from blockwise.rollout import Trajectory, rollout

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "Trajectory", "load_stack", "problems", "random", "read_config",
    "rollout", "save_stack", "teachers", "__version__",
]
