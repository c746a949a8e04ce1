"""`python -m benchmarks.client_throughput PHOTO_DIR [MODEL]`: the client's photos/s, and the model's own.

Both on this machine with the same SavedModel (default: the packaged starter) and the same photos:
  * the model's own rate: `serving_default` called in-process on batches of 4 files already in
    memory (decode, model, compose, PNG encode; no client work around it);
  * the client's: `python -m trainer.client --local_model=MODEL PHOTO_DIR --output_dir=...` run
    whole, per `--parallel`, minus its start-up (a run with no photo to do, timed the same way).
Prints a markdown table for docs/PERFORMANCE.md.
"""

import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_rate(model: str, photo_dir: str, batch: int = 4) -> float:
    """Photos/s of serving_default alone on the folder's photos (one warm-up batch first)."""
    import tensorflow as tf

    from trainer.serve.export import resolve_saved_model

    names = sorted(n for n in os.listdir(photo_dir) if n.lower().endswith((".png", ".jpg", ".jpeg")))
    files = [open(os.path.join(photo_dir, n), "rb").read() for n in names]
    signature = tf.saved_model.load(resolve_saved_model(model)).signatures["serving_default"]
    signature(image_bytes=tf.constant(files[:batch]))
    start = time.perf_counter()
    for i in range(0, len(files), batch):
        signature(image_bytes=tf.constant(files[i : i + batch]))
    return len(files) / (time.perf_counter() - start)


def client_seconds(model: str, photo_dir: str, output_dir: str, parallel: int) -> float:
    env = {**os.environ, "PYTHONPATH": REPO}
    command = [sys.executable, "-m", "trainer.client", f"--local_model={model}", f"--output_dir={output_dir}"]
    start = time.perf_counter()
    subprocess.run([*command, f"--parallel={parallel}", photo_dir], env=env, check=False, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    photo_dir = sys.argv[1]
    model = sys.argv[2] if len(sys.argv) > 2 else "starter"
    count = len([n for n in os.listdir(photo_dir) if not n.startswith(".")])
    alone = model_rate(model, photo_dir)
    rows = [f"| model alone (`serving_default`, batches of 4, in-process) | {alone:.1f} |"]
    for parallel in (1, 2, 4):
        with tempfile.TemporaryDirectory() as out:
            whole = client_seconds(model, photo_dir, out, parallel)
            start_up = client_seconds(model, photo_dir, out, parallel)  # everything done: start-up only
        rate = count / (whole - start_up)
        rows.append(f"| `trainer.client --local_model --parallel={parallel}` | {rate:.1f} |")
    print(f"{count} photos from {photo_dir}, model {model}\n")
    print("| | photos/s |\n| --- | --- |\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
