"""Finding lm-eval tasks: the shipped offline tasks, the user's folders, lm-eval's registry; checks.

Tasks are lm-eval task or group names (``hellaswag``, ``arc_easy``, ``mmlu`` …: their datasets come
from the Hugging Face Hub or its local cache) or tasks of YAML folders passed as ``include_path``.
Two offline tasks ship in :data:`LOCAL_TASKS_DIR`: ``bhr_python_mc`` (42 four-choice questions on
Python) and ``bhr_heldout_rolling`` (rolling log-likelihood of 12 held-out passages of the embedded
model's two domains).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from ...core import BHRoutingError, Strategy

LOCAL_TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
LOCAL_TASKS = ("bhr_python_mc", "bhr_heldout_rolling")


class DownstreamError(BHRoutingError, ValueError):
    """Bad input to a downstream evaluation (unknown task, missing folder, …); one line for the user."""


def require_lm_eval():
    """The ``lm_eval`` module, or DownstreamError saying how to install it."""
    try:
        import lm_eval
    except ImportError:
        raise DownstreamError(
            "lm-evaluation-harness is not installed: pip install 'bh-routing[eval]' (lm-eval, accelerate)"
        ) from None
    return lm_eval


def include_paths(include_path=None) -> list[Path]:
    """The shipped task folder followed by the user's folders (each must exist)."""
    extra = [] if include_path is None else (
        [include_path] if isinstance(include_path, (str, Path)) else list(include_path)
    )
    out = [LOCAL_TASKS_DIR]
    for p in extra:
        path = Path(p).expanduser()
        if not path.exists():
            raise DownstreamError(f"include path not found: {p}")
        if not path.is_dir():
            raise DownstreamError(f"include path is not a folder of task YAMLs: {p}")
        out.append(path.resolve())
    return out


@lru_cache(maxsize=4)
def _index(paths: tuple[str, ...], defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths), include_defaults=defaults)


def _known(tm, name: str) -> bool:
    return name in tm.all_tasks or (name.endswith((".yaml", ".yml")) and Path(name).is_file())


def task_manager(tasks: Sequence[str], include_path=None):
    """An lm-eval ``TaskManager`` that knows every name in ``tasks``, or DownstreamError.

    Only the shipped and given folders are indexed when they hold every task (fast); lm-eval's
    ~15 000 built-in tasks are indexed only when a name is not among them.
    """
    require_lm_eval()
    paths = tuple(str(p) for p in include_paths(include_path))
    check_tasks(tasks)
    local = _index(paths, False)
    if all(_known(local, t) for t in tasks):
        return local
    full = _index(paths, True)
    unknown = [t for t in tasks if not _known(full, t)]
    if unknown:
        import difflib

        name = unknown[0]
        close = difflib.get_close_matches(name, full.all_tasks, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise DownstreamError(
            f"unknown lm-eval task {name!r}{hint}; bh-routing's offline tasks: {', '.join(sorted(local.all_tasks))}; "
            f"`lm-eval ls tasks` lists all {len(full.all_tasks)}"
        )
    return full


def leaves(group_subtasks: Mapping[str, list], name: str) -> list[str]:
    """The tasks under group ``name`` (itself when it is a task), depth first."""
    children = group_subtasks.get(name) or []
    if not children:
        return [name]
    return [leaf for c in children for leaf in leaves(group_subtasks, c)]


def plan(tm, tasks: Sequence[str], limit, shard) -> dict:
    """Load every task once (datasets included): output types, sizes, and the documents of a shard."""
    from lm_eval.evaluator_utils import get_sample_size

    out, seen = {}, {}
    for spec in tasks:
        try:
            loaded = tm.load([spec])
        except Exception as exc:  # a dataset that cannot be downloaded, a broken YAML, …
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DownstreamError(f"cannot load lm-eval task {spec!r}: {first}") from None
        found = {}
        for name, task in loaded["tasks"].items():
            if name in seen:
                raise DownstreamError(f"task {name!r} is part of both {seen[name]!r} and {spec!r}")
            seen[name] = spec
            n_docs = len(task.eval_docs)
            n = min(get_sample_size(task, limit) or n_docs, n_docs)
            docs = None
            if shard is not None:
                rank, world = shard
                if n < world:
                    raise DownstreamError(f"task {name!r} has {n} documents, fewer than the {world} shards")
                docs = list(range(rank, n, world))
            found[name] = {"output_type": task.OUTPUT_TYPE, "n_docs": n_docs, "n": n, "docs": docs}
        out[spec] = {"leaves": found, "groups": dict(loaded.get("group_map") or {})}
    return out


# ---------------------------------------------------------------------------- checks (one home)
def check_tasks(tasks) -> None:
    if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise DownstreamError(f"tasks must be a non-empty list of lm-eval task names, got {tasks!r}")
    if len(set(tasks)) != len(tasks):
        raise DownstreamError(f"tasks must not repeat, got {list(tasks)}")


def check_shard(shard) -> tuple[int, int] | None:
    """``(rank, world_size)`` with ``0 <= rank < world_size``, or None."""
    if shard is None:
        return None
    ok = isinstance(shard, (tuple, list)) and len(shard) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
    if not ok or not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise DownstreamError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
    return (int(shard[0]), int(shard[1]))


def check_settings(tasks, *, limit=None, batch_size: int = 1, shard=None, strategies=None) -> None:
    """Every setting of a downstream evaluation that can be checked without lm-eval or a model."""
    if strategies is not None:
        if not isinstance(strategies, Mapping) or not strategies:
            raise DownstreamError("strategies must be a non-empty mapping {name: Strategy}")
        for k, v in strategies.items():
            if not isinstance(k, str) or not isinstance(v, Strategy):
                raise DownstreamError(f"strategies must map names to Strategy objects, got {k!r}: {type(v).__name__}")
    check_tasks(tasks)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0):
        raise DownstreamError(f"limit must be a number > 0 (a count, or a fraction below 1), got {limit!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DownstreamError(f"batch_size must be an int >= 1, got {batch_size!r}")
    check_shard(shard)
