"""report.md: the instruments' tables, and last the signs found, each with the number behind it.

A sign is a yes or no under a fixed rule, so that two stacks are judged alike ("n/a" where
the rule cannot apply, and why). "Every layer" and "some layer" are of the layers probed
(results["layers"]):
    a quantity is held at a site when, at some layer, its held-out R^2 is >= 0.5, beats both
        the untrained stack's and the layer's own input slots' by >= 0.1, and the shuffled-
        label control stays <= 0.1; for classes the same on skill = (accuracy - chance) /
        (1 - chance), the share of the way from always guessing the commonest class to always
        right, at layers with at least MIN_OTHERS held-out problems outside that class, and a
        margin of at least two standard errors of the difference of two accuracies. A
        quantity the slots hold already (R^2 >= 0.99 from the layer input at every layer) has
        nothing to be found beyond them.
    attention agrees with the teacher when a head's agreement is >= 0.8 and >= 0.2 above the
        untrained stack's best head, where the teacher's choice varies (its commonest choice
        on < 95% of problems); linear attention follows the residuals when a head's scores
        fit them with R^2 >= 0.9 and >= 0.2 above the untrained stack's best
    the stack re-targets when the median retarget after the last layer is >= 0.5 while the
        no-swap control stays within 0.25 of 0
    it lowers f out of distribution when it does in every condition it can read
    its blocks compute one step when, swapped between steps, they err (median teacher-forced
        error off the diagonal of `interchange`) at most twice as much as in their own step,
        and below 0.5 (the identity scores 1)
"""

from __future__ import annotations

import math

from blockwise.probes.ood import MORE_STEPS
from blockwise.probes.similarity import off_diagonal_mean

MIN_OTHERS = 50

SITE_NAMES = {
    "input": "slots (layer input)",
    "stream": "whole stream",
    "beyond_slots": "stream beyond the slots",
    "heads": "heads' outputs",
}


def _num(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 1e4):
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def site_series(entry: dict, site: str) -> dict[str, list | None] | None:
    """A quantity's scores at a site as {"score", "control", "shuffled", "input"}, per layer:
    R^2, or skill for classes; None if the site was not probed."""
    scores, base = entry.get(site), entry.get("input")
    if scores is None:
        return None
    key = "r2" if entry["kind"] == "quantity" else "skill"
    return {
        "score": scores[key],
        "control": scores.get("control_" + key),
        "shuffled": scores.get("shuffled_" + key),
        "input": base[key] if base else None,
    }


def held_at(entry: dict, site: str, rows: list[dict], layers: list[int]) -> dict | None:
    """The best layer of a quantity at a site by the rule above: {"found", "layer", "score",
    "control", "input", "shuffled"}; None if the site was not probed or no layer can be judged
    (`rows`: per probed layer, the problems probed; `layers`: the layers probed)."""
    series = site_series(entry, site)
    if series is None:
        return None
    best = None
    for i, score in enumerate(series["score"]):
        if score is None:
            continue
        least = 0.1
        if entry["kind"] == "classes":
            chance, accuracy, count = entry[site]["chance"][i], entry[site]["accuracy"][i], \
                rows[i]["test"]
            if (1 - chance) * count < MIN_OTHERS:
                continue
            # Two standard errors of a difference of two accuracies, in units of skill.
            least = max(least, 2 * math.sqrt(2 * accuracy * (1 - accuracy) / count) / (1 - chance))
        control, base, shuffled = (series[key][i] if series[key] is not None else None
                                   for key in ("control", "input", "shuffled"))
        rivals = [v for v in (control, base) if v is not None]
        margin = score - max(rivals) if rivals else score
        found = score >= 0.5 and margin >= least and (shuffled is None or shuffled <= 0.1)
        row = {"found": found, "layer": layers[i], "score": score, "control": control,
               "input": base, "shuffled": shuffled, "margin": margin}
        if best is None or (found, margin) > (best["found"], best["margin"]):
            best = row
    return best


def _value(value) -> str:
    return value if isinstance(value, str) else _num(value)


