"""Image-quality metrics for colorization, per image, on 8-bit RGB batches [N, H, W, 3].

Every image is compared as the uint8 picture a person would see (predictions are quantised first):
  * `psnr`: tf.image.psnr on [0, 1] RGB, dB, capped at PSNR_CAP_DB so identical images (infinite
    PSNR) still average to a finite, JSON-safe number;
  * `ssim`: tf.image.ssim on [0, 1] RGB (max_val 1.0, the default 11x11 Gaussian window);
  * `colourfulness`: Hasler & Suesstrunk (2003) on 0-255 RGB, the absolute-difference variant used by
    the DDColor and CT2 evaluation code: rg = |R - G|, yb = |(R + G) / 2 - B|,
    sqrt(std_rg^2 + std_yb^2) + 0.3 * sqrt(mean_rg^2 + mean_yb^2); 0 for any gray image;
  * `delta_e_2000`: mean CIEDE2000 colour difference (Sharma, Wu & Dalal 2005) between the CIE L*a*b*
    (D65) values of the two images, with the Lab conversion `trainer.serve.preprocess` uses;
  * `hue_agreement`: the share of the truth's coloured pixels that the prediction colours with
    about the right hue. Colourfulness alone rewards a uniform warm cast (yellow-blue spread counts
    as colour); this counts a sky only if it comes out blue.
  * `warm_recall`, `green_recall`, `blue_recall`: per hue family (CIELAB hue angle: warm 10-105 deg,
    green 105-190, blue 190-310), the share of the truth's pixels with C*ab >= 15 in the family whose
    prediction has C*ab >= 7.5 and lies in the same family, pooled over all images' pixels. A
    uniform warm tint scores 0 on green and blue.
"""

import numpy as np
import tensorflow as tf

from trainer.serve import preprocess

PSNR_CAP_DB = 100.0
METRICS = (
    "psnr",
    "ssim",
    "colourfulness",
    "delta_e_2000",
    "hue_agreement",
    "warm_recall",
    "green_recall",
    "blue_recall",
)
HUE_CHROMA_MIN = 10.0  # C*ab below which a pixel reads as gray (a*b* units)
HUE_TOLERANCE_DEG = 45.0  # one of eight hue sectors either side: red vs orange passes, red vs green not
HUE_FAMILIES = {"warm": (10.0, 105.0), "green": (105.0, 190.0), "blue": (190.0, 310.0)}  # hue angle, deg
FAMILY_CHROMA_TRUTH, FAMILY_CHROMA_PREDICTED = 15.0, 7.5
FAMILY_RECALLS = tuple(f"{family}_recall" for family in HUE_FAMILIES)


def _unit(images) -> tf.Tensor:
    return tf.image.convert_image_dtype(tf.convert_to_tensor(images, tf.uint8), tf.float32)


def psnr(predicted, truth) -> np.ndarray:
    """Per-image PSNR in dB, at most PSNR_CAP_DB."""
    return np.minimum(tf.image.psnr(_unit(predicted), _unit(truth), max_val=1.0).numpy(), PSNR_CAP_DB)


def ssim(predicted, truth) -> np.ndarray:
    """Per-image SSIM of the RGB images (mean over channels, as tf.image.ssim computes it)."""
    return tf.image.ssim(_unit(predicted), _unit(truth), max_val=1.0).numpy()


