"""The `bh-routing` command: thin typed commands over the public API."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def _root() -> None:
    """Variable-k MoE routing with the Benjamini-Hochberg procedure, measured."""


@app.command()
def demo(
    alpha: float = typer.Option(0.05, help="FDR level"),
    tokens: int = typer.Option(10000, help="synthetic tokens"),
    seed: int = typer.Option(0),
) -> None:
    """BH routing on synthetic router logits (64 experts, a few strong ones per token)."""
    import torch

    from . import BH, TopK

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(tokens, 64, generator=g)
    strong = torch.randint(0, 9, (tokens,), generator=g)  # 0..8 clearly preferred experts per token
    z += 4.0 * (torch.arange(64) < strong[:, None])
    for strategy in (TopK(8), BH(alpha)):
        r = strategy.route(z, model_top_k=8)
        c = r.counts.float()
        typer.echo(f"{strategy!r}: mean experts/token {c.mean():.3f} (sd {c.std():.3f})")


def main() -> None:
    app()
