"""Stacked checkpoints: a directory that describes itself and loads without unpickling.

    save_stack(stack, recipe, "checkpoints/quickstart", metrics={"breakdown_depth": 4})
    stack = load_stack("checkpoints/quickstart")  # a Stack in eval mode
    read_config("checkpoints/quickstart")["metrics"]  # without loading the weights

A checkpoint directory holds exactly two files.

`config.json`, a JSON object with these fields:
    format_version: 1. A reader refuses a larger one (a newer blockwise wrote it).
    stage: "stacked" (pretrained blocks, stacked), "finetuned" (trained end to end) or
        "looped" (the tied-weight baseline).
    recipe: the resolved recipe, as `recipe_to_dict` writes it (every field explicit).
    codec: what rebuilds the codec: teacher (name), teacher_settings (all of them), family,
        dim, problem_settings (all of them), mode, frame; and its token_dim and num_tokens,
        which the rebuilt codec must reproduce.
    block: every block's settings: width, heads, mlp_ratio, norm, attention, dropout.
    depth: K, the number of layers.
    looped: whether one block is applied at all K layers (the file then holds one block).
    tensors: tensor name -> shape, so that a mismatch is reported by name.
    versions: the blockwise, torch and safetensors versions that wrote it (a record only).
    metrics: the caller's metrics at save time, as `blockwise.jsonable.to_jsonable` writes
        them (NaN as null, +-inf as +-1.7976931348623157e+308), or null.

`model.safetensors`: the stack's state_dict, named as `Stack` names it and `tensors` lists:
    readio.read_in.weight, readio.read_out.weight: the shared read-in/read-out;
    blocks.{i}.<parameter>: layer i+1's block (0-indexed, as in nn.ModuleList), e.g.
        blocks.0.attn.qkv.weight; a looped stack has blocks.0 only.
Its safetensors metadata is {"format": "pt", "blockwise_format": "1", "stage": <stage>}.

Every problem found on loading raises CheckpointError naming the file and the problem.
Both files must be regular files (a FIFO, a device or a directory is refused unopened);
config.json is read up to 16 MiB, and its sizes are bounded (`config.SIZES`: depth at most
1024, dim 1024, ...) and checked against the tensors it lists before anything is built.
Lightning's `.ckpt` files (pickles) are for resuming an interrupted run, never loaded here.

`config` reads and checks config.json, `saveload` writes and rebuilds stacks (through
`blockwise.files.replace_dir`, all or nothing).
"""

from blockwise.checkpoints.config import FORMAT_VERSION, CheckpointError, read_config
from blockwise.checkpoints.saveload import load_stack, save_stack

__all__ = ["FORMAT_VERSION", "CheckpointError", "load_stack", "read_config", "save_stack"]
