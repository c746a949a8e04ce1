"""Copy a scored export into trainer/starter/, the model shipped in the package (train_starter.sh).

    python scripts/publish_starter.py --export=runs/starter/export \
        --report=runs/starter/report-100/metrics.json

The export's newest version replaces trainer/starter/ (via a sibling folder and a rename), and its
colorizer.json gains a "starter" section: how and on what it was trained, the licence of those
photos and its scores on cbsd68. Refused above MAX_MB, the wheel's budget for it.
"""

import argparse
import json
import os
import re
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from trainer.serve.export import METADATA_FILE, STARTER_DIR, resolve_saved_model  # noqa: E402

MAX_MB = 20
TRAINED_ON = (
    "cbsd432 (432 colour photos of BSDS500, the Berkeley Segmentation Dataset, 'provided for "
    "research use'): 388 for training, a 10% tuning slice for choices; scored on cbsd68. For other "
    "than research use, fine-tune on your own photos (python -m trainer.task --init_from=starter "
    "--train_data=...) or train from scratch."
)
SCORES = ("psnr", "ssim", "colourfulness", "delta_e_2000", "hue_agreement")
SCORES += ("warm_recall", "green_recall", "blue_recall")


def folder_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(r, n)) for r, _, names in os.walk(path) for n in names) / 1e6


def epochs_trained(train_log: str, step: int, best_val_loss: float) -> tuple:
    """(epochs the run trained, the epoch whose weights it exported) from its log: the epoch line at
    the export's step, and the one of that run with the best validation loss (resumed runs append)."""
    if not train_log or not os.path.exists(train_log):
        return 0, 0
    with open(train_log, encoding="utf-8") as handle:
        lines = re.findall(r"epoch (\d+)/(\d+) step (\d+) loss [\d.]+ val_loss ([\d.]+)", handle.read())
    final = [(int(e), t) for e, t, s, _ in lines if int(s) == step]
    if not final:
        return 0, 0
    epochs, total = final[-1]
    best = [int(e) for e, t, s, v in lines if t == total and int(s) <= step and v == f"{best_val_loss:.4f}"]
    return epochs, best[-1] if best else 0


def starter_section(report: dict, epochs: tuple) -> dict:
    full = report["full"] or report["120"]
    return {
        "trained_by": "scripts/train_starter.sh (the trainer's default flags, --seed=1, no early stopping)",
        "trained_on": TRAINED_ON,
        "epochs": epochs[0],
        "exported_epoch": epochs[1],
        "cbsd68": {
            "images": full["images"],
            "truth_colourfulness": full["truth_colourfulness"],
            **{name: full["model"].get(name) for name in SCORES},
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="An export folder or version folder.")
    parser.add_argument("--report", required=True, help="trainer.evaluate's metrics.json for it.")
    parser.add_argument("--train_log", default="", help="The run's log (for the epochs trained).")
    parser.add_argument("--output", default=STARTER_DIR)
    args = parser.parse_args()
    source = resolve_saved_model(args.export)
    with open(args.report, encoding="utf-8") as handle:
        report = json.load(handle)
    if os.path.realpath(report["saved_model"]) != os.path.realpath(source):
        print(f"error: {args.report} scores {report['saved_model']}, not {source}", file=sys.stderr)
        return 2
    size = folder_mb(source)
    if size > MAX_MB:
        print(f"error: {source} is {size:.1f} MB, over the {MAX_MB} MB budget", file=sys.stderr)
        return 2
    staged = args.output.rstrip("/") + ".new"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(source, staged)
    metadata_path = os.path.join(staged, METADATA_FILE)
    with open(metadata_path, encoding="utf-8") as handle:
        metadata = json.load(handle)
    epochs = epochs_trained(args.train_log, metadata["step"], metadata["best_val_loss"])
    metadata["starter"] = starter_section(report, epochs)
    with open(metadata_path, "w", encoding="utf-8") as handle:
        json.dump(metadata, handle, indent=2)
    shutil.rmtree(args.output, ignore_errors=True)
    os.rename(staged, args.output)
    print(f"published {source} ({size:.1f} MB) as {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
