"""Markdown quality table from `trainer.evaluate` reports (metrics.json), as scripts/quality.sh runs it.

    python scripts/quality_table.py --output=docs/QUALITY.md "label=REPORT_DIR" ["label=REPORT_DIR" ...]

The gray baseline row comes from the first report's "gray" section (all reports score the same
photos). Numbers are full resolution through `serving_default` when the report has them (photos
evaluated with --image_dir), with the 120x120 `colorize_tensor` numbers beside them. The goals
are issue 17's: PSNR no lower than the `--reference` row's (the previous default), SSIM at most
0.01 below it, colourfulness >= 60% of the truth's. `--curve` adds a training run's per-epoch
validation scores, read from its TensorBoard events.
"""

import argparse
import copy
import json
import os

from PIL import Image

SSIM_MARGIN = 0.01
COLOURFULNESS_SHARE = 0.6
SHEET_ROWS = 8
SHEET_HEADER, SHEET_TILE = 16, 120  # trainer.evaluate's contact sheet layout


def load(report_dir: str) -> dict:
    with open(os.path.join(report_dir, "metrics.json")) as handle:
        return json.load(handle)


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"  # reports written before the metric existed


def _cells(full: dict, small: dict, truth: float) -> str:
    share = 100.0 * full["colourfulness"] / truth if truth else 0.0
    return (
        f"{full['psnr']:.2f} | {full['ssim']:.3f} | {full['colourfulness']:.1f} ({share:.0f}%) | "
        f"{full['delta_e_2000']:.2f} | {_percent(full.get('hue_agreement'))} | "
        f"{small['psnr']:.2f} | {small['ssim']:.3f} | {small['colourfulness']:.1f}"
    )


def goals(full: dict, reference: dict, truth: float) -> str:
    """'met' or what misses against the reference row, e.g. 'PSNR -0.40 dB, colourfulness 35% < 60%'."""
    misses = []
    if full["psnr"] < reference["psnr"]:
        misses.append(f"PSNR {full['psnr'] - reference['psnr']:+.2f} dB")
    if full["ssim"] < reference["ssim"] - SSIM_MARGIN:
        misses.append(f"SSIM {full['ssim'] - reference['ssim']:+.3f}")
    if truth and full["colourfulness"] < COLOURFULNESS_SHARE * truth:
        misses.append(
            f"colourfulness {100 * full['colourfulness'] / truth:.0f}% < {100 * COLOURFULNESS_SHARE:.0f}%"
        )
    return "met" if not misses else "misses: " + ", ".join(misses)


def table(rows: list, reference: str = None) -> str:
    """rows: (label, report). A markdown table with the gray baseline first; goals against `reference`."""
    first = rows[0][1]
    size = "full" if first.get("full") else "120"
    truth = first[size]["truth_colourfulness"]
    reports = dict(rows)
    baseline = reports[reference][size]["model"] if reference in reports else None
    lines = [
        f"Scored on {first[size]['images']} photos; truth colourfulness {truth:.1f}. Columns 2-6 at "
        f"{'full resolution via serving_default' if size == 'full' else '120x120'}, 7-9 at 120x120 "
        "via colorize_tensor.",
        "",
        "| | PSNR dB | SSIM | colourfulness (% of truth) | CIEDE2000 | right hue | "
        "PSNR 120 | SSIM 120 | colourf. 120 | goals |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| gray input returned as is | {_cells(first[size]['gray'], first['120']['gray'], truth)} | |",
    ]
    for label, report in rows:
        full = report[size]["model"]
        verdict = "reference" if label == reference else goals(full, baseline, truth) if baseline else ""
        lines.append(f"| {label} | {_cells(full, report['120']['model'], truth)} | {verdict} |")
    return "\n".join(lines) + "\n"


def mean_report(reports: list) -> dict:
    """One report whose model metrics are the means over `reports` (runs of one recipe, other seeds)."""
    merged = copy.deepcopy(reports[0])
    for size in ("120", "full"):
        if section := merged.get(size):
            for metric in section["model"]:
                values = [r[size]["model"].get(metric) for r in reports]
                section["model"][metric] = None if None in values else sum(values) / len(values)
    return merged


def _existing(spec: str) -> tuple:
    """'LABEL=DIR' or 'LABEL=DIR,DIR,...' -> (label, the dirs that hold a metrics.json)."""
    label, paths = spec.rsplit("=", 1)  # labels may hold "=", paths rarely do
    return label, [p for p in paths.split(",") if os.path.exists(os.path.join(p, "metrics.json"))]


