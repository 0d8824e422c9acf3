"""blockwise: train transformer blocks, one at a time, to be the steps of an optimizer."""

from blockwise import problems, random, teachers
from blockwise.rollout import Trajectory, rollout

__version__ = "0.1.0"

__all__ = ["Trajectory", "problems", "random", "rollout", "teachers", "__version__"]
