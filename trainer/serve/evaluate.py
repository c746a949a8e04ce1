"""`python -m trainer.evaluate`: score an exported model against the gray baseline; write a report.

    python -m trainer.evaluate --image_dir=photos/ --saved_model=runs/colorizer/export/1712345678 \
        --report_dir=R
    python -m trainer.evaluate --data='data/validation-*' --saved_model=... --report_dir=R

Writes `R/metrics.json` and `R/contact_sheet.png` (gray | model | truth, a row per image, 120x120).
The "gray" baseline returns the input unchanged, so the model's numbers mean something only next
to it. Sections of metrics.json (layout version REPORT_VERSION; documented in docs/SERVING.md):
  * "120": 120x120 pairs through `colorize_tensor`, the gray taken from the data (the shard's gray, or
    BT.601 luma of the photo resized as `trainer.prepare` does);
  * "full" (--image_dir only, else null): each photo at its own resolution through `serving_default`,
    gray = BT.601 luma of the photo sent as PNG bytes, the returned PNG decoded.
Each section: {"images": n, "truth_colourfulness": x, "model": {metric: mean}, "gray": {metric: mean}}
with the metrics of `trainer.serve.metrics.METRICS`.
"""

import io
import json
import os

import numpy as np
import tensorflow as tf
from absl import app, flags
from PIL import Image, ImageDraw

from trainer.data import storage
from trainer.data.images import IMAGE_EXTENSIONS, load_pair
from trainer.data.input_pipeline import find_shards, pair_batches
from trainer.data.schema import IMAGE_SIZE
from trainer.errors import ConfigError, DataError, exit_on_user_error, parse_flags_or_exit
from trainer.serve import metrics
from trainer.serve.export import METADATA_FILE, decode_gray, resolve_saved_model

REPORT_FILE = "metrics.json"
SHEET_FILE = "contact_sheet.png"
REPORT_VERSION = 1


def shard_batches(pattern: str, batch_size: int, limit: int):
    """(gray uint8 [n,120,120,1], colour uint8 [n,120,120,3]) batches from `trainer.prepare` shards."""
    yield from pair_batches(find_shards(pattern), batch_size, limit).as_numpy_iterator()


def list_photos(image_dir: str) -> list:
    """The image files of a folder, sorted by name."""
    if not os.path.isdir(image_dir):
        raise DataError(f"no such folder: {image_dir}")
    names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise DataError(f"no photos ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}")
    return [os.path.join(image_dir, n) for n in names]


def photo_batches(paths: list, batch_size: int, limit: int, used: list, skipped: list):
    """120x120 pairs made exactly as `trainer.prepare` makes them, from at most `limit` readable photos.

    Appends the photos it used to `used` (for the full-resolution pass) and unreadable ones to `skipped`.
    """
    grays, colors = [], []
    for path in paths:
        if limit and len(used) == limit:
            break
        try:
            gray, color = load_pair(path, None, IMAGE_SIZE, "raw")
        except (OSError, ValueError) as exc:
            skipped.append(f"{os.path.basename(path)}: {exc}")
            continue
        used.append(path)
        grays.append(np.frombuffer(gray, np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE, 1))
        colors.append(np.frombuffer(color, np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE, 3))
        if len(grays) == batch_size:
            yield np.stack(grays), np.stack(colors)
            grays, colors = [], []
    if grays:
        yield np.stack(grays), np.stack(colors)


class Section:
    """The model's and the gray baseline's scores for one resolution."""

    def __init__(self):
        self.model, self.gray = metrics.Scorer(), metrics.Scorer()

    def add(self, gray_u8, model_u8, truth_u8):
        lab_truth = metrics.lab(truth_u8)
        self.model.add(model_u8, truth_u8, lab_truth)
        self.gray.add(np.repeat(gray_u8, 3, axis=-1), truth_u8, lab_truth)

    def report(self) -> dict:
        return {
            "images": self.model.images,
            "truth_colourfulness": self.model.truth_colourfulness if self.model.images else None,
            "model": self.model.means(),
            "gray": self.gray.means(),
        }


def evaluate_small(loaded, batches, sheet_rows: int):
    """Runs `colorize_tensor` on 120x120 batches; returns (section report, contact-sheet rows)."""
    section, rows = Section(), []
    signature = loaded.signatures["colorize_tensor"]
    for gray, truth in batches:
        rgb = signature(gray=tf.image.convert_image_dtype(gray, tf.float32))["rgb"]
        model = tf.image.convert_image_dtype(rgb, tf.uint8, saturate=True).numpy()
        section.add(gray, model, truth)
        rows.extend(list(zip(gray, model, truth))[: sheet_rows - len(rows)])
    return section.report(), rows


def evaluate_full(loaded, paths: list, max_pixels: int | None, skipped: list) -> dict:
    """Each photo at its own size through `serving_default` (PNG in, PNG out, as a client sends it).

    Photos above the export's pixel limit (which serving would refuse) are named in `skipped`.
    """
    section = Section()
    signature = loaded.signatures["serving_default"]
    for path in paths:
        with Image.open(path) as image:
            if max_pixels and image.width * image.height > max_pixels:
                skipped.append(
                    f"{os.path.basename(path)}: full resolution: {image.width}x{image.height} pixels, "
                    f"above the export's limit of {max_pixels}"
                )
                continue
            truth = np.asarray(image.convert("RGB"))
        gray = decode_gray(tf.io.encode_png(truth))
        png = signature(image_bytes=tf.stack([tf.io.encode_png(gray)]))["colorized_bytes"][0]
        section.add(
            gray.numpy()[np.newaxis], tf.io.decode_png(png, channels=3).numpy()[np.newaxis], truth[np.newaxis]
        )
    return section.report()