def colourfulness(images) -> np.ndarray:
    """Per-image Hasler-Suesstrunk colourfulness of 0-255 RGB images (absolute-difference variant)."""
    rgb = np.asarray(images, np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg, yb = np.abs(r - g), np.abs(0.5 * (r + g) - b)
    axes = (-2, -1)
    spread = np.sqrt(rg.std(axis=axes) ** 2 + yb.std(axis=axes) ** 2)
    mean = np.sqrt(rg.mean(axis=axes) ** 2 + yb.mean(axis=axes) ** 2)
    return spread + 0.3 * mean


def ciede2000(lab1, lab2) -> np.ndarray:
    """CIEDE2000 difference of L*a*b* arrays [..., 3] (kL = kC = kH = 1), element-wise."""
    lab1, lab2 = np.asarray(lab1, np.float64), np.asarray(lab2, np.float64)
    (l1, a1, b1), (l2, a2, b2) = np.moveaxis(lab1, -1, 0), np.moveaxis(lab2, -1, 0)
    c_mean7 = ((np.hypot(a1, b1) + np.hypot(a2, b2)) / 2) ** 7
    g = 0.5 * (1 - np.sqrt(c_mean7 / (c_mean7 + 25.0**7)))
    a1, a2 = a1 * (1 + g), a2 * (1 + g)
    c1, c2 = np.hypot(a1, b1), np.hypot(a2, b2)
    h1, h2 = np.degrees(np.arctan2(b1, a1)) % 360, np.degrees(np.arctan2(b2, a2)) % 360
    chroma_zero = c1 * c2 == 0
    dh = h2 - h1
    dh = np.where(chroma_zero, 0.0, np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh)))
    d_hue = 2 * np.sqrt(c1 * c2) * np.sin(np.radians(dh / 2))
    l_mean, c_mean = (l1 + l2) / 2, (c1 + c2) / 2
    h_sum = h1 + h2
    h_mean = np.where(
        chroma_zero,
        h_sum,
        np.where(
            np.abs(h1 - h2) <= 180, h_sum / 2, np.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2)
        ),
    )
    t = (
        1
        - 0.17 * np.cos(np.radians(h_mean - 30))
        + 0.24 * np.cos(np.radians(2 * h_mean))
        + 0.32 * np.cos(np.radians(3 * h_mean + 6))
        - 0.20 * np.cos(np.radians(4 * h_mean - 63))
    )
    rotation = 30 * np.exp(-(((h_mean - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(c_mean**7 / (c_mean**7 + 25.0**7))
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / np.sqrt(20 + (l_mean - 50) ** 2)
    s_c, s_h = 1 + 0.045 * c_mean, 1 + 0.015 * c_mean * t
    r_t = -np.sin(np.radians(2 * rotation)) * r_c
    dl, dc, dhh = (l2 - l1) / s_l, (c2 - c1) / s_c, d_hue / s_h
    return np.sqrt(dl**2 + dc**2 + dhh**2 + r_t * dc * dhh)


def lab(images) -> np.ndarray:
    """uint8 RGB -> CIE L*a*b* with the conversion training and serving use."""
    return preprocess.rgb_to_lab(_unit(images)).numpy()


def hue_agreement_lab(lab_predicted, lab_truth) -> np.ndarray:
    """Per-image share of the truth's pixels with C*ab >= HUE_CHROMA_MIN whose prediction has C*ab of
    at least half that and a hue angle within HUE_TOLERANCE_DEG; 1 for an image with no such pixel."""
    a_p, b_p = lab_predicted[..., 1], lab_predicted[..., 2]
    a_t, b_t = lab_truth[..., 1], lab_truth[..., 2]
    coloured = np.hypot(a_t, b_t) >= HUE_CHROMA_MIN
    turn = np.degrees(np.arctan2(b_p, a_p) - np.arctan2(b_t, a_t)) % 360.0
    right = (np.minimum(turn, 360.0 - turn) <= HUE_TOLERANCE_DEG) & (np.hypot(a_p, b_p) >= HUE_CHROMA_MIN / 2)
    hits, total = (right & coloured).sum(axis=(-2, -1)), coloured.sum(axis=(-2, -1))
    return np.where(total > 0, hits / np.maximum(total, 1), 1.0)


def hue_family_counts(lab_predicted, lab_truth) -> dict:
    """Per image and hue family: `{family}_pixels`, the truth's pixels of C*ab >= 15 in the family, and
    `{family}_hits`, those whose prediction has C*ab >= 7.5 in the same family."""

    def family_of(lab, chroma_min):
        a, b = lab[..., 1], lab[..., 2]
        hue, coloured = np.degrees(np.arctan2(b, a)) % 360.0, np.hypot(a, b) >= chroma_min
        return {name: coloured & (hue >= low) & (hue < high) for name, (low, high) in HUE_FAMILIES.items()}

    truth, predicted = (
        family_of(lab_truth, FAMILY_CHROMA_TRUTH),
        family_of(lab_predicted, FAMILY_CHROMA_PREDICTED),
    )
    counts = {}
    for name in HUE_FAMILIES:
        counts[f"{name}_pixels"] = truth[name].sum(axis=(-2, -1))
        counts[f"{name}_hits"] = (truth[name] & predicted[name]).sum(axis=(-2, -1))
    return counts


def image_metrics(predicted, truth, quick: bool = False, lab_truth=None) -> dict:
    """{metric: per-image values} for a batch of uint8 predictions against uint8 truth; the hue families
    as per-image pixel counts, which `Accumulator.means` pools into recalls. `quick`: PSNR,
    colourfulness and the hue families only. `lab_truth`: `lab(truth)`, when the caller has it."""
    lab_predicted = lab(predicted)
    lab_truth = lab(truth) if lab_truth is None else lab_truth
    values = {
        **hue_family_counts(lab_predicted, lab_truth),
        "psnr": psnr(predicted, truth),
        "colourfulness": colourfulness(predicted),
    }
    if not quick:
        values["ssim"] = ssim(predicted, truth)
        values["delta_e_2000"] = ciede2000(lab_predicted, lab_truth).mean(axis=(-2, -1))
        values["hue_agreement"] = hue_agreement_lab(lab_predicted, lab_truth)
    return values


class Accumulator:
    """Collects per-image values batch by batch; `means()` averages each metric over all images."""

    def __init__(self):
        self.values = {}

    def add(self, batch: dict):
        for name, values in batch.items():
            self.values.setdefault(name, []).extend(np.asarray(values, np.float64).ravel().tolist())

    def count(self) -> int:
        return max((len(v) for v in self.values.values()), default=0)

    def means(self) -> dict:
        """Each metric's mean over images; for each hue family, hits over pixels of all images (None
        when no image has a pixel of the family)."""
        counts = {n for n in self.values if n.endswith(("_pixels", "_hits"))}
        means = {name: float(np.mean(values)) for name, values in self.values.items() if name not in counts}
        for family in HUE_FAMILIES:
            if f"{family}_pixels" in self.values:
                pixels = float(np.sum(self.values[f"{family}_pixels"]))
                hits = float(np.sum(self.values[f"{family}_hits"]))
                means[f"{family}_recall"] = hits / pixels if pixels else None
        return means


class Scorer:
    """The one evaluator every score goes through (`trainer.evaluate`, the decode fit, the epoch
    scores, the scripts): pictures against their truth, batch by batch, averaged over images.

    `quick` scores PSNR, colourfulness and the hue families only, which is what a choice between
    decode settings or an epoch's log line needs.
    """

    def __init__(self, quick: bool = False):
        self.quick, self._pictures, self._truth = quick, Accumulator(), Accumulator()

    def add(self, picture_u8, truth_u8, lab_truth=None) -> None:
        self._pictures.add(image_metrics(picture_u8, truth_u8, self.quick, lab_truth))
        self._truth.add({"colourfulness": colourfulness(truth_u8)})

    def means(self) -> dict:
        return self._pictures.means()

    @property
    def images(self) -> int:
        return self._truth.count()

    @property
    def truth_colourfulness(self) -> float:
        return self._truth.means().get("colourfulness", 0.0)