def _quantity_signs(results: dict) -> list[dict]:
    rows = []
    for name, entry in results["probes"].items():
        measure = "R^2" if entry["kind"] == "quantity" else "skill"
        constant = [c for c in entry["constant_in_frame"] if c is not None]
        if len(constant) == len(entry["constant_in_frame"]):
            value = ", ".join(_value(v) for v in constant[0]["value"])
            share = _num(100 * min(c["share"] for c in constant), 1)
            what = "computed by the frame" if entry["kind"] == "quantity" else "one class"
            rows.append({"sign": f"{name}: {what}", "found": None,
                         "number": f"{value} on {share}% of problems or more at every layer "
                         "probed; not probed"})
            continue
        base = entry["input"]["r2"] if entry["kind"] == "quantity" and entry["input"] else None
        if base and all(v is not None and v >= 0.99 for v in base):
            rows.append({"sign": f"{name}: held by the slots", "found": None,
                         "number": f"R^2 {_num(min(base), 3)} or more from the layer input at "
                         "every layer probed: nothing to find beyond them"})
            continue
        for site in ("beyond_slots", "heads"):
            best = held_at(entry, site, results["rows"], results["layers"])
            if best is None:
                why = ("the stream has no dimensions beyond the slots" if entry[site] is None
                       else f"no layer has {MIN_OTHERS} held-out problems outside the "
                       "commonest class")
                if site == "beyond_slots" or entry[site] is not None:
                    rows.append({"sign": f"{name} in the {SITE_NAMES[site]}", "found": None,
                                 "number": why})
                continue
            rows.append({
                "sign": f"{name} in the {SITE_NAMES[site]}",
                "found": best["found"],
                "number": f"{measure} {_num(best['score'])} at layer {best['layer']} "
                f"(untrained {_num(best['control'])}, slots {_num(best['input'])}, "
                f"shuffled {_num(best['shuffled'])})",
            })
    return rows


def _best_head(stats: list[dict], probed: list[int], who: str, key: str) -> tuple | None:
    """(value, layer, head) of the head scoring highest on `key`, or None if none has it;
    `stats` per probed layer, `probed` their numbers."""
    return max(((v, k, h) for k, layer in zip(probed, stats, strict=True)
                for h, v in enumerate(_per_head(layer[who], key)) if v is not None),
               default=None)


def _attention_signs(results: dict) -> list[dict]:
    layers = results["attention"]["layers"]

    def best(who: str, key: str) -> tuple | None:
        return _best_head(layers, results["layers"], who, key)

    rows = []
    trained, control = best("trained", "agreement"), best("control", "agreement")
    if trained is not None:
        chance = layers[0]["trained"]["chance"]["agreement"]
        fixed = min(layer["trained"]["choice_share"] for layer in layers)
        number = (f"agreement {_num(trained[0])} (layer {trained[1]}, head {trained[2]}); "
                  f"untrained best {_num(control[0])}; chance {_num(chance)}")
        if fixed >= 0.95:
            rows.append({"sign": "a head attends to what the teacher chooses", "found": None,
                         "number": f"the teacher's choice is the same token(s) on "
                         f"{_num(100 * fixed, 1)}% of problems or more: agreement shows a "
                         f"fixed preference, not a choice ({number})"})
        else:
            rows.append({"sign": "a head attends to what the teacher chooses",
                         "found": trained[0] >= 0.8 and trained[0] - control[0] >= 0.2,
                         "number": number})
    trained, control = best("trained", "residuals"), best("control", "residuals")
    if trained is not None:
        rows.append({
            "sign": "the iterate's attention scores follow the residuals (von Oswald et al.)",
            "found": trained[0] >= 0.9 and trained[0] - control[0] >= 0.2,
            "number": f"R^2 {_num(trained[0])} (layer {trained[1]}, head {trained[2]}); "
            f"untrained best {_num(control[0])}",
        })
    return rows


def _per_head(stats: dict, key: str) -> list:
    if key == "residuals":
        return stats.get("scores_follow_residuals", [])
    return [head[key] for head in stats["heads"]]


