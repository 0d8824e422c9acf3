"""Typed recipes: one YAML file describes a whole run, checked before any work starts.

    >>> from blockwise.config import load_recipe, describe_recipe
    >>> recipe = load_recipe("recipes/quickstart.yaml", ["train.lr=3e-4"])
    >>> recipe.block.width, recipe.train.lr
    (64, 0.0003)

`schema` declares the fields, `load` reads, checks and writes them, `docs` prints them.
"""

from blockwise.config.docs import describe_recipe
from blockwise.config.load import (
    RecipeError,
    dump_recipe,
    load_recipe,
    recipe_from_dict,
    recipe_to_dict,
    save_recipe,
    saved_recipe,
)
from blockwise.config.schema import (
    BlockConfig,
    CodecConfig,
    DataConfig,
    EvalConfig,
    FinetuneConfig,
    ProblemConfig,
    Recipe,
    StageConfig,
    TeacherConfig,
    TrainConfig,
)

__all__ = [
    "BlockConfig", "CodecConfig", "DataConfig", "EvalConfig", "FinetuneConfig", "ProblemConfig",
    "Recipe", "RecipeError", "StageConfig", "TeacherConfig", "TrainConfig", "describe_recipe",
    "dump_recipe", "load_recipe", "recipe_from_dict", "recipe_to_dict", "save_recipe",
    "saved_recipe",
]
