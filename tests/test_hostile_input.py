"""Hostile and unusual input through the command line (issue 16): each case either works or exits 2 with one line
naming the problem; interrupted or failed commands (Ctrl-C, SIGTERM, a full disk, a read-only folder) leave the
previous outputs exactly as they were, and the next run works."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from image_files import _chunk
from saliencekit import limits
from saliencekit.cli import main
from test_train import make_blobs

TINY = ["--epochs", "1", "--image-size", "64", "--batch-size", "8", "--quiet"]
MATH = "effusion $\\bad$"  # a legal folder name that matplotlib would read as a (broken) formula
UNICODE = "épanchement 胸水"
LONG_STEM = "x" * 180 + "_胸水"  # 186 characters, 190 bytes: a legal file name, too long to copy into an output name


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit status, stdout, stderr); argparse's exits count as their status."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    return rc, out, err


def _refused(capsys, argv: list[str], *words: str) -> str:
    """The command exits 2 with one error line containing every one of ``words``."""
    rc, _, err = _run(capsys, argv)
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert rc == 2 and len(errors) == 1, err
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _on_commit(monkeypatch, under: Path, n: int, action: Callable[[], None]) -> list[str]:
    """Call ``action`` when saliencekit is about to move its ``n``-th finished temporary file under ``under`` into
    place (the moment a file would change); returns the names committed so far."""
    real = os.replace
    done: list[str] = []

    def replace(src, dst, *args, **kwargs):
        name = Path(src).name
        if str(Path(src)).startswith(str(under)) and name.startswith(".") and ".tmp" in name:
            if len(done) + 1 == n:
                action()
            done.append(Path(dst).name)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return done


def _signal(sig: int) -> Callable[[], None]:
    def send() -> None:
        os.kill(os.getpid(), sig)
        time.sleep(0.5)  # the handler runs here, in the main thread, at the latest

    return send


def _disk_full() -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _no_leftovers(folder: Path) -> None:
    stray = [p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".previous")]
    assert not stray, stray


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two classes named to break naive code: a mathtext formula and unicode; one image has a very long name."""
    root = make_blobs(tmp_path_factory.mktemp("hostile") / "data", n=6, size=32, classes=(MATH, UNICODE))
    (root / UNICODE / f"{UNICODE}_000.png").rename(root / UNICODE / f"{LONG_STEM}.png")
    return root


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile_run") / "run"
    assert main(["train", str(data), "--out", str(out), *TINY]) == 0
    return out


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


# ------------------------------------------------------------ names: mathtext, unicode, long


def test_mathtext_and_unicode_class_names_train_and_report(run_dir, data, capsys, tmp_path) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    assert set(config["class_names"]) == {MATH, UNICODE}
    assert {"confusion.png", "roc.png", "curves.png", "metrics.json"} <= {p.name for p in run_dir.iterdir()}
    run = _copy(run_dir, tmp_path)
    rc, _, _ = _run(capsys, ["report", str(run), "--images", "2", "--methods", "gradient", "--quiet"])
    assert rc == 0 and (run / "report.html").is_file()
    page = (run / "report.html").read_text()
    assert "effusion $\\bad$" in page and UNICODE in page  # shown as written


def test_every_figure_draws_class_names_literally() -> None:
    """A class name with ``$`` is drawn as its characters, never parsed as a formula (matplotlib would raise on
    ``$\\bad$`` and silently turn ``$x$`` into an italic x)."""
    from matplotlib.text import Text

    from saliencekit.viz.inline import figure_png
    from saliencekit.viz.training import plot_confusion, plot_roc

    names = [MATH, "$x$", UNICODE]
    metrics = {"roc_curves": {n: {"fpr": [0, 1], "tpr": [0, 1]} for n in names},
               "per_class": {n: {"auc": 0.5} for n in names}}
    for fig in (plot_confusion(np.eye(3, dtype=int), names, title=MATH), plot_roc(metrics, title="$x$")):
        assert figure_png(fig)[:4] == b"\x89PNG"
        texts = [t for t in fig.findobj(Text) if t.get_text()]
        assert any(MATH in t.get_text() for t in texts) and any("$x$" in t.get_text() for t in texts)
        assert all(not t._preprocess_math(t.get_text())[1] for t in texts)  # no text is typeset as mathtext


