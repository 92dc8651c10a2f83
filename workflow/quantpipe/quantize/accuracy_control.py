"""Accuracy control: which layers cost INT8 its accuracy, and INT8 within an accuracy budget.

Both work with any backend that can leave named layers in FP32 (a backend's `requantizer`), and
any task score (a function of a model; `higher_is_better` says which way is better). Scores are
fractions (accuracy, pixel error); drops, budgets and recoveries are in points (x100).

- `sensitivity`: starting from the fully quantized model, each layer in turn is left in FP32 and
  the model scored, so a layer's `recovery_points` is what falling back that one layer buys, with
  every other layer's INT8 error still in place. That is the question the budget search asks
  (which fallback recovers most), which the converse (only that layer quantized) answers less
  well: it misses errors that only matter together with the rest of the network's rounding.
- `within_budget`: the fewest layers, most sensitive first, kept in FP32 until the score is
  within the budget of FP32's, as NNCF's quantize_with_accuracy_control and Intel Neural
  Compressor's accuracy-aware tuning do.
"""

import time
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn


class BudgetError(ValueError):
    """No choice of FP32 layers brings the INT8 model within the accuracy budget."""


def quantized_layers(net: nn.Module, example: torch.Tensor, types: tuple[type, ...]) -> list[dict]:
    """The layers of `net` of exactly `types` (those the backend quantizes) that its forward
    calls, in call order, each with its multiply-accumulates per input of `example`'s shape and
    its share of all of them."""
    macs: dict[str, int] = {}

    def count(name, module, inputs, output):
        weight = module.weight
        per_output = weight[0].numel() if weight.dim() > 2 else weight.shape[1]
        macs[name] = macs.get(name, 0) + output[0].numel() * per_output

    # Exact types, as the quantizers match them: a subclass of nn.Linear stays FP32 in both.
    named = {name: module for name, module in net.named_modules() if type(module) in types}
    hooks = [module.register_forward_hook(partial(count, name)) for name, module in named.items()]
    training = net.training
    try:
        with torch.no_grad():
            net.eval()(example[:1])
    finally:
        net.train(training)
        for hook in hooks:
            hook.remove()
    total = sum(macs.values()) or 1
    return [
        {"layer": name, "op": type(named[name]).__name__, "macs": count_,
         "macs_share": count_ / total}
        for name, count_ in macs.items()
    ]  # fmt: skip


def drop_points(fp32: float, int8: float, higher_is_better: bool) -> float:
    """How many points INT8 loses to FP32 (negative: it scores better)."""
    return 100 * ((fp32 - int8) if higher_is_better else (int8 - fp32))


def sensitivity(
    layers: Sequence[dict],
    quantize: Callable[[tuple[str, ...]], nn.Module],
    score: Callable[[nn.Module], float],
    higher_is_better: bool,
    log=print,
) -> tuple[float, list[dict]]:
    """(the fully quantized model's score, one row per layer: its score with only that layer in
    FP32 and its `recovery_points` over the fully quantized model), rows most sensitive first."""
    if not layers:
        raise ValueError(
            "the model has no layer this method quantizes (convolutions or linear layers): "
            "there is nothing to rank"
        )
    all_int8 = score(quantize(()))
    log(f"sensitivity: every layer INT8: score {all_int8:.4f}; {len(layers)} layers to try")
    rows, started = [], time.perf_counter()
    for done, layer in enumerate(layers, 1):
        scored = score(quantize((layer["layer"],)))
        recovery = drop_points(scored, all_int8, higher_is_better)
        rows.append({**layer, "score_layer_fp32": scored, "recovery_points": recovery})
        eta = (time.perf_counter() - started) / done * (len(layers) - done)
        log(
            f"sensitivity: {done}/{len(layers)} {layer['layer']} ({layer['op']}) in FP32: score "
            f"{scored:.4f} ({recovery:+.2f} points); ETA {eta:.0f} s"
        )
    rows.sort(key=lambda row: -row["recovery_points"])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return all_int8, rows


def within_budget(
    ranked: Sequence[str],
    quantize: Callable[[tuple[str, ...]], nn.Module],
    score: Callable[[nn.Module], float],
    fp32_score: float,
    budget_points: float,
    higher_is_better: bool,
    log=print,
) -> tuple[nn.Module, dict, list[dict]]:
    """(the INT8 model with the fewest of `ranked` (most sensitive first) in FP32 whose score is
    within `budget_points` of `fp32_score`, its step, every step tried: FP32 layers, score,
    drop). Raises BudgetError, with the best score reached, when even all but the last of
    `ranked` in FP32 miss the budget: that model would hardly be INT8 at all."""
    steps: list[dict] = []
    tried: dict[int, tuple[nn.Module, dict]] = {}

    def attempt(count: int) -> tuple[nn.Module, dict]:
        if count not in tried:
            kept = tuple(ranked[:count])
            model = quantize(kept)
            scored = score(model)
            drop = drop_points(fp32_score, scored, higher_is_better)
            step = {"fp32_layers": list(kept), "score": scored, "drop_points": drop}
            steps.append(step)
            tried[count] = model, step
            log(
                f"budget: {count} layer(s) in FP32: score {scored:.4f}, {drop:+.2f} points from "
                f"FP32 (budget {budget_points})"
            )
        return tried[count]

    def met(step: dict) -> bool:
        return step["drop_points"] <= budget_points

    model, step = attempt(0)
    if met(step):
        return model, step, steps
    # All but the last in FP32 says at once whether the budget can be met at all: a search that
    # cannot end well would take as many tries as there are layers.
    most = len(ranked) - 1
    if most < 1 or not met(attempt(most)[1]):
        best = min(steps, key=lambda tried_step: tried_step["drop_points"])
        raise BudgetError(
            f"no choice of FP32 layers meets the accuracy budget of {budget_points} points: "
            f"even with {max(most, 0)} of the {len(ranked)} quantized layers in FP32 the score "
            f"is {steps[-1]['score']:.4f}, {steps[-1]['drop_points']:.2f} points from FP32's "
            f"{fp32_score:.4f} (best reached: {best['drop_points']:.2f} points with "
            f"{len(best['fp32_layers'])} layers in FP32). Raise accuracy_budget, or try another "
            "calibration method or quantization-aware training (method qat)."
        )
    for count in range(1, most):  # one more layer at a time, most sensitive first
        model, step = attempt(count)
        if met(step):
            return model, step, steps
    return (*attempt(most), steps)