def write_contact_sheet(rows: list, path: str):
    """A PNG with a labelled header and one gray | model | truth row per image."""
    tile, header = rows[0][2].shape[0], 16
    sheet = Image.new("RGB", (3 * tile, header + tile * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for column, label in enumerate(("gray", "model", "truth")):
        draw.text((column * tile + 4, 2), label, fill="black")
    for index, (gray, model, truth) in enumerate(rows):
        strip = np.concatenate([np.repeat(gray, 3, axis=-1), model, truth], axis=1)
        sheet.paste(Image.fromarray(strip), (0, header + index * tile))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    with open(path, "wb") as handle:
        handle.write(buffer.getvalue())


def evaluate(
    saved_model: str,
    report_dir: str,
    data: str | None = None,
    image_dir: str | None = None,
    limit: int = 0,
    batch_size: int = 16,
    sheet_rows: int = 100,
) -> dict:
    """Scores `saved_model` on shards (`data`) or photos (`image_dir`); writes and returns the report."""
    saved_model = resolve_saved_model(saved_model)
    used, skipped = [], []
    if image_dir:
        batches = photo_batches(list_photos(image_dir), batch_size, limit, used, skipped)
    else:
        batches = shard_batches(data, batch_size, limit)
    loaded = tf.saved_model.load(saved_model)
    small, rows = evaluate_small(loaded, batches, sheet_rows)
    if not rows:
        raise DataError(f"nothing to evaluate in {image_dir or data}")
    metadata_path = os.path.join(saved_model, METADATA_FILE)
    metadata = json.load(tf.io.gfile.GFile(metadata_path)) if tf.io.gfile.exists(metadata_path) else {}
    full = evaluate_full(loaded, used, metadata.get("max_pixels"), skipped) if image_dir else None
    report = {
        "report_version": REPORT_VERSION,
        "saved_model": saved_model,
        "data": data,
        "image_dir": image_dir,
        "model_metadata": metadata,
        "psnr_cap_db": metrics.PSNR_CAP_DB,
        "120": small,
        "full": full,
        "skipped": skipped,
        "contact_sheet": SHEET_FILE,
    }
    os.makedirs(report_dir, exist_ok=True)
    write_contact_sheet(rows, os.path.join(report_dir, SHEET_FILE))
    storage.write_text(os.path.join(report_dir, REPORT_FILE), json.dumps(report, indent=2))
    return report


FLAGS = flags.FLAGS


def define_flags():
    """Defines the CLI's flags; only `run()` calls it, because absl flags are process-global and
    importing this module as a library (next to other CLIs) must not claim flag names."""
    flags.DEFINE_string("data", None, "Glob of shards written by trainer.prepare (e.g. 'data/validation-*').")
    flags.DEFINE_string("image_dir", None, "A folder of colour photos (also evaluated at full resolution).")
    flags.DEFINE_string(
        "saved_model",
        None,
        "A SavedModel version folder (e.g. runs/colorizer/export/1712345678), an export folder (its "
        "newest version) or starter, the model shipped in the package (a path of that name wins).",
    )
    flags.DEFINE_string("report_dir", None, "Where metrics.json and contact_sheet.png are written.")
    flags.DEFINE_integer("limit", 0, "Evaluate at most this many images (0: all).")
    flags.DEFINE_integer("batch_size", 16, "Images per colorize_tensor call.")
    flags.DEFINE_integer("sheet_rows", 100, "At most this many rows in the contact sheet.")


def _summary(report: dict) -> str:
    lines = [f"{'':12}{'psnr':>8}{'ssim':>8}{'colourf.':>10}{'dE2000':>8}{'hue':>6}{'green':>7}{'blue':>7}"]
    for size in ("120", "full"):
        for who in ("model", "gray"):
            if report[size]:
                m = report[size][who]
                lines.append(
                    f"{size + ' ' + who:12}{m['psnr']:8.2f}{m['ssim']:8.4f}{m['colourfulness']:10.2f}"
                    f"{m['delta_e_2000']:8.2f}{100 * m['hue_agreement']:5.0f}%"
                    f"{_percent(m.get('green_recall')):>7}{_percent(m.get('blue_recall')):>7}"
                )
    return "\n".join(lines)


def _percent(share) -> str:
    return "n/a" if share is None else f"{100 * share:.0f}%"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}", exitcode=2)
    with exit_on_user_error():
        if bool(FLAGS.data) == bool(FLAGS.image_dir):
            raise ConfigError("pass exactly one of --data=PATTERN or --image_dir=DIR")
        if not FLAGS.saved_model or not FLAGS.report_dir:
            raise ConfigError("--saved_model and --report_dir are required")
        if FLAGS.limit < 0 or FLAGS.batch_size < 1 or FLAGS.sheet_rows < 1:
            raise ConfigError("--limit must be at least 0, --batch_size and --sheet_rows at least 1")
        report = evaluate(
            FLAGS.saved_model,
            FLAGS.report_dir,
            FLAGS.data,
            FLAGS.image_dir,
            FLAGS.limit,
            FLAGS.batch_size,
            FLAGS.sheet_rows,
        )
    print(_summary(report))
    print(f"report: {os.path.join(FLAGS.report_dir, REPORT_FILE)} ({report['120']['images']} images)")
    print(f"contact sheet: {os.path.join(FLAGS.report_dir, SHEET_FILE)}")


def run():
    """Console-script entry point (`colorizer-evaluate`)."""
    define_flags()
    app.run(main, flags_parser=parse_flags_or_exit)