def test_src_makes_figures_only_through_the_literal_figure() -> None:
    """Every figure saliencekit draws is a ``saliencekit._figure.Figure`` (texts drawn literally): no module makes a
    plain matplotlib figure (type-only imports aside)."""
    import re

    src = Path(__file__).parents[1] / "src" / "saliencekit"
    plain = re.compile(r"^\s*from matplotlib\.figure import Figure\b|(plt|pyplot)\.(figure|subplots)\(")
    offenders = []
    for path in src.rglob("*.py"):
        text = path.read_text()
        for line in text.splitlines():
            if plain.search(line) and path.name != "_figure.py":
                offenders.append(f"{path.relative_to(src)}: {line.strip()}")
    # type-only imports are allowed: they sit under `if TYPE_CHECKING:`
    offenders = [o for o in offenders if not _type_only(src / o.split(":")[0], o.split(": ", 1)[1])]
    assert not offenders, offenders


def _type_only(path: Path, line: str) -> bool:
    lines = path.read_text().splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.strip() == line)
    return any(ln.strip() == "if TYPE_CHECKING:" for ln in lines[max(0, i - 5):i])


def test_long_and_unicode_file_names_are_explained_into_short_distinct_folders(run_dir, data, capsys,
                                                                                 tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(data / UNICODE / f"{LONG_STEM}.png", images / f"{LONG_STEM}.png")
    for stem in ("胸水_1", "肺_1"):  # differ only in characters a file name cannot keep
        shutil.copy(data / MATH / f"{MATH}_001.png", images / f"{stem}.png")
    rc, _, err = _run(capsys, ["explain", str(run_dir), str(images), "--methods", "gradient", "--out",
                               str(tmp_path / "maps"), "--quiet"])
    assert rc == 0, err
    folders = [p for p in (tmp_path / "maps").iterdir() if p.is_dir()]
    assert len(folders) == 3
    assert all(len(p.name) <= limits.MAX_NAME_LENGTH for p in folders)
    summary = json.loads((tmp_path / "maps" / "summary.json").read_text())
    assert {Path(r["file"]).name for r in summary["images"]} == {f"{LONG_STEM}.png", "胸水_1.png", "肺_1.png"}


# ------------------------------------------------------------ image files


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims ``width`` x ``height`` pixels (its few bytes of data never decode that far)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _chunk(b"IEND", b""))


