"""Property-based fuzzing of the command line (issue 16).

Hypothesis generates datasets (odd class names, images of every mode and size, broken and oversized files) and
command lines whose values lie inside, at and just outside the valid range, and runs every command in-process. Each
run must either succeed (status 0) or exit 2 with one ``error:`` line naming the problem: never a traceback, never
another status, never a partial file or folder left under the output folder, and never a change to its input (the
data folder, the run directory's own files).

The examples are seeded (``derandomize=True``) and few, with tiny images, so that the suite takes well under three
minutes on two cores; ``SALIENCEKIT_FUZZ_EXAMPLES=200`` runs more of them (still derandomised unless
``SALIENCEKIT_FUZZ_SEED`` is set too).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from image_files import _chunk
from saliencekit.cli import main
from test_train import make_blobs

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_MORE = int(os.environ.get("SALIENCEKIT_FUZZ_EXAMPLES", "0"))
_SEED = os.environ.get("SALIENCEKIT_FUZZ_SEED")


def _settings(examples: int) -> settings:
    return settings(max_examples=_MORE or examples, derandomize=_SEED is None, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


# ------------------------------------------------------------ the property


@dataclass
class Outcome:
    status: int
    out: str
    err: str


def _files(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _tree(folder: Path) -> set[str]:
    """Every file and folder under ``folder`` (a partial write shows up as one more)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")} if folder.exists() else set()


def invoke(argv: list[str], inputs: dict[Path, set[str] | None], out: Path) -> Outcome:
    """Run ``saliencekit ARGV`` and check the property.

    Args:
        argv: the command line.
        inputs: folders that must not change (``None``: the whole folder; a set: only those files of it).
        out: the folder holding every output of the command (its own files only change when the command succeeds).
    """
    def watched() -> dict[Path, dict[str, bytes]]:
        return {f: {k: v for k, v in _files(f).items() if names is None or k in names} for f, names in inputs.items()}

    before_inputs, before_out = watched(), (_tree(out), _files(out))
    stdout, stderr = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                status = main(argv)
            except SystemExit as exc:  # argparse's own exits
                status = exc.code if isinstance(exc.code, int) else 2
    finally:
        torch.set_num_threads(threads)
    result = Outcome(int(status or 0), stdout.getvalue(), stderr.getvalue())
    hypothesis.event(f"{argv[0]}: exit {result.status}")
    if os.environ.get("SALIENCEKIT_FUZZ_DEBUG"):  # see what the examples do: pytest -s
        print("FUZZ", result.status, argv, result.err.strip().splitlines()[-1:], file=sys.__stderr__)
    where = f"saliencekit {' '.join(argv)}\nstdout: {result.out[-2000:]}\nstderr: {result.err[-2000:]}"
    assert "Traceback" not in result.err + result.out, where
    assert result.status in (0, 2), where
    lines = [line for line in result.err.splitlines() if line.strip()]
    if result.status == 2:
        errors = [line for line in lines if line.startswith("saliencekit") and ": error: " in line]
        others = [line for line in lines if line not in errors and ": warning: " not in line]
        assert len(errors) == 1 and not others, where
        assert len(errors[0]) > len("saliencekit: error: ") + 10, where
        assert (_tree(out), _files(out)) == before_out, f"partial output left behind\n{where}"
    assert watched() == before_inputs, f"input changed\n{where}"
    stray = [p for p in _tree(out) if ".tmp" in Path(p).name or p.endswith(".previous")]
    assert not stray, f"temporary files left: {stray}\n{where}"
    return result


# ------------------------------------------------------------ datasets


def _png_claiming(path: Path, width: int, height: int) -> None:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 32))
                     + _chunk(b"IEND", b""))


