"""The uniform-tint baseline: every photo's gray plus one constant a*b*, the training photos' mean.

    python scripts/tint_baseline.py --data_root=../shared/data

It is what a regression loss converges to when the image tells it nothing (the conditional mean
becomes the global mean), and it is the "sepia tint" of issue 17: a reference for how much PSNR,
colourfulness and right hue a model gets without recognising anything. The mean a*b* comes from
cbsd432's training photos (the tuning slice excluded); the scores are on cbsd68 at full resolution,
composed as serving composes a prediction with the photo's own L*.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from trainer import metrics, preprocess  # noqa: E402
from trainer.prepare import assign_split  # noqa: E402


def read_rgb(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def mean_ab(paths) -> np.ndarray:
    """The mean a*b* over every pixel of the photos, each photo weighted alike."""
    means = [
        preprocess.rgb_to_lab(preprocess.to_float(tf.constant(read_rgb(p))))[..., 1:]
        .numpy()
        .mean(axis=(0, 1))
        for p in paths
    ]
    return np.mean(means, axis=0)


def tint_scores(paths, ab: np.ndarray) -> tuple:
    """(truth colourfulness, metric means) of gray + the constant `ab` over `paths`."""
    accumulator, truth_colourfulness = metrics.Accumulator(), []
    prediction = tf.constant(np.broadcast_to(ab / preprocess.AB_SCALE, (1, 8, 8, 2)), tf.float32)
    for path in paths:
        truth = read_rgb(path)
        gray = preprocess.to_float(tf.image.rgb_to_grayscale(tf.constant(truth)))[tf.newaxis]
        rgb = preprocess.predictions_to_rgb(prediction, gray, "lab")
        picture = tf.image.convert_image_dtype(rgb, tf.uint8, saturate=True).numpy()
        accumulator.add(metrics.image_metrics(picture, truth[np.newaxis]))
        truth_colourfulness.append(float(metrics.colourfulness(truth[np.newaxis])[0]))
    return float(np.mean(truth_colourfulness)), accumulator.means()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", default="../shared/data")
    parser.add_argument("--tuning_fraction", type=float, default=0.1, help="quality.sh's --holdout_fraction")
    args = parser.parse_args()
    train_dir, test_dir = (os.path.join(args.data_root, name) for name in ("cbsd432", "cbsd68"))
    training = [
        os.path.join(train_dir, n)
        for n in sorted(os.listdir(train_dir))
        if assign_split(n, "train", "tuning", args.tuning_fraction) == "train"
    ]
    ab = mean_ab(training)
    truth, r = tint_scores([os.path.join(test_dir, n) for n in sorted(os.listdir(test_dir))], ab)
    print(
        f"uniform tint a*b* ({ab[0]:.1f}, {ab[1]:.1f}) from {len(training)} training photos, on cbsd68: "
        f"PSNR {r['psnr']:.2f}  SSIM {r['ssim']:.3f}  colourfulness {r['colourfulness']:.1f} "
        f"({100 * r['colourfulness'] / truth:.0f}%)  CIEDE2000 {r['delta_e_2000']:.2f}  "
        f"right hue {100 * r['hue_agreement']:.0f}%"
    )


if __name__ == "__main__":
    main()
