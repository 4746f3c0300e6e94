"""The trust report: one self-contained HTML page that answers "should I believe this model, and
which saliency maps can I trust for it?".

The page is built from a run directory (``saliencekit train``), the checks' results (``saliencekit check``,
``checks.json``, read by :func:`saliencekit.trust.results.load_checks`) and explanations computed here for a few
test images. Every image is an embedded PNG (``data:`` URI), the styles are inline, there is no JavaScript and no
external URL: the file opens offline, from anywhere. Inputs that are missing leave a note ("not computed: run
...") in their section instead of an error.

How it is made: each section is a gather function (:mod:`saliencekit.viz.report.sections`) that collects plain data,
and a Jinja2 template (``templates/sections/<id>.html.j2``, autoescaped) that shows it; each trust check's
subsection is its plug-in's gather function and partial (:mod:`saliencekit.trust.checks`). Figures reuse
:mod:`saliencekit.viz.overlay` and :mod:`saliencekit.viz.samples`.

Sections (each a ``<section>`` with a stable ``id``): ``verdict`` (per-method verdict table and the
recommended methods; preceded by the ``shortcut-warning`` box when the checks found a method's maps
concentrated on a planted shortcut), ``data``, ``training``, ``performance``, ``explanations``, ``trust``
and ``reproducibility``.

>>> from saliencekit.viz.report import build_report
>>> build_report("runs/cxr", "runs/cxr/report.html")  # doctest: +SKIP
PosixPath('runs/cxr/report.html')
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saliencekit.errors import DataError
from saliencekit.viz.report.sections import SECTION_IDS, SECTIONS, ReportContext, gather_warning, select_images
from saliencekit.viz.report.settings import ReportSettings

if TYPE_CHECKING:
    from saliencekit.trust.results import CheckResults


def _resolve_checks(run_dir: Path | None, checks: str | Path | None
                    ) -> tuple[CheckResults | None, Path | None, str | None]:
    """(checks, path, problem): an explicit path must exist; the default location (``RUN/checks``) may be absent."""
    from saliencekit.trust.results import load_checks

    if checks is None:
        if run_dir is None:
            return None, None, None
        path = run_dir / "checks" / "checks.json"
        if not path.is_file():
            return None, None, None
    else:
        path = Path(checks)
        path = path / "checks.json" if path.is_dir() else path
        if not path.is_file():
            raise DataError(f"checks file not found: {path} (give the folder or file written by `saliencekit check`)")
    try:
        return load_checks(path), path, None
    except DataError as exc:
        return None, path, str(exc)


def is_checks_path(path: str | Path) -> bool:
    """Whether ``path`` is a ``checks.json`` or a folder holding one (and not a run directory)."""
    from saliencekit.run import is_run_dir

    path = Path(path)
    if path.is_file():
        return path.suffix == ".json"
    return path.is_dir() and (path / "checks.json").is_file() and not is_run_dir(path)


def _audit_link(run: Any, audit: str | Path | None, out_html: Path) -> dict[str, Any] | None:
    """The audit page of this model (its path relative to the report, and its number of flagged clusters)."""
    import json
    import os

    from saliencekit.audit.page import find_audit_page

    page = find_audit_page(run, None if audit is None else [audit])
    if page is None:
        return None
    try:
        spray = json.loads((page.parent / "spray.json").read_text())
        flagged = sum(c["flagged"] for m in spray["methods"].values() for g in m["groups"].values()
                      for c in g["clusters"])
    except (OSError, ValueError, KeyError, TypeError):
        flagged = None
    href = Path(os.path.relpath(page.resolve(), out_html.resolve().parent)).as_posix()
    return {"href": href, "flagged": flagged}


def build_report(
    run_dir: str | Path | None = None,
    out_html: str | Path | None = None,
    checks: str | Path | None = None,
    settings: ReportSettings | None = None,
    *,
    data: str | Path | None = None,
    model_file: str | Path | None = None,
    audit: str | Path | None = None,
    progress: bool = True,
    command: str | None = None,
    **options: Any,
) -> Path:
    """Write the trust report of a run, or of checks made from a model file, as one self-contained HTML file.

    Args:
        run_dir: the run directory written by ``saliencekit train``; None (or a checks folder / ``checks.json``)
            for the report of ``checks`` alone: of its run directory when it was made from one, else of the model
            file and data folder it records (``saliencekit check --model-file``), whose training and test
            performance sections then say they are not available for a model file.
        out_html: where to write the report (default ``RUN/report.html``, or ``report.html`` beside the checks for
            a model file); written atomically.
        checks: ``checks.json`` or the folder holding it (default ``RUN/checks/checks.json``; when that is
            absent the verdict and trust sections say how to compute it).
        settings: what to explain and how (:class:`~saliencekit.viz.report.settings.ReportSettings`).
        data: the data folder, when it moved since training (or since the checks of a model file).
        model_file: the model file, when it moved since the checks (a model file's checks).
        audit: a ``saliencekit audit`` folder to link to (default: ``RUN/audit`` or an ``audit`` folder beside the
            run); linked only when its store was made with this model's weights.
        progress: show a progress bar.
        command: the command line shown in the reproducibility section (default: the Python call).
        **options: fields of :class:`~saliencekit.viz.report.settings.ReportSettings` that replace those of
            ``settings`` (``methods=``, ``images=``, ``device=``, ``seed=``, ``labels_per_image=``).

    Returns:
        The path of the written report.

    Raises:
        TypeError: an option that is not a field of the settings.
        RunDirError: ``run_dir`` is not a run directory (nor a checks folder).
        DataError: ``checks`` was given but does not exist or cannot be read.
        InputError: neither a run directory nor checks.

    >>> build_report(checks="checks_resnet")  # a model file's checks  # doctest: +SKIP
    PosixPath('checks_resnet/report.html')
    """
    from tqdm.auto import tqdm

    from saliencekit import __version__, _atomic
    from saliencekit._options import with_options
    from saliencekit.errors import InputError
    from saliencekit.run import load_run
    from saliencekit.viz.report._render import environment, num, render

    settings = with_options(ReportSettings, settings, options, "build_report")
    if run_dir is not None and checks is None and is_checks_path(run_dir):
        run_dir, checks = None, run_dir  # `saliencekit report CHECKS`
    if run_dir is None and checks is None:
        raise InputError("give a run directory, or the checks (a folder or checks.json written by `saliencekit "
                         "check`) to report on")
    results, checks_path, problem = _resolve_checks(None if run_dir is None else Path(run_dir), checks)
    if run_dir is None and results is None:
        raise DataError(problem or f"cannot read {checks}")
    if run_dir is None and results is not None and results.run_dir:
        run_dir = results.run_dir  # checks of a run directory: the report of that run
    run = subject = subject_problem = None
    from saliencekit.device import resolve_device

    device = str(resolve_device(settings.device))  # an unknown or absent device: one InputError naming it
    if run_dir is not None:
        run_dir = Path(run_dir)
        run = load_run(run_dir, device=device, data=data)  # raises RunDirError
        default_out = run_dir / "report.html"
    else:
        assert results is not None and checks_path is not None
        subject, subject_problem = _reopen_model_data(results, device, data, model_file)
        default_out = checks_path.parent / "report.html"
    out_html = Path(out_html) if out_html is not None else default_out
    if command is None:
        args = [repr(str(run_dir)), repr(str(out_html))] if run_dir is not None else [f"out_html={str(out_html)!r}"]
        args += [f"{k}={v!r}" for k, v in (("checks", checks and str(checks)), ("methods", settings.methods)) if v]
        command = f"saliencekit.viz.report.build_report({', '.join([*args, f'images={settings.images}'])})"
    ctx = ReportContext(run_dir=run_dir, run=run, checks=results, checks_path=checks_path, checks_problem=problem,
                        settings=settings, command=command, progress=progress, subject=subject,
                        subject_problem=subject_problem)
    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    env = environment()
    sections = []
    steps = tqdm(total=len(SECTIONS), desc="report", disable=not progress)
    try:
        for sid, sec in SECTIONS.items():  # in page order; reproducibility last: it lists the methods' parameters
            steps.set_postfix_str(sid)
            # a template module renders at once; the page inserts its (autoescaped) output
            sections.append({"id": sid, "title": sec.title,
                             "body": env.get_template(sec.template).make_module({"data": sec.gather(ctx)})})
            steps.update()
    finally:
        steps.close()
    if run is not None:
        m = run.metrics or {}
        if not m:
            performance = "no test metrics"
        elif m.get("multilabel"):
            performance = f"mean ROC AUC {num(m.get('roc_auc'))} over the labels on {m.get('n')} test images"
        else:
            performance = (f"test accuracy {num(m.get('accuracy'))}, ROC AUC {num(m.get('roc_auc'))} on "
                           f"{m.get('n')} images")
        head = {"title": f"Trust report: {run.info.arch} on {run.data_root.name}", "arch": run.info.arch,
                "classes": list(run.class_names), "multilabel": run.multilabel, "performance": performance,
                "source_kind": "Run", "source": str(run_dir), "audit": _audit_link(run, audit, out_html)}
    else:
        assert results is not None
        block = results.model or {}
        name = block.get("arch") or Path(str(block.get("file") or "model")).name
        where = Path(str(block["data"])).name if block.get("data") else "images given in Python"
        kind = (results.settings.get("output") or {}).get("kind")
        head = {"title": f"Trust report: {name} on {where}", "arch": name,
                "classes": list(block.get("class_names") or []), "multilabel": kind == "multilabel",
                "performance": "no test split (a model file)", "source_kind": "Model file",
                "source": str(block.get("file") or "a model given in Python"),
                "audit": _audit_link(subject, audit, out_html) if subject is not None else None}
    page = render("page.html.j2", created=created, version=__version__, warning=gather_warning(ctx),
                  sections=sections, **head)
    _atomic.write_text(out_html, page)
    return out_html


def _reopen_model_data(results: CheckResults, device: str, data: str | Path | None,
                       model_file: str | Path | None) -> tuple[Any, str | None]:
    """The model file and data folder a model file's checks record, reopened (or None and why not)."""
    from saliencekit.errors import SaliencekitError
    from saliencekit.model_data import ModelData

    if not results.model:
        return None, None
    try:
        return ModelData.from_json(results.model, device=device, data=data, model_file=model_file), None
    except (SaliencekitError, OSError, KeyError) as exc:
        return None, (f"{exc} (give the data folder with --data and the model file with --model-file when they "
                      "moved)")


__all__ = ["SECTION_IDS", "ReportSettings", "build_report", "is_checks_path", "select_images"]
