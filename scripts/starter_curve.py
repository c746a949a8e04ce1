"""The starter run's learning curve as a markdown table, from its training log (scripts/train_starter.sh).

    python scripts/starter_curve.py runs/starter/train.log [--every=5]

One row per `--every` epochs (and the last): validation loss, PSNR, colourfulness and the green and
blue hue-family recall the trainer logs after each epoch (tuning slice, 120x120, unfitted decode),
with the wall-clock hours and the CPU-core hours (x --cores) since the run began. A log of several
attempts (resumed runs append to it) counts only the time spent training.
"""

import argparse
import datetime
import re
import sys

EPOCH = re.compile(
    r"^I(\d{4}) ([\d:.]+) .*\] epoch (\d+)/\d+ step (\d+) loss [\d.]+ val_loss ([\d.]+) val_psnr ([\d.]+) dB "
    r"colourfulness (\d+)% of the truth's, green (\S+) blue (\S+) "
)
START = re.compile(r"^I(\d{4}) ([\d:.]+) .*\] \d+ training / \d+ validation examples")
MAX_GAP_HOURS = 0.5  # longer between two lines of one attempt means the run was stopped there


def _time(day: str, clock: str) -> datetime.datetime:
    return datetime.datetime.strptime(f"2000{day} {clock}", "%Y%m%d %H:%M:%S.%f")


def curve(lines) -> list:
    """[(epoch, step, val_loss, psnr, colourfulness %, green, blue, training hours)] from the log."""
    rows, hours, last = [], 0.0, None
    for line in lines:
        start = START.match(line)
        if start:
            last = _time(*start.groups())
            continue
        found = EPOCH.match(line)
        if not found or last is None:
            continue
        day, clock, epoch, step, loss, psnr, colour, green, blue = found.groups()
        now = _time(day, clock)
        gap = (now - last).total_seconds() / 3600
        hours += gap if gap < MAX_GAP_HOURS else 0.0
        last = now
        rows.append((int(epoch), int(step), float(loss), float(psnr), int(colour), green, blue, hours))
    return rows


def table(rows: list, every: int, cores: int) -> str:
    columns = ("epoch", "step", "val loss", "val PSNR dB", "colourfulness", "green recall", "blue recall")
    columns += ("hours", "core-hours")
    out = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for i, (epoch, step, loss, psnr, colour, green, blue, hours) in enumerate(rows):
        if epoch % every == 0 or epoch == 1 or i == len(rows) - 1:
            out.append(
                f"| {epoch} | {step} | {loss:.4f} | {psnr:.2f} | {colour}% | {green} | {blue} | "
                f"{hours:.2f} | {hours * cores:.1f} |"
            )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    with open(args.log, encoding="utf-8") as handle:
        rows = curve(handle)
    if not rows:
        print(f"error: no epoch lines in {args.log}", file=sys.stderr)
        return 3
    print(table(rows, args.every, args.cores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