def _counterfactual_sign(results: dict) -> dict:
    cf = results["counterfactual"]
    last, control = cf["retarget"][-1], cf["control"][-1]
    found = last is not None and last >= 0.5 and control is not None and abs(control) <= 0.25
    return {
        "sign": f"re-targets when the objective is swapped at layer {cf['swap_layer']}",
        "found": found,
        "number": f"retarget {_num(last)} after layer {cf['layer'][-1]} (1 = as the teacher "
        f"restarted on the new objective; no-swap control {_num(control)}); progress on the "
        f"new objective {_num(cf['progress_on_new'][-1])}",
    }


def _ood_sign(results: dict) -> dict:
    run = [r for r in results["ood"] if "skipped" not in r]
    lowers = [r for r in run if r["lowers_f"]]
    progress = [r["progress_last"] if r["progress_last"] is not None else -math.inf for r in run]
    worst = run[progress.index(min(progress))] if run else None
    number = f"in {len(lowers)} of {len(run)} conditions"
    if worst is not None:
        number += f"; least progress ratio {_num(worst['progress_last'])} ({worst['condition']})"
    return {"sign": "still lowers f out of distribution", "found": bool(run) and
            len(lowers) == len(run), "number": number}


def _mean(values: list) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan


def _diagonal(matrix: list[list[float]]) -> tuple[float, float]:
    """(mean on the diagonal, mean off it) of a square matrix, leaving out missing values."""
    size = len(matrix)
    off = [matrix[i][j] for i in range(size) for j in range(size) if i != j]
    return _mean([matrix[i][i] for i in range(size)]), _mean(off)


def _similarity_sign(results: dict) -> dict:
    sim = results["similarity"]
    if sim["looped"]:
        return {"sign": "the blocks compute one repeated step", "found": None,
                "number": "a looped stack: one block by construction"}
    own, swapped = _diagonal(sim["interchange"]["trained"])
    _, control = _diagonal(sim["interchange"]["control"])
    cka = off_diagonal_mean(sim["same_inputs"]["trained"])
    cka_control = off_diagonal_mean(sim["same_inputs"]["control"])
    return {
        "sign": "the blocks compute one repeated step",
        "found": swapped <= 2 * own and swapped < 0.5,
        "number": f"teacher-forced error of a block on another's step {_num(swapped, 3)}, on its "
        f"own {_num(own, 3)} (untrained {_num(control)}); CKA on shared inputs {_num(cka)} "
        f"(untrained {_num(cka_control)})",
    }


