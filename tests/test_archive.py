"""trainer.serve.archive: inputs as people have them, the naming rule, task shares, whole writes.

The client's requests, batch splitting and the CLI over a real model: tests/test_client.py.
"""

import io
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from tests import forkserver
from tests.conftest import make_photo, write_photos
from trainer.errors import ConfigError
from trainer.serve import archive


def test_outputs_mirror_the_folders_and_keep_the_extension_only_where_names_meet():
    relatives = ["a.jpg", "a.png", "scans/a.tif", "scans/b.tiff", "c.JPG"]
    expected = ["a.jpg.png", "a.png.png", "scans/a.png", "scans/b.png", "c.png"]
    assert archive.output_names(relatives) == expected


def test_folders_are_listed_recursively_in_a_stable_order_without_non_photos(tmp_path):
    write_photos(tmp_path / "in" / "2019", 2)
    write_photos(tmp_path / "in", 1, fmt="jpeg")
    (tmp_path / "in" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "in" / "notes.txt").write_text("x")
    (tmp_path / "single.png").write_bytes((tmp_path / "in" / "2019" / "photo000.png").read_bytes())
    photos, ignored = archive.list_photos([str(tmp_path / "in"), str(tmp_path / "single.png")])
    names = ["photo000.png", "2019/photo000.png", "2019/photo001.png", "single.png"]
    assert [p.output for p in photos] == names
    assert ignored == [str(tmp_path / "in" / n) for n in (".DS_Store", "notes.txt")]
    assert photos[0].size == os.path.getsize(tmp_path / "in" / "photo000.jpeg")
    with pytest.raises(ConfigError, match="would both be written to single.png"):
        archive.list_photos([str(tmp_path / "single.png"), str(tmp_path / "single.png")])


def test_tasks_take_disjoint_stable_shares_that_cover_every_photo(tmp_path):
    write_photos(tmp_path, 30)
    everything = [p.output for p in archive.list_photos([str(tmp_path)])[0]]
    shares = [[p.output for p in archive.list_photos([str(tmp_path)], 3, i)[0]] for i in range(3)]
    assert sorted(sum(shares, [])) == sorted(everything) and all(shares)
    assert shares[1] == [p.output for p in archive.list_photos([str(tmp_path)], 3, 1)[0]]


def test_exif_rotated_and_cmyk_photos_are_sent_as_displayed_upright_pngs(tmp_path):
    photo = Image.fromarray(make_photo(7))  # 64 wide, 48 high
    exif = Image.Exif()
    exif[0x0112] = 8  # displayed turned 90 degrees
    photo.save(tmp_path / "phone.jpg", exif=exif)
    sent = archive.request_bytes((tmp_path / "phone.jpg").read_bytes(), "phone.jpg")
    with Image.open(tmp_path / "phone.jpg") as stored, Image.open(io.BytesIO(sent)) as png:
        assert png.format == "PNG" and png.size == (48, 64)
        displayed = np.asarray(stored.convert("RGB").transpose(Image.Transpose.ROTATE_90))
        assert np.array_equal(np.asarray(png), displayed)
    photo.convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert archive.request_bytes((tmp_path / "cmyk.jpg").read_bytes(), "cmyk.jpg").startswith(b"\x89PNG")
    photo.save(tmp_path / "plain.jpg")
    plain = (tmp_path / "plain.jpg").read_bytes()
    assert archive.request_bytes(plain, "plain.jpg") == plain  # upright 8-bit JPEG: sent as it is


def test_an_output_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    assert archive.write_output(str(tmp_path), "a/b.png", b"png") == str(tmp_path / "a" / "b.png")
    assert (tmp_path / "a" / "b.png").read_bytes() == b"png"

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(ConfigError, match=f"^--output_dir={tmp_path}: can't write a/c.png \\(disk full\\)$"):
        archive.write_output(str(tmp_path), "a/c.png", b"png")
    assert sorted(os.listdir(tmp_path / "a")) == ["b.png"]  # no half-written output, no temporary file
    monkeypatch.undo()
    (tmp_path / "file").write_text("a file where the output folder should be")
    with pytest.raises(ConfigError, match=f"^--output_dir={tmp_path}/file: not writable "):
        archive.check_output_dir(str(tmp_path / "file"))


