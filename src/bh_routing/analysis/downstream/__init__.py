"""Downstream evaluation through EleutherAI's lm-evaluation-harness (``lm_eval``), per strategy.

One concept per module:

- :mod:`.tasks`: finding tasks (the shipped offline tasks, the user's folders, lm-eval's registry)
  and the checks of the settings;
- :mod:`.harness`: one lm-eval run of a task with the model patched with one strategy (metrics,
  mean experts per token counted by the Recorder, per-document results);
- :mod:`.pairing`: every strategy against the top-k baseline document by document (exact McNemar
  for correctness, paired t/Wilcoxon for rolling log-likelihood);
- :mod:`.document`: the result document, assembled in one place;
- :mod:`.evaluation`: :func:`evaluate_downstream`; :mod:`.merge`: :func:`merge_downstream` (shards).

The pipeline step ``downstream`` (:mod:`bh_routing.analysis.steps.downstream`) runs it inside a
:class:`~bh_routing.study.Study`; ``bh-routing lm-eval`` is that step.
"""

from ..stats import mcnemar_exact
from .evaluation import evaluate_downstream
from .merge import merge_downstream
from .tasks import LOCAL_TASKS, LOCAL_TASKS_DIR, DownstreamError, include_paths, task_manager

__all__ = [
    "DownstreamError",
    "LOCAL_TASKS",
    "LOCAL_TASKS_DIR",
    "evaluate_downstream",
    "include_paths",
    "mcnemar_exact",
    "merge_downstream",
    "task_manager",
]
