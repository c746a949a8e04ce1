"""Decode settings of one trained run, scored without retraining (issue 17's inference-side levers).

    python scripts/decode_sweep.py --run=runs/quality/recommended
    python scripts/decode_sweep.py --run=runs/quality/two_heads --blends=0,0.25,0.5,0.75,1 --scales=1
    python scripts/decode_sweep.py --run=runs/quality/recommended --scales=1.3 --blends=0.25 --sides=0,120,176

Settings: a global a*b* scale x, for a `--loss=two_heads` run, the blend of the classification
head's annealed mean with the regression head. Restores the run's best weights (`{run}/model/best`
of a `--model=unet --color_space=lab` run; loss and width from its run.json) and scores, for each
setting, the cbsd432 tuning slice (the photos `trainer.prepare --holdout_fraction` holds out; never
trained on, the only photos a setting may be chosen on) and cbsd68 (reported), each photo at full
resolution with the serving path's composition: the prediction for the 120x120 gray, a*b* upsampled
to the photo's size and scaled, joined with the photo's own L*. `--sides` adds issue 17's lever 4:
0 is serving's squash to 120x120; S predicts at the photo's own aspect ratio, the shorter side S
and both sides rounded to multiples of 8, with the same weights in a U-Net of free height and width.
"""

import argparse
import itertools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer.data.images import read_rgb  # noqa: E402
from trainer.data.input_pipeline import find_shards  # noqa: E402
from trainer.data.prepare import assign_split  # noqa: E402
from trainer.serve import (
    metrics,
    preprocess,  # noqa: E402
)
from trainer.train import decode_fit
from trainer.train.models import build_model  # noqa: E402


def compose(prediction, gray, scale: float, blend: float) -> np.ndarray:
    """The serving path's composition with one decode setting, as uint8 RGB."""
    rgb = preprocess.predictions_to_rgb(prediction, gray, "lab", preprocess.DecodeSettings(scale, blend))
    return tf.image.convert_image_dtype(rgb, tf.uint8, saturate=True).numpy()


def model_input(gray, side: int) -> tf.Tensor:
    """Serving's squash to 120x120 (side 0), or the photo's aspect ratio with shorter side `side`."""
    if not side:
        return preprocess.model_inputs(preprocess.resize_to_model(gray, 120))
    height, width = gray.shape[1:3]
    factor = side / min(height, width)
    size = [max(8, int(round(height * factor / 8)) * 8), max(8, int(round(width * factor / 8)) * 8)]
    return preprocess.model_inputs(tf.image.resize(gray, size, method="bilinear", antialias=True))


def score(model, paths, settings) -> tuple:
    """(truth colourfulness, {(scale, blend, side): metric means}) over `paths`."""
    scorers = {setting: metrics.Scorer() for setting in settings}
    for path in paths:
        truth = read_rgb(path)[np.newaxis]
        gray = preprocess.to_float(tf.image.rgb_to_grayscale(tf.constant(truth)))
        predictions = {
            side: model(model_input(gray, side), training=False) for side in {s[2] for s in settings}
        }
        lab_truth = metrics.lab(truth)
        for (scale, blend, side), scorer in scorers.items():
            scorer.add(compose(predictions[side], gray, scale, blend), truth, lab_truth)
    any_scorer = next(iter(scorers.values()))
    return any_scorer.truth_colourfulness, {k: s.means() for k, s in scorers.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a quality.sh run folder (holds model/best)")
    parser.add_argument("--data_root", default="../shared/data")
    parser.add_argument("--tuning_fraction", type=float, default=0.1, help="quality.sh's --holdout_fraction")
    parser.add_argument("--scales", default="1,1.2,1.4,1.6,1.8,2", help="a*b* multipliers")
    parser.add_argument(
        "--blends", default="0,0.25", help="two_heads runs: shares of the classification head"
    )
    parser.add_argument(
        "--tuning_data", help="shards of the tuning slice: also print trainer.train.decode_fit's choice"
    )
    parser.add_argument(
        "--sides", default="0", help="0: squash to 120x120 (serving); S: aspect ratio, shorter side S"
    )
    args = parser.parse_args()
    with open(os.path.join(args.run, "model", "run.json")) as handle:
        run = json.load(handle)
    model = build_model(run["model"], preprocess.output_channels("lab", run["loss"]), run["base_filters"])
    tf.train.Checkpoint(model=model).restore(
        tf.train.latest_checkpoint(os.path.join(args.run, "model", "best"))
    ).expect_partial()
    free = build_model(run["model"], model.output_shape[-1], run["base_filters"], image_size=None)
    free.set_weights(model.get_weights())
    train_dir, test_dir = (os.path.join(args.data_root, name) for name in ("cbsd432", "cbsd68"))
    tuning = [
        n
        for n in sorted(os.listdir(train_dir))
        if assign_split(n, "train", "tuning", args.tuning_fraction) == "tuning"
    ]
    blends = [float(b) for b in args.blends.split(",")] if run["loss"] == "two_heads" else [0.0]
    sides = [int(side) for side in args.sides.split(",")]
    settings = list(itertools.product([float(s) for s in args.scales.split(",")], blends, sides))
    if args.tuning_data:
        chosen, scores = decode_fit.fit_decode(model, find_shards(args.tuning_data), "lab", run["loss"])
        print(f"decode_fit's choice on {args.tuning_data} (120x120): {chosen} {scores}")
    for name, paths in (
        ("tuning slice of cbsd432", [os.path.join(train_dir, n) for n in tuning]),
        ("cbsd68", [os.path.join(test_dir, n) for n in sorted(os.listdir(test_dir))]),
    ):
        truth, results = score(free, paths, settings)
        print(f"{name}: {len(paths)} photos, truth colourfulness {truth:.1f}")
        for (scale, blend, side), r in results.items():
            print(
                f"  a*b* x{scale:.1f} blend {blend:.2f} side {side or 'squash'}  "
                f"PSNR {r['psnr']:.2f}  SSIM {r['ssim']:.3f}  "
                f"colourfulness {r['colourfulness']:.1f} ({100 * r['colourfulness'] / truth:.0f}%)  "
                f"right hue {100 * r['hue_agreement']:.0f}%"
            )


if __name__ == "__main__":
    main()
