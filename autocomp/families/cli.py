"""``autocomp space``: derive the search space of the user's network and write it out for editing."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="Derive the search space of your own network (family network) as YAML.")
console = Console()


@app.callback(invoke_without_command=True)
def space(
    ctx: typer.Context,
    model: str = typer.Option(..., help="Your network: 'torchvision:NAME' (with --weights) or 'package.module:factory'."),
    weights: Optional[str] = typer.Option(None, help="Its trained weights: a state_dict (loaded with torch.load(weights_only=True))."),
    input: str = typer.Option("3x224x224", "--input", help="Input size CxHxW."),
    write: Optional[Path] = typer.Option(None, help="Write the space YAML here (an existing file is never overwritten)."),
    name: Optional[str] = typer.Option(None, help="Space name (default: <model>-<input>)."),
    keep: str = typer.Option("1.0,0.75,0.5", help="Channel keep ratios, comma-separated."),
    rank: str = typer.Option("1.0,0.5", help="Low-rank ratios, comma-separated."),
    precision: str = typer.Option("fp32,fp16,int8", help="Precisions, comma-separated."),
) -> None:
    """Derive the search space of a network: blocks that can be skipped, per-block channel keep
    ratios (Torch-Pruning groups, multiples of 8), low-rank ratios and precisions."""
    if ctx.invoked_subcommand is not None:
        return
    from autocomp.errors import UserError
    from autocomp.families.network import derive_space, parse_input, space_yaml

    if write is not None and write.exists():
        raise UserError("--write", f"{write} already exists", "a new file name (autocomp never overwrites a file)")

    def floats(text: str, field: str) -> tuple[float, ...]:
        try:
            return tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise UserError(field, f"cannot read {text!r}", "comma-separated numbers in (0, 1], e.g. 1.0,0.5") from None

    shape = parse_input(input)
    sp = derive_space(model, weights, shape, name, floats(keep, "--keep"), floats(rank, "--rank"),
                      tuple(p.strip() for p in precision.split(",") if p.strip()))
    text = space_yaml(sp)
    if write is None:
        typer.echo(text)
        return
    write.parent.mkdir(parents=True, exist_ok=True)
    write.write_text(text)
    n_blocks = sum(max(s.depth) for s in sp.stages)
    console.print(f"wrote {write}: {sp.name}, {n_blocks} blocks in {len(sp.stages)} stages, "
                  f"{sum(1 for s in sp.stages if len(s.depth) > 1)} stages with skippable blocks")
