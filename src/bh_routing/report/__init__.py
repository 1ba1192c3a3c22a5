"""Reports from saved results: figures, CSV, JSON and RESULTS.md (never touches a model).

``base`` (formatting, saving figures, the matplotlib backend) is the bottom; ``registry`` holds the
figures and sections; ``figures`` and ``sections`` register the original notebook's, then every
other module of this package is imported in name order (a new figure or section is one new
module; see :mod:`bh_routing.study.pipeline` for the recipe); ``write`` writes them all.
"""

from importlib import import_module
from pkgutil import iter_modules

from . import figures, sections  # noqa: F401  (first: the seed figures and sections keep their order)
from .base import fmt
from .markdown import render
from .registry import FIGURES, SECTIONS
from .write import COMPARATIVE_CSV, REPORT_MD, write_report

for _m in sorted(m.name for m in iter_modules(__path__)):
    import_module(f"{__name__}.{_m}")

__all__ = ["COMPARATIVE_CSV", "FIGURES", "REPORT_MD", "SECTIONS", "fmt", "render", "write_report"]
