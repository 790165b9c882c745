"""`cka`: centered kernel alignment between two runs' representations of the same inputs."""

from __future__ import annotations

from typing import Annotated

import typer

from kdcli.cli import options as o
from kdcli.cli.main import app
from kdcli.errors import ConfigError

Layers = "Layer by module name (kdcli cka --list-layers RUN), or NAME:in for a module's input; " \
         "repeatable or comma-separated. Default: the penultimate representation."


@app.command("cka")
def cka_cmd(
    run_dirs: Annotated[list[str] | None, typer.Argument(
        metavar="RUN_A RUN_B", help="Two completed run dirs trained on the same dataset "
                                    "(one with --list-layers).", show_default=False)] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Parquet file to write.")] = None,
    list_layers: Annotated[bool, typer.Option(
        "--list-layers", help="Print the layer names and feature sizes of one RUN and exit.")] = False,
    split: Annotated[str, typer.Option(help="Split of the runs' dataset: test or train.")] = "test",
    max_samples: Annotated[int | None, typer.Option(
        help="Use a seeded random subset of this many samples (default: the whole split).")] = None,
    layers_a: Annotated[list[str] | None, typer.Option("--layers-a", help=f"RUN_A: {Layers}")] = None,
    layers_b: Annotated[list[str] | None, typer.Option("--layers-b", help=f"RUN_B: {Layers}")] = None,
    estimator: Annotated[list[str] | None, typer.Option(
        "--estimator", "-e", help="linear, rbf, debiased (unbiased HSIC) or minibatch (streams; "
                                  "constant memory); repeatable or comma-separated. "
                                  "Default: linear and debiased.", show_default=False)] = None,
    rbf_sigma: Annotated[float, typer.Option(
        help="RBF bandwidth as a multiple of the median pairwise distance.")] = 1.0,
    batch_size: Annotated[int, typer.Option(
        help="Inference batch size, and the minibatch estimator's batch.")] = 256,
    bootstrap: Annotated[int, typer.Option(
        help="Resamples for a 95% basic bootstrap CI (over samples; over batches for "
             "minibatch). 0: none.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the sample order and of the bootstrap.")] = 0,
    data_dir: o.DataDir = None,
    device: o.Device = "auto",
    threads: o.Threads = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
    quiet: o.Quiet = False,
) -> None:
    """Centered kernel alignment of two models' features on the same inputs, per layer pair."""
    run_dirs = run_dirs or []
    if list_layers:
        if len(run_dirs) != 1:
            raise ConfigError(f"--list-layers: expected one RUN, got {len(run_dirs)}")
        _print_layers(run_dirs[0], device)
        return
    if len(run_dirs) != 2:
        raise ConfigError(f"RUN_A RUN_B: expected two run directories, got {len(run_dirs)} "
                          "(or one with --list-layers)")
    if out is None:
        raise ConfigError("--out: required, the Parquet file to write (e.g. --out cka.parquet)")

    from kdcli.cli.display import ProgressBar, console, err_console
    from kdcli.stages import cka

    estimators = cka.parse_names(estimator) or ("linear", "debiased")
    cfg = cka.CKAConfig(run_a=run_dirs[0], run_b=run_dirs[1], out=out, split=split,
                        max_samples=max_samples, layers_a=cka.parse_names(layers_a),
                        layers_b=cka.parse_names(layers_b), estimators=estimators,
                        rbf_sigma=rbf_sigma, batch_size=batch_size, bootstrap=bootstrap, seed=seed,
                        data_dir=data_dir, device=device, threads=threads, overwrite=overwrite)
    with ProgressBar(f"cka {out}", quiet) as bar:
        result = cka.run(cfg, callbacks=bar)
    if result.skipped:
        err_console.print(f"{out}: already holds this CKA, skipped (--overwrite to redo)")
    if quiet:
        return
    meta = result.metadata
    console.print(f"RUN_A {meta['run_a']['dir']} ({meta['run_a']['model_name']}) vs RUN_B "
                  f"{meta['run_b']['dir']} ({meta['run_b']['model_name']}), {meta['split']} split",
                  highlight=False, soft_wrap=True)
    for table in _tables(result):
        console.print(table)
    if not result.skipped:
        console.print(f"wrote {result.path}")


def _cell(row: dict, ci: bool) -> str:
    text = f"{row['value']:.4f}"
    if ci and row["ci_low"] is not None:
        text += f"\n[{row['ci_low']:.4f}, {row['ci_high']:.4f}]"
    return text


def _tables(result):
    """One table of estimators for a single layer pair; else one matrix per estimator."""
    from rich.table import Table

    rows = result.rows
    if len(result.layers_a) == 1 and len(result.layers_b) == 1:
        table = Table(title=f"CKA, {result.layers_a[0]} vs {result.layers_b[0]}", header_style="bold")
        for name in ("estimator", "CKA", "95% CI", "n", "d_a", "d_b"):
            table.add_column(name, justify="left" if name == "estimator" else "right")
        for r in rows:
            ci = "—" if r["ci_low"] is None else f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]"
            table.add_row(r["estimator"], f"{r['value']:.4f}", ci, str(r["n"]), str(r["d_a"]), str(r["d_b"]))
        return [table]
    tables = []
    for est in dict.fromkeys(r["estimator"] for r in rows):
        cells = {(r["layer_a"], r["layer_b"]): r for r in rows if r["estimator"] == est}
        some = next(iter(cells.values()))
        table = Table(title=f"{est} CKA (n = {some['n']}): rows RUN_A, columns RUN_B",
                      header_style="bold", show_lines=result.metadata.get("bootstrap", 0) > 0)
        table.add_column("RUN_A \\ RUN_B")
        for lb in result.layers_b:
            table.add_column(lb, justify="right")
        for la in result.layers_a:
            table.add_row(la, *(_cell(cells[la, lb], ci=True) for lb in result.layers_b))
        tables.append(table)
    return tables


def _print_layers(run_dir: str, device: str) -> None:
    from rich.table import Table

    from kdcli.cli.display import console
    from kdcli.stages import cka

    run, layers = cka.list_layers(run_dir, "cpu" if device == "auto" else device)
    table = Table(title=f"layers of {run['model']['name']} ({run['dir']})", header_style="bold")
    for name, justify in (("layer", "left"), ("module", "left"), ("shape", "right"),
                          ("features", "right"), ("", "left")):
        table.add_column(name, justify=justify)
    for layer in layers:
        note = "default (penultimate)" if layer.default else ""
        if layer.calls != 1:
            note = "not selectable: " + ("does not run" if layer.calls == 0 else f"runs {layer.calls}× per pass")
        shape = "—" if layer.shape is None else "×".join(map(str, layer.shape))
        table.add_row(layer.name, layer.module, shape, "—" if layer.size is None else str(layer.size), note)
    console.print(table)
