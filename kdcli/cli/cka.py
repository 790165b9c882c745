"""`cka`: centered kernel alignment between two runs' representations of the same inputs."""

from __future__ import annotations

import inspect
from typing import Annotated

import typer

from kdcli.cli import build
from kdcli.cli import options as o
from kdcli.cli.main import app
from kdcli.errors import ConfigError


def _cka(run_dirs: list[str] | None, list_layers: bool, quiet: bool, **values) -> None:
    """Centered kernel alignment of two models' features on the same inputs, per layer pair."""
    run_dirs = run_dirs or []
    if list_layers:
        if len(run_dirs) != 1:
            raise ConfigError(f"--list-layers: expected one RUN, got {len(run_dirs)}")
        _print_layers(run_dirs[0], values["device"], values["data_dir"])
        return
    if len(run_dirs) != 2:
        raise ConfigError(f"RUN_A RUN_B: expected two run directories, got {len(run_dirs)} "
                          "(or one with --list-layers)")

    from kdcli.cli.display import ProgressBar, console, err_console
    from kdcli.config import CKAConfig
    from kdcli.stages import cka

    cfg = CKAConfig(run_a=run_dirs[0], run_b=run_dirs[1], **build.config_values(CKAConfig, values))
    with ProgressBar(f"cka {cfg.out}", quiet) as bar:
        result = cka.run(cfg, progress=bar)
    if result.skipped:
        err_console.print(f"{cfg.out}: already holds this CKA, skipped (--overwrite to redo)")
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


def _register() -> None:
    from kdcli.config import CKAConfig

    run_dirs = inspect.Parameter("run_dirs", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        list[str] | None, typer.Argument(metavar="RUN_A RUN_B", show_default=False,
                                         help="Two completed run dirs trained on the same dataset "
                                              "(one with --list-layers).")])
    list_layers = inspect.Parameter("list_layers", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--list-layers", help="Print the layer names and feature sizes of one RUN and exit.")])
    build.register(app, "cka", _cka, [run_dirs, list_layers, *build.option_parameters(CKAConfig), o.QUIET],
                   "Centered kernel alignment of two models' features on the same inputs, per layer pair.")


_register()


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


def _print_layers(run_dir: str, device: str, data_dir: str | None) -> None:
    from rich.table import Table

    from kdcli.cli.display import console
    from kdcli.stages import cka

    run, layers = cka.layers(run_dir, "cpu" if device == "auto" else device, data_dir)
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