def test_names_that_could_leave_the_output_folder_or_meet_by_case_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"gs://b/photos/a/\.\./b.jpg: a name with an empty"):
        archive._safe("a/../b.jpg", "gs://b/photos/")
    assert archive.output_names(["A.jpg", "a.png"]) == ["A.jpg.png", "a.png.png"]
    write_photos(tmp_path / "in", 1)
    os.rename(tmp_path / "in" / "photo000.png", tmp_path / "in" / "X.png")
    (tmp_path / "in" / "x.png").write_bytes((tmp_path / "in" / "X.png").read_bytes())
    if len(os.listdir(tmp_path / "in")) == 2:  # a case-sensitive disk holds both
        with pytest.raises(ConfigError, match="would both be written to"):
            archive.list_photos([str(tmp_path / "in")])


def test_the_output_folder_inside_an_input_folder_is_not_an_input(tmp_path):
    write_photos(tmp_path / "photos", 2)
    write_photos(tmp_path / "photos" / "out", 2)  # last run's outputs
    photos, _ = archive.list_photos([str(tmp_path / "photos")], output_dir=str(tmp_path / "photos" / "out"))
    assert [p.output for p in photos] == ["photo000.png", "photo001.png"]


def _outputs(folder) -> dict:
    """{relative path: (inode, mtime)} of every file under `folder`."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                stat = os.stat(os.path.join(root, name))
            except FileNotFoundError:  # a task's `.partial`, renamed since the listing
                continue
            found[os.path.relpath(os.path.join(root, name), folder)] = (stat.st_ino, stat.st_mtime_ns)
    return found


@pytest.mark.system
def test_tasks_split_an_archive_and_a_killed_task_restarted_writes_each_output_once(tmp_path, tiny_export):
    """As an Indexed Job runs it: 3 tasks from their environment, task 1 SIGKILLed and restarted."""
    os.makedirs(tmp_path / "photos")
    for i in range(45):  # 512 x 384 each: a task's share of 15 takes seconds, so the kill lands mid-share
        Image.fromarray(np.tile(make_photo(i), (8, 8, 1))).save(tmp_path / "photos" / f"{i:03d}.png")
    flags = [f"--local_model={tiny_export}", f"--output_dir={tmp_path}/out", "--parallel=1", "--batch_size=1"]
    flags.append(f"{tmp_path}/photos")
    logs = []

    def task(index):
        env = {**forkserver.ENV, "COLORIZER_NUM_TASKS": "3", "JOB_COMPLETION_INDEX": str(index)}
        logs.append(tmp_path / f"run{len(logs)}-task{index}.log")
        with open(logs[-1], "w") as log:
            return forkserver.start("trainer.client", flags, env, stdout=log, stderr=subprocess.STDOUT)

    everything = {p.output for p in archive.list_photos([str(tmp_path / "photos")])[0]}
    share = {p.output for p in archive.list_photos([str(tmp_path / "photos")], 3, 1)[0]}
    tasks = [task(i) for i in range(3)]
    deadline = time.monotonic() + 120
    while not share & set(_outputs(tmp_path / "out")) and time.monotonic() < deadline:
        assert tasks[1].poll() is None, logs[1].read_text()
        time.sleep(0.02)
    tasks[1].send_signal(signal.SIGKILL)
    tasks[1].wait()
    before = {k: v for k, v in _outputs(tmp_path / "out").items() if k in share}
    assert before and len(before) < len(share), "task 1 was not killed mid-share"
    for index in (0, 2):
        assert tasks[index].wait(timeout=300) == 0, logs[index].read_text()
    restarted = task(1)
    assert restarted.wait(timeout=300) == 0, logs[3].read_text()
    assert f"; {len(before)} already done; 0 skipped" in logs[3].read_text()
    after = _outputs(tmp_path / "out")
    assert set(after) == everything  # every output, no .partial leftover
    assert {k: after[k] for k in before} == before  # what the killed task wrote was not written again


def test_side_by_side_puts_the_gray_picture_sent_left_of_the_colour(tmp_path):
    sent = io.BytesIO()
    Image.fromarray(make_photo(2)).save(sent, format="PNG")
    colour = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(colour, format="PNG")
    with Image.open(io.BytesIO(archive.side_by_side(sent.getvalue(), colour.getvalue()))) as pair:
        pixels = np.asarray(pair)
    assert pixels.shape == (48, 128, 3)
    gray = np.asarray(Image.fromarray(make_photo(2)).convert("L"))
    assert np.array_equal(pixels[:, :64, 0], gray) and np.array_equal(pixels[:, :64, 1], gray)
    assert (pixels[:, 64:] == (200, 30, 30)).all()
