"""Decode settings fitted after training on the validation split, then exported with the model.

A model trained for accuracy predicts muted chroma (a regression head averages plausible
colours). Two settings turn its prediction into a picture without retraining: a global a*b*
scale and, for `--loss=two_heads`, the share of the classification head's annealed mean in the
decoded a*b* (`preprocess.decode_heads`). The rule: accuracy first, within a budget of
PSNR_BUDGET_DB below the best candidate's PSNR; among those that reach `colour_target` x the
truth's colourfulness (the product goal of docs/QUALITY.md), the ones nearly best at giving each
hue family its hue (`metrics.FAMILY_RECALLS`: colour in the right places, not only more of it),
and of those the most accurate; the most colourful one if none reaches the target. Fit on
`--eval_data` only: photos the reported scores never use.
"""

import itertools
from typing import Dict, Iterable, List

import keras
import tensorflow as tf

from trainer.data.input_pipeline import ShardSet, guard_reads, pair_batches
from trainer.serve import metrics, preprocess
from trainer.serve.preprocess import DecodeSettings

CHROMA_SCALES = (1.0, 1.1, 1.2, 1.3, 1.4)
BLENDS = (0.0, 0.25)  # more classification head bought SSIM but neither PSNR nor colour (QUALITY.md)
PSNR_BUDGET_DB = 0.5
RECALL_SLACK = 0.02  # hue-family recall worth less PSNR than this is not worth it
COLOUR_TARGET = 0.6  # of the truth's Hasler-Suesstrunk colourfulness
MAX_EXAMPLES = 2048  # enough for a mean to 0.05 dB; a user's validation split may be far larger
_BATCH = 64
EPOCH_QUALITY_EXAMPLES = 512  # validation pairs scored for PSNR and colourfulness after each epoch


def candidates(color_space: str, loss: str) -> List[DecodeSettings]:
    """The settings a run of this kind can use: none to fit for RGB, no blend without two heads."""
    if color_space != "lab":
        return [DecodeSettings()]
    blends = BLENDS if loss == "two_heads" else (0.0,)
    return [DecodeSettings(scale, blend) for blend, scale in itertools.product(blends, CHROMA_SCALES)]


def validation_batches(shards: ShardSet, max_examples: int = MAX_EXAMPLES) -> tf.data.Dataset:
    """The first `max_examples` validation pairs, in file order, as uint8 batches (same on every worker)."""
    return pair_batches(shards, _BATCH, max_examples)


def score(
    model, batches: Iterable, color_space: str, settings: List[DecodeSettings]
) -> Dict[DecodeSettings, Dict[str, float]]:
    """Each setting's quick scores (`metrics.Scorer`: PSNR, colourfulness, hue-family recalls) and the
    truth's colourfulness."""
    scorers = {s: metrics.Scorer(quick=True) for s in settings}
    for gray, color in batches:
        inputs = preprocess.model_inputs(preprocess.to_float(gray))
        prediction = model(inputs, training=False)
        lab_truth = metrics.lab(color)
        for setting, scorer in scorers.items():
            rgb = preprocess.predictions_to_rgb(prediction, inputs[..., :1], color_space, setting)
            scorer.add(
                tf.image.convert_image_dtype(rgb, tf.uint8, saturate=True).numpy(), color.numpy(), lab_truth
            )
    return {s: {**sc.means(), "truth_colourfulness": sc.truth_colourfulness} for s, sc in scorers.items()}


def hue_recall(result: Dict[str, float]) -> float:
    """The mean of the hue-family recalls a result has (0 when none has coloured truth pixels)."""
    recalls = [result[n] for n in metrics.FAMILY_RECALLS if result.get(n) is not None]
    return sum(recalls) / len(recalls) if recalls else 0.0


def choose(
    scores: Dict[DecodeSettings, Dict[str, float]],
    colour_target: float = COLOUR_TARGET,
    psnr_budget_db: float = PSNR_BUDGET_DB,
) -> DecodeSettings:
    """Within `psnr_budget_db` of the best PSNR, among the settings reaching `colour_target`: the most
    accurate whose hue-family recall is within RECALL_SLACK of the best of them (colour_target 0:
    the most accurate). If none reaches the target, the most colourful one within the budget.
    """
    best = max(s["psnr"] for s in scores.values())
    affordable = {k: s for k, s in scores.items() if s["psnr"] >= best - psnr_budget_db}
    vivid = [
        k for k, s in affordable.items() if s["colourfulness"] >= colour_target * s["truth_colourfulness"]
    ]
    if not vivid:
        return max(affordable, key=lambda k: (affordable[k]["colourfulness"], affordable[k]["psnr"]))
    if colour_target > 0:
        top = max(hue_recall(affordable[k]) for k in vivid)
        vivid = [k for k in vivid if hue_recall(affordable[k]) >= top - RECALL_SLACK]
    return max(vivid, key=lambda k: affordable[k]["psnr"])


def fit_decode(
    model, shards: ShardSet, color_space: str, loss: str, colour_target: float = COLOUR_TARGET
) -> tuple:
    """(chosen DecodeSettings, its scores): scores every candidate on the validation split."""
    settings = candidates(color_space, loss)
    if len(settings) == 1:
        return settings[0], None
    scores = score(model, validation_batches(shards), color_space, settings)
    chosen = choose(scores, colour_target)
    return chosen, scores[chosen]


def epoch_quality(shards: ShardSet, color_space: str, model: keras.Model) -> dict:
    """PSNR, colourfulness share (of the truth's) and green and blue recall of the model's pictures,
    unfitted decode, on the first validation pairs: what a user would see, which the validation loss
    alone doesn't say."""
    batches = validation_batches(shards, EPOCH_QUALITY_EXAMPLES)
    scores = guard_reads(lambda: score(model, batches, color_space, [DecodeSettings()]), shards)
    (result,) = scores.values()
    share = result["colourfulness"] / max(result["truth_colourfulness"], 1e-6)
    recalls = {name: result[name] for name in ("green_recall", "blue_recall")}
    return {"psnr": result["psnr"], "colourfulness_share": share, **recalls}