def read_curve(event_dir: str) -> list:
    """[(step, {tag: value})] of a run's eval TensorBoard events (one entry per epoch), in step order."""
    import tensorflow as tf

    epochs = {}
    for name in sorted(tf.io.gfile.listdir(event_dir)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(event_dir, name)):
            for value in event.summary.value:
                if value.tensor.dtype and value.metadata.plugin_data.plugin_name == "scalars":
                    epochs.setdefault(event.step, {})[value.tag] = float(tf.make_ndarray(value.tensor))
    return sorted(epochs.items())


def curve_table(curve: list) -> str:
    """Markdown: epoch, step, validation loss, PSNR and colourfulness (unfitted decode)."""
    lines = [
        "| epoch | step | val loss | val PSNR dB | val colourfulness (% of truth) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for epoch, (step, values) in enumerate(curve, start=1):
        lines.append(
            f"| {epoch} | {step} | {values.get('loss', float('nan')):.4f} | "
            f"{values.get('psnr', float('nan')):.2f} | "
            f"{100 * values.get('colourfulness_share', float('nan')):.0f}% |"
        )
    return "\n".join(lines) + "\n"


def crop_sheet(report_dir: str, output: str, rows: int = SHEET_ROWS):
    """Copies the report's contact sheet, cut to its first `rows` rows so the PNG stays small."""
    with Image.open(os.path.join(report_dir, "contact_sheet.png")) as sheet:
        height = min(sheet.height, SHEET_HEADER + rows * SHEET_TILE)
        sheet.crop((0, 0, sheet.width, height)).save(output, optimize=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "reports",
        nargs="+",
        help="LABEL=REPORT_DIR, split at the last = (skipped when it holds no metrics.json)",
    )
    parser.add_argument(
        "--mean_of",
        action="append",
        help="LABEL=DIR,DIR,...: a row of the mean over these reports (one recipe's seeds); repeatable",
    )
    parser.add_argument("--output", required=True)
    parser.add_argument("--title", default="Colour quality")
    parser.add_argument(
        "--sheet", help="also write the last existing report's contact sheet (first rows) here"
    )
    parser.add_argument("--wall_seconds", type=int, help="wall time of the whole run, for the text")
    parser.add_argument("--timings", help="file of 'name: Ns' lines (train + evaluate per model)")
    parser.add_argument("--notes", help="markdown file appended after the table (e.g. the experiments)")
    parser.add_argument("--reference", help="label of the row the goals compare with (the previous default)")
    parser.add_argument(
        "--curve", help="a run's TensorBoard eval folder ({model_dir}/logs/eval): its learning curve"
    )
    args = parser.parse_args(argv)
    specs = [(label, paths[0]) for label, paths in map(_existing, args.reports) if paths]
    rows = [(label, load(path)) for label, path in specs]
    for label, paths in map(_existing, args.mean_of or []):
        if len(paths) > 1:
            rows.append((f"{label}, mean of {len(paths)} runs", mean_report([load(p) for p in paths])))
    parts = [
        f"# {args.title}\n",
        "Generated by `scripts/quality_table.py` from `trainer.evaluate` reports.\n",
        table(rows, args.reference),
    ]
    if args.wall_seconds is not None:
        parts.append(f"Wall time of `scripts/quality.sh`: {args.wall_seconds / 60:.1f} min on 2 CPU cores.\n")
    if args.timings:
        timings = open(args.timings).read().strip().replace("\n", "; ")
        parts.append(
            f"Wall time (train + evaluate per model, whole script; 2 CPU cores shared with other jobs): "
            f"{timings}.\n"
        )
    if args.sheet:
        crop_sheet(specs[-1][1], args.sheet)
        parts.append(
            f"![gray | model | truth]({os.path.relpath(args.sheet, os.path.dirname(args.output))})\n"
        )
    if args.curve:
        parts.append(
            "## Learning curve\n\nValidation (the tuning slice) after each epoch of "
            f"`{args.curve}`; PSNR and colourfulness with the unfitted decode (regression head, a*b* x1).\n"
        )
        parts.append(curve_table(read_curve(args.curve)))
    if args.notes:
        parts.append(open(args.notes).read())
    with open(args.output, "w") as handle:
        handle.write("\n".join(parts))


if __name__ == "__main__":
    main()
