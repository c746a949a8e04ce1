"""Metric correctness against hand-computed values, published reference data and scikit-image."""

import numpy as np
import pytest
from skimage.color import deltaE_ciede2000, rgb2lab

from trainer.serve import metrics

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (3, 24, 20, 3), dtype=np.uint8)


def test_identical_images_have_capped_psnr_and_unit_ssim():
    assert np.all(metrics.psnr(IMAGES, IMAGES) == metrics.PSNR_CAP_DB)
    np.testing.assert_allclose(metrics.ssim(IMAGES, IMAGES), 1.0, atol=1e-6)
    np.testing.assert_allclose(metrics.image_metrics(IMAGES, IMAGES)["delta_e_2000"], 0.0, atol=1e-9)


def test_psnr_matches_the_definition():
    truth = np.full((1, 16, 16, 3), 100, np.uint8)
    predicted = truth + np.uint8(10)  # every value off by 10/255
    expected = 10 * np.log10(1.0 / (10 / 255) ** 2)
    np.testing.assert_allclose(metrics.psnr(predicted, truth), [expected], rtol=1e-5)


def test_ssim_drops_for_different_images():
    assert np.all(metrics.ssim(IMAGES, IMAGES[::-1])[[0, 2]] < 0.2)


def test_colourfulness_of_gray_images_is_zero():
    gray = np.repeat(IMAGES[..., :1], 3, axis=-1)
    np.testing.assert_array_equal(metrics.colourfulness(gray), 0.0)


def test_colourfulness_matches_hand_computed_value():
    image = np.zeros((1, 2, 2, 3), np.uint8)
    image[0, 0, :, 0] = 255  # half pure red, half black
    # rg = |R-G| = {255, 0}: mean 127.5, std 127.5; yb = |(R+G)/2 - B| = {127.5, 0}: mean 63.75, std 63.75
    spread = np.hypot(127.5, 63.75)
    np.testing.assert_allclose(metrics.colourfulness(image), [spread + 0.3 * spread])


