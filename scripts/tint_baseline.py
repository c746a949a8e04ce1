"""The uniform-tint baseline: every photo's gray plus one constant a*b*, the training photos' mean.

    python scripts/tint_baseline.py --data_root=../shared/data --report_dir=runs/quality/tint/report

It is what a regression loss converges to when the image tells it nothing (the conditional mean
becomes the global mean), and it is the "sepia tint" of issue 17: a reference for how much PSNR,
colourfulness and right hue a model gets without recognising anything. The mean a*b* comes from
cbsd432's training photos (the tuning slice excluded); the scores are on cbsd68 at full resolution,
composed as serving composes a prediction with the photo's own L*, and at 120x120 as
`trainer.evaluate` makes its pairs; `--report_dir` gets a report in `trainer.evaluate`'s format, so
`scripts/quality_table.py` shows the tint as a row.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer.data.images import read_rgb  # noqa: E402
from trainer.data.prepare import assign_split  # noqa: E402
from trainer.serve import (
    evaluate,
    preprocess,  # noqa: E402
)
from trainer.serve.export import decode_gray  # noqa: E402


def mean_ab(paths) -> np.ndarray:
    """The mean a*b* over every pixel of the photos, each photo weighted alike."""
    means = [
        preprocess.rgb_to_lab(preprocess.to_float(tf.constant(read_rgb(p))))[..., 1:]
        .numpy()
        .mean(axis=(0, 1))
        for p in paths
    ]
    return np.mean(means, axis=0)


def _tinted(gray_u8: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """uint8 gray [N, H, W, 1] -> uint8 RGB of its L* with the constant `ab`."""
    prediction = tf.constant(np.broadcast_to(ab / preprocess.AB_SCALE, (len(gray_u8), 8, 8, 2)), tf.float32)
    rgb = preprocess.predictions_to_rgb(prediction, preprocess.to_float(tf.constant(gray_u8)), "lab")
    return tf.image.convert_image_dtype(rgb, tf.uint8, saturate=True).numpy()


def tint_report(paths, ab: np.ndarray) -> dict:
    """`trainer.evaluate`'s report sections ("120", "full") for gray + the constant `ab` on `paths`."""
    small, full, used = evaluate.Section(), evaluate.Section(), []
    for gray, color in evaluate.photo_batches(paths, 16, 0, used, []):
        small.add(gray, _tinted(gray, ab), color)
    for path in used:
        truth = read_rgb(path)
        gray = decode_gray(tf.io.encode_png(truth)).numpy()[np.newaxis]  # as evaluate and serving make it
        full.add(gray, _tinted(gray, ab), truth[np.newaxis])
    return {"120": small.report(), "full": full.report()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", default="../shared/data")
    parser.add_argument("--tuning_fraction", type=float, default=0.1, help="quality.sh's --holdout_fraction")
    parser.add_argument("--report_dir", help="also write metrics.json here, as trainer.evaluate does")
    args = parser.parse_args()
    train_dir, test_dir = (os.path.join(args.data_root, name) for name in ("cbsd432", "cbsd68"))
    training = [
        os.path.join(train_dir, n)
        for n in sorted(os.listdir(train_dir))
        if assign_split(n, "train", "tuning", args.tuning_fraction) == "train"
    ]
    ab = mean_ab(training)
    report = tint_report([os.path.join(test_dir, n) for n in sorted(os.listdir(test_dir))], ab)
    report["tint_ab"] = [float(v) for v in ab]
    if args.report_dir:
        os.makedirs(args.report_dir, exist_ok=True)
        with open(os.path.join(args.report_dir, "metrics.json"), "w") as handle:
            json.dump(report, handle, indent=2)
    r, truth = report["full"]["model"], report["full"]["truth_colourfulness"]
    print(
        f"uniform tint a*b* ({ab[0]:.1f}, {ab[1]:.1f}) from {len(training)} training photos, on cbsd68: "
        f"PSNR {r['psnr']:.2f}  SSIM {r['ssim']:.3f}  colourfulness {r['colourfulness']:.1f} "
        f"({100 * r['colourfulness'] / truth:.0f}%)  CIEDE2000 {r['delta_e_2000']:.2f}  "
        f"right hue {100 * r['hue_agreement']:.0f}%"
    )


if __name__ == "__main__":
    main()
