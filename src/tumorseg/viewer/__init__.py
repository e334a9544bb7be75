"""Look at segmentations: a local web viewer (``tumorseg view``) and static reports.

See :func:`make_server` for the server (the page draws the volumes with the vendored NiiVue),
:class:`CaseIndex` for its case list, :func:`build_report` for ``tumorseg report``.
"""

from __future__ import annotations

from tumorseg.viewer.caselist import CaseIndex
from tumorseg.viewer.jobs import Job, JobManager, PredictorFactory, SupportsPredict
from tumorseg.viewer.report import build_report
from tumorseg.viewer.server import ViewerServer, make_server
from tumorseg.viewer.store import CLASS_COLOURS, CaseEntry, ResultsStore, render_slice
from tumorseg.viewer.uploads import UploadError

__all__ = [
    "CLASS_COLOURS",
    "CaseEntry",
    "CaseIndex",
    "Job",
    "JobManager",
    "PredictorFactory",
    "ResultsStore",
    "SupportsPredict",
    "UploadError",
    "ViewerServer",
    "build_report",
    "make_server",
    "render_slice",
]