def _float_tiff_with_nan(path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    a = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    a[3, 4] = np.nan
    tifffile.imwrite(path, a)


def _truncated(path: Path) -> None:
    buf = path.parent / "whole.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40), dtype=np.uint8)).save(buf)
    path.write_bytes(buf.read_bytes()[:300])
    buf.unlink()


BAD_FILES = {
    "empty.png": (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    "truncated.png": (_truncated, "cannot read image"),
    "huge.png": (lambda p: _png_header_only(p, 10_000, 10_000), "10000 x 10000 pixels"),
    "nan.tif": (_float_tiff_with_nan, "NaN"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_image_file_is_named_and_nothing_is_written(name, capsys, tmp_path) -> None:
    data = make_blobs(tmp_path / "data", n=4, size=32)
    make, words = BAD_FILES[name]
    make(data / "normal" / name)
    before = _snapshot(data)
    out = tmp_path / "run"
    _refused(capsys, ["train", str(data), "--out", str(out), *TINY], name, words)
    assert not out.exists() and _snapshot(data) == before


def test_huge_image_is_refused_before_it_is_decoded(run_dir, capsys, tmp_path) -> None:
    _png_header_only(tmp_path / "huge.png", 10_000, 10_000)
    line = _refused(capsys, ["explain", str(run_dir), str(tmp_path / "huge.png"), "--out", str(tmp_path / "maps"),
                             "--quiet"], "huge.png", "10000 x 10000")
    assert f"{limits.MAX_IMAGE_PIXELS:,}" in line
    assert not (tmp_path / "maps").exists()


def test_skip_bad_trains_without_the_unreadable_files(capsys, tmp_path) -> None:
    data = make_blobs(tmp_path / "data", n=4, size=32)
    for name, (make, _) in BAD_FILES.items():
        make(data / "normal" / name)
    rc, _, err = _run(capsys, ["train", str(data), "--out", str(tmp_path / "run"), "--skip-bad", *TINY])
    assert rc == 0, err
    assert sorted(json.loads((tmp_path / "run" / "config.json").read_text())["skipped_files"]) == sorted(
        f"normal/{n}" for n in BAD_FILES)
    assert err.count("saliencekit: warning:") == len(BAD_FILES)


def test_one_pixel_alpha_palette_and_bilevel_images_train(capsys, tmp_path) -> None:
    from saliencekit.data.reader import read_image

    data = make_blobs(tmp_path / "data", n=4, size=32)
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (40, 30), dtype=np.uint8)
    files = {
        "one_pixel.png": Image.fromarray(np.full((1, 1), 200, np.uint8)),
        "rgba.png": Image.fromarray(rng.integers(0, 255, (40, 30, 4), dtype=np.uint8), "RGBA"),
        "grey_alpha.png": Image.fromarray(grey).convert("LA"),
        "palette.png": Image.fromarray(grey).convert("P"),
        "bilevel.png": Image.fromarray(grey).convert("1"),
    }
    for name, im in files.items():
        im.save(data / "normal" / name)
        arr = read_image(data / "normal" / name)
        assert arr.shape[:2] == im.size[::-1] and arr.shape[2] == 1 and np.isfinite(arr.astype(float)).all()
    rc, _, err = _run(capsys, ["train", str(data), "--out", str(tmp_path / "run"), *TINY])
    assert rc == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["skipped_files"] == []


# ------------------------------------------------------------ datasets and limits


def test_class_with_one_image_is_refused_by_name(capsys, tmp_path) -> None:
    data = make_blobs(tmp_path / "data", n=4, size=32)
    (data / "lonely").mkdir()
    shutil.copy(data / "normal" / "normal_000.png", data / "lonely" / "only.png")
    _refused(capsys, ["train", str(data), "--out", str(tmp_path / "run"), *TINY], "lonely", "1",
             f"at least {limits.MIN_IMAGES_PER_CLASS}")
    assert not (tmp_path / "run").exists()


def test_more_classes_than_the_limit_are_refused(capsys, tmp_path) -> None:
    data = tmp_path / "data"
    for i in range(limits.MAX_CLASSES + 1):
        (data / f"c{i:04d}").mkdir(parents=True)
    _refused(capsys, ["train", str(data), "--out", str(tmp_path / "run"), *TINY],
             f"{limits.MAX_CLASSES + 1} classes", f"limit of {limits.MAX_CLASSES}")


@pytest.mark.parametrize("argv, words", [
    (["--image-size", str(limits.MAX_IMAGE_SIDE + 1)], [str(limits.MAX_IMAGE_SIDE)]),
    (["--image-size", "4"], ["image"]),
])
def test_image_size_outside_the_limits_is_refused(argv, words, capsys, tmp_path) -> None:
    data = make_blobs(tmp_path / "data", n=3, size=32)
    _refused(capsys, ["train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet", *argv], *words)
    assert not (tmp_path / "run").exists()


def test_synthetic_data_larger_than_the_limit_is_refused(capsys, tmp_path) -> None:
    _refused(capsys, ["data", "synth", str(tmp_path / "d"), "--size", str(limits.MAX_IMAGE_SIDE + 1)],
             str(limits.MAX_IMAGE_SIDE))
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------ run directories: split.json, checkpoint


def _edit_split(run: Path, edit: Callable[[dict], object]) -> None:
    split = json.loads((run / "split.json").read_text())
    edit(split)  # in place
    (run / "split.json").write_text(json.dumps(split))


SPLIT_EDITS = {
    "missing": (None, ["missing split.json"]),
    "not json": ("{", ["split.json"]),
    "a list": ("[]", ["split.json", "edited or damaged"]),
    "listed twice": (lambda s: s["files"]["test"].append(s["files"]["train"][0]), ["split.json", "listed twice"]),
    "no test part": (lambda s: s["files"].pop("test"), ["split.json", "files.test"]),
    "unknown file": (lambda s: s["files"]["test"].append("normal/not_there.png"), ["not_there.png"]),
}


@pytest.mark.parametrize("case", sorted(SPLIT_EDITS))
def test_missing_or_edited_split_is_refused_by_every_command(case, run_dir, capsys, tmp_path) -> None:
    run = _copy(run_dir, tmp_path)
    edit, words = SPLIT_EDITS[case]
    if edit is None:
        (run / "split.json").unlink()
    elif isinstance(edit, str):
        (run / "split.json").write_text(edit)
    else:
        _edit_split(run, edit)
    before = _snapshot(run)
    _refused(capsys, ["evaluate", str(run), "--quiet"], *words)
    if case in ("missing", "listed twice"):
        _refused(capsys, ["check", str(run), "--out", str(tmp_path / "checks"), "--images", "2", "--methods",
                          "gradient", "--quiet"], *words)
        assert not (tmp_path / "checks").exists()
    assert _snapshot(run) == before
    # the report shows what it can: a run it cannot open is refused, a damaged split is a note in its sections
    report = ["report", str(run), "--images", "2", "--methods", "gradient", "--quiet"]
    if case == "missing":
        _refused(capsys, report, *words)
    else:
        assert _run(capsys, report)[0] == 0
        page = (run / "report.html").read_text()
        assert "Test images not available" in page and all(w.replace("'", "&#39;") in page for w in words)
        assert {k: v for k, v in _snapshot(run).items() if k != "report.html"} == before


CHECKPOINT_EDITS = {
    "newer format": (lambda p: p.update(format_version=99), ["newer saliencekit", "format 99"]),
    "missing field": (lambda p: p.pop("class_names"), ["class_names"]),
    "other arguments": (lambda p: p["arch_kwargs"].update(width=999), ["does not take", "width"]),
    "other weights": (lambda p: p.update(state_dict={k + "_old": v for k, v in p["state_dict"].items()}),
                      ["weights do not fit", "missing key"]),
    "other preprocessing": (lambda p: p["preprocessing"].update(normalize="zscore-v0"), ["preprocessing",
                                                                                         "zscore-v0"]),
    "not a checkpoint": ("garbage", ["not a saliencekit checkpoint"]),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_EDITS))
def test_checkpoint_from_another_version_is_refused_by_name(case, run_dir, capsys, tmp_path) -> None:
    run = _copy(run_dir, tmp_path)
    edit, words = CHECKPOINT_EDITS[case]
    if isinstance(edit, str):
        (run / "checkpoint.pt").write_bytes(edit.encode())
    else:
        payload = torch.load(run / "checkpoint.pt", weights_only=False)
        edit(payload)
        torch.save(payload, run / "checkpoint.pt")
    line = _refused(capsys, ["evaluate", str(run), "--quiet"], "checkpoint", *words)
    assert str(run / "checkpoint.pt") in line
    _refused(capsys, ["explain", str(run), str(run), "--out", str(tmp_path / "maps"), "--quiet"], *words)
    assert not (tmp_path / "maps").exists()


def test_images_zero(run_dir, capsys, tmp_path) -> None:
    run = _copy(run_dir, tmp_path)
    _refused(capsys, ["check", str(run), "--out", str(tmp_path / "checks"), "--images", "0"], "--images", "'0'")
    assert not (tmp_path / "checks").exists()
    rc, _, err = _run(capsys, ["report", str(run), "--images", "0", "--quiet"])  # a report without example maps
    assert rc == 0, err
    assert "No images chosen" in (run / "report.html").read_text()


# ------------------------------------------------------------ outputs that cannot be written


def test_read_only_output_folder(run_dir, data, capsys, tmp_path, monkeypatch) -> None:
    run = _copy(run_dir, tmp_path)
    before = _snapshot(run)
    if os.geteuid() != 0:  # a real read-only folder (root may write anywhere)
        run.chmod(0o555)
        try:
            _refused(capsys, ["report", str(run), "--images", "0", "--quiet"], "cannot write", "report.html",
                     "permission denied")
        finally:
            run.chmod(0o755)
        assert _snapshot(run) == before
    real = tempfile.mkstemp

    def read_only(*args, **kwargs):
        if str(kwargs.get("dir", "")).startswith(str(run)):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    _refused(capsys, ["train", str(data), "--out", str(run), *TINY], "cannot write", str(run), "read-only")
    _refused(capsys, ["report", str(run), "--images", "0", "--quiet"], "cannot write", "report.html", "read-only")
    assert _snapshot(run) == before


def test_full_disk_during_train_keeps_the_previous_run(run_dir, data, capsys, tmp_path, monkeypatch) -> None:
    run = _copy(run_dir, tmp_path)
    before = _snapshot(run)
    done = _on_commit(monkeypatch, run, 4, _disk_full)
    _refused(capsys, ["train", str(data), "--out", str(run), *TINY], "cannot write", "disk is full")
    assert len(done) == 3  # three files had been replaced, and were put back
    assert _snapshot(run) == before
    _no_leftovers(run)
    monkeypatch.undo()
    rc, _, err = _run(capsys, ["train", str(data), "--out", str(run), *TINY])
    assert rc == 0, err


def test_full_disk_in_a_new_folder_leaves_nothing(data, capsys, tmp_path, monkeypatch) -> None:
    out = tmp_path / "new" / "run"
    _on_commit(monkeypatch, tmp_path, 2, _disk_full)
    _refused(capsys, ["train", str(data), "--out", str(out), *TINY], "disk is full")
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------ Ctrl-C and SIGTERM


@pytest.mark.parametrize("sig, status, word", [(signal.SIGINT, 130, "interrupted"),
                                               (signal.SIGTERM, 143, "terminated")])
def test_signal_during_train_keeps_the_previous_run(sig, status, word, run_dir, data, capsys, tmp_path,
                                                    monkeypatch) -> None:
    run = _copy(run_dir, tmp_path)
    before = _snapshot(run)
    done = _on_commit(monkeypatch, run, 5, _signal(sig))
    rc, _, err = _run(capsys, ["train", str(data), "--out", str(run), *TINY])
    assert rc == status and word in err and "as they were" in err, err
    assert len(done) == 4
    assert _snapshot(run) == before
    _no_leftovers(run)
    monkeypatch.undo()
    rc, _, err = _run(capsys, ["evaluate", str(run), "--quiet"])
    assert rc == 0, err


def test_signals_during_check_and_report_keep_the_previous_outputs(run_dir, capsys, tmp_path, monkeypatch) -> None:
    run = _copy(run_dir, tmp_path)
    checks = run / "checks"
    check = ["check", str(run), "--out", str(checks), "--images", "2", "--methods", "gradient,gradient_x_input",
             "--checks", "agreement,complexity", "--quiet"]
    report = ["report", str(run), "--images", "2", "--methods", "gradient", "--quiet"]
    assert _run(capsys, check)[0] == 0 and _run(capsys, report)[0] == 0
    before = _snapshot(run)
    assert len([n for n in before if n.startswith("checks/")]) >= 3
    for sig, status in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        _on_commit(monkeypatch, checks, 2, _signal(sig))
        assert _run(capsys, check)[0] == status
        monkeypatch.undo()
        _on_commit(monkeypatch, run, 1, _signal(sig))
        assert _run(capsys, report)[0] == status
        monkeypatch.undo()
        assert _snapshot(run) == before
        _no_leftovers(run)
    assert _run(capsys, check)[0] == 0 and _run(capsys, report)[0] == 0


def test_real_ctrl_c_during_train_in_a_new_folder_leaves_nothing(data, tmp_path) -> None:
    """The real thing: ``saliencekit train`` in its own process gets SIGINT while it trains."""
    out = tmp_path / "runs" / "new"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "saliencekit", "train", str(data), "--out", str(out),
                             "--epochs", "500", "--image-size", "64", "--batch-size", "2", "--threads", "1",
                             "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "split.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (out / "split.json").exists(), proc.communicate(timeout=5) if proc.poll() is not None else "slow"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_errors_doc_states_every_limit() -> None:
    """docs/errors.md lists each limit of saliencekit.limits with its value, and the README links it."""
    root = Path(__file__).parents[1]
    doc = (root / "docs" / "errors.md").read_text()
    for name in ("MAX_IMAGE_PIXELS", "MAX_IMAGE_SIDE", "MIN_IMAGE_SIDE", "MAX_CLASSES", "MIN_IMAGES_PER_CLASS",
                 "MAX_NAME_LENGTH"):
        value = getattr(limits, name)
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"{value:,}" in row or str(value) in row, (name, row)
    readme = (root / "README.md").read_text()
    assert "(docs/errors.md)" in readme and f"{limits.MAX_IMAGE_PIXELS:,}" in readme