@pytest.mark.parametrize(
    "lab1, lab2, expected",
    [
        # Sharma, Wu & Dalal (2005), test data of the CIEDE2000 paper: pairs 1, 7, 13, 17, 25.
        ((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425),
        ((50, 0, 0), (50, -1, 2), 2.3669),
        ((50, 2.49, -0.001), (50, -2.49, 0.0009), 7.1792),
        ((50, 2.5, 0), (73, 25, -18), 27.1492),
        ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ],
)
def test_ciede2000_matches_published_pairs(lab1, lab2, expected):
    assert metrics.ciede2000(lab1, lab2) == pytest.approx(expected, abs=1e-4)
    assert metrics.ciede2000(lab2, lab1) == pytest.approx(expected, abs=1e-4)


def test_ciede2000_matches_scikit_image():
    lab1 = RNG.uniform([0, -110, -110], [100, 110, 110], (2000, 3))
    lab2 = RNG.uniform([0, -110, -110], [100, 110, 110], (2000, 3))
    np.testing.assert_allclose(metrics.ciede2000(lab1, lab2), deltaE_ciede2000(lab1, lab2), atol=1e-9)


def test_delta_e_of_rgb_images_matches_scikit_image():
    other = RNG.integers(0, 256, IMAGES.shape, dtype=np.uint8)
    expected = [deltaE_ciede2000(rgb2lab(a), rgb2lab(b)).mean() for a, b in zip(IMAGES, other)]
    np.testing.assert_allclose(metrics.image_metrics(IMAGES, other)["delta_e_2000"], expected, atol=0.05)


def test_image_metrics_and_accumulator_average_over_images():
    acc = metrics.Accumulator()
    acc.add(metrics.image_metrics(IMAGES[:2], IMAGES[:2]))
    acc.add(metrics.image_metrics(IMAGES[2:], IMAGES[2:]))
    assert acc.count() == 3 and set(acc.means()) == set(metrics.METRICS)
    assert acc.means()["psnr"] == metrics.PSNR_CAP_DB
    np.testing.assert_allclose(acc.means()["colourfulness"], metrics.colourfulness(IMAGES).mean())


def test_scorer_is_the_accumulated_image_metrics_and_quick_leaves_out_the_slow_ones():
    other = RNG.integers(0, 256, IMAGES.shape, dtype=np.uint8)
    full, quick = metrics.Scorer(), metrics.Scorer(quick=True)
    for scorer in (full, quick):
        scorer.add(other[:2], IMAGES[:2])
        scorer.add(other[2:], IMAGES[2:], metrics.lab(IMAGES[2:]))
    expected = metrics.Accumulator()
    expected.add(metrics.image_metrics(other, IMAGES))
    assert full.means() == pytest.approx(expected.means()) and full.images == 3
    assert set(quick.means()) == {"psnr", "colourfulness", *metrics.FAMILY_RECALLS}
    assert quick.means() == pytest.approx({k: expected.means()[k] for k in quick.means()})
    assert full.truth_colourfulness == pytest.approx(metrics.colourfulness(IMAGES).mean())


def _solid(rgb, size=8):
    return np.broadcast_to(np.array(rgb, np.uint8), (1, size, size, 3)).copy()


def test_hue_agreement_counts_right_hues_not_casts():
    sky = _solid((90, 140, 220))
    assert metrics.hue_agreement_lab(metrics.lab(sky), metrics.lab(sky)) == pytest.approx([1.0])
    # A warm cast on a blue sky is colourful but wrong; gray is not coloured at all.
    yellow_cast = _solid((200, 180, 120))
    gray = np.repeat(np.mean(sky, axis=-1, keepdims=True).astype(np.uint8), 3, axis=-1)
    assert metrics.colourfulness(yellow_cast)[0] > 10
    assert metrics.hue_agreement_lab(metrics.lab(yellow_cast), metrics.lab(sky)) == pytest.approx([0.0])
    assert metrics.hue_agreement_lab(metrics.lab(gray), metrics.lab(sky)) == pytest.approx([0.0])


def test_hue_agreement_is_the_share_of_coloured_truth_pixels():
    truth = _solid((200, 40, 40))  # red
    truth[0, :, :2] = 128  # a quarter of the pixels gray: not counted
    predicted = _solid((180, 60, 50))  # a duller red: the same hue sector
    predicted[0, :, 6:] = (40, 160, 60)  # the last quarter green
    # 48 coloured truth pixels, 16 of them predicted green: 32 / 48 agree.
    assert metrics.hue_agreement_lab(metrics.lab(predicted), metrics.lab(truth)) == pytest.approx([2 / 3])
    all_gray = np.full((1, 8, 8, 3), 128, np.uint8)
    assert metrics.hue_agreement_lab(metrics.lab(all_gray), metrics.lab(all_gray)) == pytest.approx([1.0])


def _sky_over_grass(size=16):
    truth = np.zeros((1, size, size, 3), np.uint8)
    truth[0, : size // 2] = (40, 90, 200)  # blue
    truth[0, size // 2 :] = (40, 160, 40)  # green
    return truth


def test_a_uniform_warm_tint_recalls_no_green_and_no_blue():
    truth = _sky_over_grass()
    gray = np.repeat(truth.mean(-1, keepdims=True), 3, axis=-1)
    tint = np.clip(gray + np.array([25, 10, -15]), 0, 255).astype(np.uint8)
    for prediction, expected in ((truth, 1.0), (tint, 0.0), (gray.astype(np.uint8), 0.0)):
        accumulator = metrics.Accumulator()
        accumulator.add(metrics.image_metrics(prediction, truth))
        means = accumulator.means()
        assert means["green_recall"] == means["blue_recall"] == expected
        assert means["warm_recall"] is None, "no warm pixel in the truth: no recall, not 0 or 1"
    assert set(metrics.FAMILY_RECALLS) <= set(metrics.METRICS)


def test_family_recall_pools_pixels_over_images_and_needs_enough_chroma():
    lab_truth = np.zeros((2, 1, 10, 3))
    lab_truth[..., 0] = 50
    lab_truth[0, 0, :1, 1:] = (-20, 10)  # one green pixel in the first image (hue 153 deg, C* 22)
    lab_truth[1, 0, :, 1:] = (-20, 10)  # ten in the second
    lab_predicted = lab_truth.copy()
    lab_predicted[1, 0, :5, 1:] = (-4, 2)  # half of the second image too pale (C* 4.5 < 7.5)
    lab_predicted[0, 0, :1, 1:] = (20, 10)  # the first image's pixel turned warm
    counts = metrics.hue_family_counts(lab_predicted, lab_truth)
    assert counts["green_pixels"].tolist() == [1, 10] and counts["green_hits"].tolist() == [0, 5]
    accumulator = metrics.Accumulator()
    accumulator.add(counts)
    assert accumulator.means()["green_recall"] == pytest.approx(5 / 11)  # pooled, not the mean of 0 and 0.5