def signs(results: dict) -> list[dict]:
    """[{"sign", "found" (True, False or None: not applicable), "number"}]."""
    return [
        *_quantity_signs(results),
        *_attention_signs(results),
        _counterfactual_sign(results),
        _ood_sign(results),
        _similarity_sign(results),
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _probe_section(results: dict) -> list[str]:
    lines = ["## Linear probes", "",
             "Held-out R^2 (classes: accuracy) of a ridge probe (classes: least-squares "
             "discriminant, then multinomial logistic) from each site to the teacher's quantity "
             "on the state the layer receives, in its frame. In brackets: the untrained stack, "
             "then the shuffled-label control. 'slots' is the layer's input: what the tokens "
             "already held.", ""]
    for name, entry in results["probes"].items():
        lines.append(f"**{name}**: {entry['meaning']}"
                     + (f" (classes: {', '.join(entry['classes'].values())})"
                        if entry["classes"] else ""))
        lines.append("")
        constant = [c for c in entry["constant_in_frame"] if c is not None]
        if len(constant) == len(entry["constant_in_frame"]):
            what = "Constant in the frame" if entry["kind"] == "quantity" else "One class"
            value = ", ".join(_value(v) for v in constant[0]["value"])
            lines += [f"{what} at every layer probed ({value}): not probed.", ""]
            continue
        classes = entry["kind"] == "classes"
        key = "accuracy" if classes else "r2"
        header = ["layer", "slots", "whole stream", "beyond slots", "heads"]
        header += ["chance"] if classes else []
        rows = []
        for i, k in enumerate(results["layers"]):
            row = [str(k)]
            for site in ("input", "stream", "beyond_slots", "heads"):
                s = entry[site]
                if s is None or s[key][i] is None:
                    row.append("-")
                    continue
                cell = _num(s[key][i])
                if site != "input":
                    cell += f" ({_num(s['control_' + key][i])}, {_num(s['shuffled_' + key][i])})"
                row.append(cell)
            if classes:
                row.append(_num(entry["stream"]["chance"][i]) if entry["stream"] else "-")
            rows.append(row)
        lines += _table(header, rows) + [""]
    return lines


def _attention_section(results: dict) -> list[str]:
    att = results["attention"]
    linear = att["kind"] == "linear"
    lines = ["## Attention", "",
             f"Queries: the tokens the read-out reads ({', '.join(att['queries'])}). "
             + ("Linear attention has raw scores q.k, not a distribution: masses are shares of "
                "|score| per query. " if linear else "Mass: mean softmax weight per query. ")
             + "Untrained stack in brackets.", ""]
    groups = list(att["layers"][0]["trained"]["heads"][0]["mass"])
    agree = att["layers"][0]["trained"]["heads"][0]["agreement"] is not None
    residuals = "scores_follow_residuals" in att["layers"][0]["trained"]
    header = ["layer", "head"] + groups + (["agreement"] if agree else []) + \
        (["scores ~ residuals R^2"] if residuals else [])
    rows = []
    for k, layer in zip(results["layers"], att["layers"], strict=True):
        for h, head in enumerate(layer["trained"]["heads"]):
            other = layer["control"]["heads"][h]
            row = [str(k), str(h)]
            row += [f"{_num(head['mass'][g])} ({_num(other['mass'][g])})" for g in groups]
            if agree:
                row.append(f"{_num(head['agreement'])} ({_num(other['agreement'])})")
            if residuals:
                row.append(f"{_num(layer['trained']['scores_follow_residuals'][h])} "
                           f"({_num(layer['control']['scores_follow_residuals'][h])})")
            rows.append(row)
    chance = att["layers"][0]["trained"]["chance"]
    rows.append(["chance", ""] + [_num(chance["mass"][g]) for g in groups]
                + ([_num(chance["agreement"])] if agree else []) + ([""] if residuals else []))
    return lines + _table(header, rows) + [""]


def _counterfactual_section(results: dict) -> list[str]:
    cf = results["counterfactual"]
    lines = ["## Counterfactual objective", "",
             f"The objective is swapped for another instance of the family at layer "
             f"{cf['swap_layer']} (its problem tokens, and the f values the state carries). "
             "retarget: 1 = the stack's incumbent moves as the teacher restarted on the new "
             "objective, 0 = as if nothing was swapped (median over problems).", ""]
    columns = zip(cf["layer"], cf["retarget"], cf["control"], cf["progress_on_new"],
                  cf["counted"], strict=True)
    rows = [[str(k), _num(r), _num(c), _num(p), str(n)] for k, r, c, p, n in columns]
    return lines + _table(["layer", "retarget", "no-swap control", "progress on new", "problems"],
                          rows) + [""]


def _ood_section(results: dict) -> list[str]:
    count = next((r["problems"] for r in results["ood"] if "skipped" not in r), 0)
    lines = ["## Out of distribution", "",
             f"The stack rolled out on {count} fresh problems per condition, measured as "
             "`evaluate_stack` measures a rollout; f - f* medians; progress ratio 1 = the "
             "teacher's decrease, 0 = none. "
             f"More steps: twice the depth, at most {MORE_STEPS} layers past it (the last "
             "block repeating).", ""]
    rows = []
    for r in results["ood"]:
        if "skipped" in r:
            rows.append([r["condition"], str(r["layers"]), "-", "-", "-", "-", "-",
                         f"not run: {r['skipped']}"])
            continue
        rows.append([r["condition"], str(r["layers"]), f"{_num(r['gap_start'], 3)} -> "
                     f"{_num(r['gap_last'], 3)}", _num(r["teacher_gap_last"], 3),
                     _num(r["progress_at_depth"]), _num(r["progress_last"]),
                     _num(r["rollout_last"], 3), _num(r["lowers_f"])])
    header = ["condition", "layers", "gap, start -> last layer", "teacher's gap",
              f"progress at layer {results['stack']['depth']}", "progress at last layer",
              "rollout error, last layer", "lowers f"]
    return lines + _table(header, rows) + [""]


def _matrix(matrix: list[list[float]], names: list[int], rows: str = "block") -> list[str]:
    """A square matrix as a table, its rows and columns named by layer numbers `names`."""
    columns = "layer" if rows == "layer" else "block"
    return _table([f"{rows} / {columns}"] + [str(k) for k in names],
                  [[str(k)] + [_num(v, 3) for v in row]
                   for k, row in zip(names, matrix, strict=True)])


def _similarity_section(results: dict) -> list[str]:
    sim, layers = results["similarity"], results["layers"]
    blocks = sim["blocks_of_layers"]
    lines = ["## Layers alike?", ""]
    if sim["looped"]:
        lines += ["A looped stack: one block serves every layer, so its weights are one; the "
                  "CKA below compares one function on the states of different layers.", ""]
    if not sim["looped"]:
        lines += ["Median teacher-forced error of block l (columns) on step k (rows); the "
                  "diagonal is the stack's own, the identity scores 1:", ""]
        lines += _matrix(sim["interchange"]["trained"], layers, "step")
        lines += ["", "Untrained blocks:", ""]
        lines += _matrix(sim["interchange"]["control"], layers, "step") + [""]
    lines += ["Linear CKA between the blocks' updates on shared inputs (trained; 1 = one "
              "function up to rotation and scale):", ""]
    lines += _matrix(sim["same_inputs"]["trained"], blocks)
    lines += ["", "The same for the untrained blocks (random maps of the same inputs score near "
              "1: CKA cannot tell them apart):", ""]
    lines += _matrix(sim["same_inputs"]["control"], blocks)
    lines += ["", "Linear CKA between layers' updates along the stack's own rollout:", ""]
    lines += _matrix(sim["updates"]["trained"], layers, "layer")
    if not sim["looped"]:
        lines += ["", "Cosine between blocks' weight matrices (OV circuits in "
                  "probes.json):", ""] + _matrix(sim["blocks"]["trained"]["weights"], blocks)
    return lines + [""]


def _layers_probed(layers: list[int], depth: int) -> str:
    if layers == list(range(1, depth + 1)):
        return f"all {depth}"
    return f"{', '.join(map(str, layers))} of {depth} (`--layers`; the others are not probed)"


def report(results: dict) -> str:
    """report.md's text."""
    s, p = results["stack"], results["problems"]
    lines = [
        f"# Probes: {results['name']}", "",
        f"`{results['checkpoint']}`: {s['teacher']} on {s['family']} (n = {s['dim']}), "
        f"{s['mode']} mode, {s['frame']} frame; {s['depth']} layers"
        f"{' (looped)' if s['looped'] else ''}, width {s['width']}, {s['token_dim']} slots, "
        f"{s['beyond_slots_dims']} dimensions beyond them, {s['heads']} {s['attention']} "
        f"head(s){', MLP' if s['mlp'] else ', no MLP'}. {p['train']} training and "
        f"{p['test']} held-out problems, seed {p['seed']}; {results['seconds']} s.", "",
        f"Layers probed: {_layers_probed(results['layers'], s['depth'])}.", "",
    ]
    lines += _probe_section(results)
    lines += _attention_section(results)
    lines += _counterfactual_section(results)
    lines += _ood_section(results)
    lines += _similarity_section(results)
    lines += ["## Signs found", ""]
    lines += _table(["sign", "found", "number"],
                    [[r["sign"], {True: "yes", False: "no", None: "n/a"}[r["found"]], r["number"]]
                     for r in results["signs"]])
    return "\n".join(lines) + "\n"
