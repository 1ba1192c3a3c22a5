"""The downstream result document, assembled in one place (a run, or merged shards of a run)."""

from __future__ import annotations

from .pairing import add_paired

#: The settings a document carries, in this order, before ``shard``, ``tasks`` and ``groups``.
SETTINGS = (
    "lm_eval_version", "backend", "tasks_requested", "include_path", "limit", "batch_size", "seed", "bootstrap_iters",
)
#: What follows ``shard``: the model's k and the strategies.
STRATEGY_KEYS = ("model_top_k", "strategies", "baseline")


def assemble(settings: dict, *, shard, tasks: dict, groups: dict, merged_from: int | None = None) -> dict:
    """The JSON-able document: settings, shard, strategies, ``tasks`` and ``groups`` with paired tests.

    ``settings`` holds :data:`SETTINGS` and :data:`STRATEGY_KEYS`; ``shard`` is
    ``{"rank", "world_size"}`` or None; ``merged_from`` the number of merged shards.
    """
    doc = {k: settings[k] for k in SETTINGS}
    doc["shard"] = shard
    doc.update({k: settings[k] for k in STRATEGY_KEYS})
    if merged_from is not None:
        doc["merged_from"] = merged_from
    doc["tasks"], doc["groups"] = tasks, groups
    add_paired(doc, doc["seed"])
    return doc