def _write_image(path: Path, kind: str, side: int, seed: int) -> Path:
    """One file of ``kind`` (valid images of every mode, and broken or oversized ones); returns its path."""
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, (side, max(1, side - 1)), dtype=np.uint8)
    if kind == "grey":
        Image.fromarray(grey).save(path := path.with_suffix(".png"))
    elif kind == "rgba":
        Image.fromarray(np.dstack([grey] * 3 + [grey[::-1]]), "RGBA").save(path := path.with_suffix(".png"))
    elif kind == "palette":
        Image.fromarray(grey).convert("P").save(path := path.with_suffix(".png"))
    elif kind == "bilevel":
        Image.fromarray(grey).convert("1").save(path := path.with_suffix(".bmp"))
    elif kind == "16bit":
        Image.fromarray(grey.astype(np.uint16) * 257).save(path := path.with_suffix(".png"))
    elif kind == "jpeg":
        Image.fromarray(np.dstack([grey] * 3)).save(path := path.with_suffix(".jpg"))
    elif kind == "float_tiff":
        import tifffile

        a = grey.astype(np.float32) / 7.0
        if seed % 2:
            a[0, 0] = np.nan
        tifffile.imwrite(path := path.with_suffix(".tif"), a)
    elif kind == "empty":
        (path := path.with_suffix(".png")).write_bytes(b"")
    elif kind == "truncated":
        buf = io.BytesIO()
        Image.fromarray(grey).save(buf, format="PNG")
        (path := path.with_suffix(".png")).write_bytes(buf.getvalue()[: max(8, len(buf.getvalue()) // 2)])
    elif kind == "garbage":
        (path := path.with_suffix(".jpg")).write_bytes(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())
    elif kind == "huge":
        _png_claiming(path := path.with_suffix(".png"), 10_000, 10_000)
    elif kind == "not_an_image":
        (path := path.with_suffix(".txt")).write_text("notes")
    else:  # pragma: no cover
        raise AssertionError(kind)
    return path


IMAGE_KINDS = ["grey", "grey", "grey", "rgba", "palette", "bilevel", "16bit", "jpeg", "float_tiff", "empty",
               "truncated", "garbage", "huge", "not_an_image"]

# folder names: ordinary, unusual (mathtext, unicode, spaces, very long) and ones saliencekit treats specially
_NAME_CHARS = st.characters(codec="utf-8", exclude_characters="/\x00", exclude_categories=("Cs",))
CLASS_NAMES = st.one_of(
    st.sampled_from(["effusion", "normal", "No Finding", "effusion $\\bad$", "$x$", "胸水", "épanchement", "a b",
                     "-rf", "masks", "x" * 120, "0", "NaN", "None", "con", "a\tb"]),
    st.text(_NAME_CHARS, min_size=1, max_size=12),
).filter(lambda n: n not in (".", "..") and not n.startswith(".") and len(n.encode()) <= 200)


SIDES = st.sampled_from([1, 2, 5, 16, 40])


@st.composite
def datasets(draw) -> list[tuple[str, list[tuple[str, int]]]]:
    """Up to three classes of up to six files (kind, side) each: mostly a trainable dataset (two classes of two to
    four good images) with a few odd files added, sometimes a third class or none at all."""
    n_classes = draw(st.sampled_from([2, 3, 1, 0]))
    names = draw(st.lists(CLASS_NAMES, min_size=n_classes, max_size=n_classes, unique_by=str.lower))
    spec = []
    for i, name in enumerate(names):
        good = [("grey", 16)] * draw(st.sampled_from([3, 3, 4, 2] if i < 2 else [0, 1, 3]))
        odd = draw(st.lists(st.tuples(st.sampled_from(IMAGE_KINDS), SIDES), max_size=2 if i else 1))
        spec.append((name, good + odd))
    return spec


def _build(root: Path, spec: list[tuple[str, list[tuple[str, int]]]]) -> Path:
    root.mkdir(parents=True)
    for c, (name, files) in enumerate(spec):
        folder = root / name
        folder.mkdir()
        for i, (kind, side) in enumerate(files):
            _write_image(folder / f"img {i}", kind, side, seed=31 * c + i)
    return root


def _numbers(*values: object) -> st.SearchStrategy[str]:
    return st.sampled_from([str(v) for v in values])


TRAIN_OPTIONS = {
    "--image-size": _numbers(7, 8, 63, 64, 2049, "64.5", "x"),
    "--batch-size": _numbers(0, 1, 4, -3),
    "--lr": _numbers(0, 1e-3, "nan", "inf", "-1", "1e300"),
    "--test-fraction": _numbers(-0.1, 0, 0.2, 0.99, 1, 1.5),
    "--val-fraction": _numbers(0, 0.2, 1),
    "--model": st.sampled_from(["effusion_cnn", "rps_cnn", "resnet19", ""]),
    "--resize": st.sampled_from(["pad", "crop", "stretch", "zoom"]),
    "--normalize": st.sampled_from(["per-image", "unit", "imagenet", "custom"]),
    "--mean": _numbers(0.5, "0.5,0.5", "x", "nan"),
    "--std": _numbers(0.2, 0, -1, "inf"),
    "--bit-depth": _numbers(7, 8, 12, 16, 17),
    "--classes": st.one_of(st.sampled_from(["effusion,normal", "normal", "a,a", ",", "nope,normal"]),
                           st.text(_NAME_CHARS, max_size=10)),
    "--patience": _numbers(0, 1),
    "--seed": _numbers(0, -1, 2**70),
    "--threads": _numbers(0, 1, 2),
    "--device": st.sampled_from(["cpu", "auto", "cuda:9", "tpu", ""]),
}
TRAIN_FLAGS = ["--skip-bad", "--color", "--augment"]


def _options(draw, table: dict[str, st.SearchStrategy[str]], most: int) -> list[str]:
    if not table:
        return []
    chosen = draw(st.lists(st.sampled_from(sorted(table)), max_size=most, unique=True))
    return [word for flag in chosen for word in (flag, draw(table[flag]))]


@st.composite
def option_lists(draw, table: dict[str, st.SearchStrategy[str]], most: int) -> list[str]:
    """Up to ``most`` options of ``table`` with generated values (``[flag, value, flag, value...]``)."""
    return _options(draw, table, most)


@pytest.fixture
def scratch():
    """A fresh folder per example (hypothesis runs many examples in one test call)."""
    folders: list[Path] = []

    def make() -> Path:
        folders.append(Path(tempfile.mkdtemp(prefix="sk-fuzz-")))
        return folders[-1]

    yield make
    for f in folders:
        shutil.rmtree(f, ignore_errors=True)


@_settings(12)
@given(spec=datasets(), options=option_lists(TRAIN_OPTIONS, 2),
       flags=st.lists(st.sampled_from(TRAIN_FLAGS), max_size=1, unique=True))
@example(spec=[("effusion $\\bad$", [("grey", 16)] * 3 + [("rgba", 5), ("huge", 1)]),
               ("胸水 " + "x" * 100, [("palette", 1), ("16bit", 40), ("bilevel", 5), ("jpeg", 2), ("empty", 1)])],
         options=[], flags=["--skip-bad"])
@example(spec=[("normal", [("grey", 16)] * 3), ("$x$", [("grey", 16)] * 3 + [("float_tiff", 5)])],
         options=["--test-fraction", "0.99"], flags=["--skip-bad"])
def test_train_on_generated_datasets(spec, options, flags, scratch) -> None:
    """``train`` on generated datasets, with options near the edges of their range."""
    root = scratch()
    folder = _build(root / "data", spec)
    out = root / "out"
    argv = ["train", str(folder), "--out", str(out / "run"), "--epochs", "1", "--quiet", *flags]
    if "--image-size" not in options:
        argv += ["--image-size", "64"]
    if "--batch-size" not in options:
        argv += ["--batch-size", "8"]
    result = invoke([*argv, *options], {folder: None}, out)
    if result.status == 0:
        assert (out / "run" / "checkpoint.pt").is_file() and (out / "run" / "metrics.json").is_file()


# ------------------------------------------------------------ every command on a trained run


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    data = make_blobs(root / "data", n=6, size=24, classes=("effusion $\\bad$", "normal"))
    assert main(["train", str(data), "--out", str(root / "run"), "--epochs", "1", "--image-size", "64",
                 "--batch-size", "8", "--quiet"]) == 0
    return data, root / "run"


RUN_FILES = {"checkpoint.pt", "config.json", "split.json", "history.json"}  # what the commands only read

PATHS = ["data", "image", "run", "missing", "a_file", "empty_dir", "long_name", "nested_new"]


def _path(kind: str, data: Path, run: Path, tmp: Path) -> str:
    """A path argument of ``kind``: the real thing, or something just wrong."""
    if kind == "data":
        return str(data)
    if kind == "image":
        return str(next((data / "normal").iterdir()))
    if kind == "run":
        return str(run)
    if kind == "missing":
        return str(tmp / "no such thing")
    if kind == "a_file":
        (tmp / "file.txt").write_text("x")
        return str(tmp / "file.txt")
    if kind == "empty_dir":
        (tmp / "empty").mkdir(exist_ok=True)
        return str(tmp / "empty")
    if kind == "long_name":
        return str(tmp / ("n" * 300))
    return str(tmp / "new" / "deeper")


COMMON = {
    "--seed": _numbers(0, -1, 2**70, "x"),
    "--device": st.sampled_from(["cpu", "auto", "cuda:9", "tpu"]),
    "--threads": _numbers(0, 1, "-2"),
}
METHODS = st.one_of(st.sampled_from(["gradient", "gradient,gradient_x_input", "gradcam", "nope", "", ",",
                                     "gradient,gradient"]), st.text(_NAME_CHARS, max_size=8))

COMMANDS = {
    "evaluate": ({"--data": st.sampled_from(PATHS), "--device": COMMON["--device"],
                  "--labels": st.sampled_from(["missing", "a_file"])}, []),
    "explain": ({"--methods": METHODS, "--target": st.sampled_from(["normal", "effusion $\\bad$", "nope", "0", "-1",
                                                                    "normal,normal", ""]),
                 "--top-k": _numbers(0, 1, 2, 3, 21), "--layer": st.sampled_from(["nope", "features", ""]),
                 "--batch-size": _numbers(0, 1), "--threshold": _numbers(-0.1, 0.5, 1.1, "nan"),
                 "--output": st.sampled_from(["auto", "logits", "probabilities", "multilabel", "odd"]),
                 "--normalization": st.sampled_from(["auto", "abs", "nope"]), "--precision": st.sampled_from(
                     ["fp32", "bf16", "fp8"]), "--image-size": _numbers(7, 64, 4096), **COMMON}, ["--list-classes"]),
    "check": ({"--methods": METHODS, "--images": _numbers(-1, 0, 1, 2), "--checks": st.sampled_from(
                   ["complexity", "agreement", "complexity,agreement", "nope", "localization", ""]),
               "--layer": st.sampled_from(["nope", ""]), "--threshold": _numbers(-0.1, 0.5, 2),
               "--shift": _numbers("nan", "inf", -1, 0.5), "--randomization-modes": st.sampled_from(
                   ["cascading", "independent", "sideways"]), "--method-options": st.sampled_from(
                   ["ig=integrated_gradients:steps=2", "ig=integrated_gradients:steps=-1", "oops", "x=nope"]),
               "--data": st.sampled_from(PATHS), **COMMON}, ["--no-figures"]),
    "report": ({"--methods": METHODS, "--images": _numbers(-1, 0, 1, 2), "--checks": st.sampled_from(PATHS),
                "--data": st.sampled_from(PATHS), "--audit": st.sampled_from(["missing", "empty_dir"]),
                "--out": st.sampled_from(["report.html", "sub/dir/r.html", "a_file/r.html", "n" * 300 + ".html"]),
                **COMMON}, []),
    "data synth": ({"--per-class": _numbers(0, 1, 2), "--size": _numbers(63, 64, 2049), "--shortcut": _numbers(
                        -0.1, 0, 0.5, 1.1, "nan"), "--shortcut-class": st.sampled_from(["effusion", "normal", "x"]),
                    "--seed": COMMON["--seed"]}, ["--overwrite"]),
    "data digits": ({"--classes": st.sampled_from(["0,1", "0,0", "10", "a", "", "3"]),
                     "--per-class": _numbers(0, 1, 3)}, ["--overwrite"]),
    "data show": ({"--per-class": _numbers(0, 1, 21), "--image-size": _numbers(7, 64),
                   "--seed": COMMON["--seed"]}, ["--lung", "--augment", "--no-masks"]),
    "models": ({}, []),
}


@_settings(45)
@given(command=st.sampled_from(sorted(COMMANDS)), data=st.data())
def test_every_command_on_a_trained_run(command, data, trained, scratch) -> None:
    """Every command with generated options and paths, on a trained run and its data (copied per example)."""
    tmp = scratch()
    data_dir, run_src = trained
    run = Path(shutil.copytree(run_src, tmp / "run"))
    out = tmp / "out"
    options_table, flags = COMMANDS[command]
    options = _options(data.draw, options_table, 3)
    for i, word in enumerate(options):  # path-valued options name a kind of path
        if i % 2 and options[i - 1] in ("--data", "--checks", "--audit", "--labels"):
            options[i] = _path(word, data_dir, run, tmp)
        if i % 2 and options[i - 1] == "--out":
            options[i] = str(out / word) if not word.startswith("a_file") else _path("a_file", data_dir, run, tmp)
    flags = data.draw(st.lists(st.sampled_from(flags), max_size=1, unique=True)) if flags else []
    inputs: dict[Path, set[str] | None] = {data_dir: None, run: RUN_FILES}
    if command == "evaluate":
        argv = ["evaluate", str(run)]
    elif command == "explain":
        target = data.draw(st.sampled_from(["image", "image", "data", "missing", "a_file", "empty_dir"]))
        argv = ["explain", str(run), _path(target, data_dir, run, tmp), "--out", str(out / "maps")]
        if not any(o == "--methods" for o in options):
            argv += ["--methods", "gradient"]
    elif command == "check":
        argv = ["check", str(run), "--out", str(out / "checks")]
        for flag, default in (("--methods", "gradient"), ("--images", "2"), ("--checks", "complexity")):
            if flag not in options:
                argv += [flag, default]
    elif command == "report":
        argv = ["report", str(run)]
        if "--out" not in options:
            argv += ["--out", str(out / "report.html")]
        for flag, default in (("--methods", "gradient"), ("--images", "1")):
            if flag not in options:
                argv += [flag, default]
    elif command == "data synth":
        target = data.draw(st.sampled_from(["nested_new", "empty_dir", "a_file", "data", "long_name"]))
        where = _path(target, data_dir, run, tmp) if target != "nested_new" else str(out / "synth")
        argv = ["data", "synth", where]
        if "--per-class" not in options:
            argv += ["--per-class", "1"]
        if "--size" not in options:
            argv += ["--size", "64"]
    elif command == "data digits":
        pytest.importorskip("sklearn")
        target = data.draw(st.sampled_from(["nested_new", "empty_dir", "a_file", "data"]))
        argv = ["data", "digits", _path(target, data_dir, run, tmp) if target != "nested_new" else str(out / "d")]
        if "--per-class" not in options:
            argv += ["--per-class", "2"]
    elif command == "data show":
        source = data.draw(st.sampled_from(["data", "data", "empty_dir", "missing", "a_file"]))
        suffix = data.draw(st.sampled_from([".png", ".svg", ".pdf", ".xyz", ""]))
        argv = ["data", "show", _path(source, data_dir, run, tmp), "--out", str(out / f"samples{suffix}")]
    else:
        argv = [command]
    if "--quiet" not in argv and command not in ("models", "data digits", "data show"):
        argv.append("--quiet")
    # the output folder: everything the command may write is under it (explain/check/synth/...), except
    # evaluate's and report's default files in the run directory (checked through RUN_FILES above)
    if command in ("data synth", "data digits") and "empty_dir" in argv[2]:
        inputs[Path(argv[2])] = None if "--overwrite" in flags else set()
    invoke([*argv, *options, *flags], inputs, out)
