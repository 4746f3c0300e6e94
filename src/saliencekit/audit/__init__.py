"""Whole-dataset audits: every image explained into a resumable zarr store, on one machine or a Ray cluster.

>>> from saliencekit.audit import run_audit, open_store
>>> run_audit("runs/cxr", "data/cxr", "audit", methods=["gradcam", "smoothgrad"])  # doctest: +SKIP
>>> store = open_store("audit")  # doctest: +SKIP
>>> store.maps["gradcam"][1000:1100]  # doctest: +SKIP
"""

from saliencekit.audit._job import AuditJob, normalize_methods
from saliencekit.audit.runner import AuditResult, make_job, run_audit
from saliencekit.audit.store import AuditStore, MapArray, open_store, store_path

__all__ = ["AuditJob", "AuditResult", "AuditStore", "MapArray", "make_job", "normalize_methods", "open_store",
           "run_audit", "store_path"]
