"""``ssltk store info|verify``: describe a volume store, or check it end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ssltk.cli._common import console

app = typer.Typer(help="Inspect and check HDF5 volume stores.", no_args_is_help=True)

Store = Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The .h5 store.")]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _column_summary(col: dict) -> str:
    miss = f", {col['missing']} missing" if col["missing"] else ""
    if col["kind"] == "continuous":
        if not col["count"]:
            return f"all {col['missing']} missing"
        return (f"n={col['count']}{miss}, mean {col['mean']:.4g} ± {col['std']:.3g}, "
                f"range [{col['min']:.4g}, {col['max']:.4g}]")
    if col["kind"] == "id":
        return f"{col['unique']} unique{miss}"
    return ", ".join(f"{k}: {v}" for k, v in col["counts"].items()) + miss


def _encoding(data: dict) -> str:
    enc = data["encoding"] or {}
    text = f"{enc.get('requested', data['dtype'])} -> {data['dtype']}"
    if enc.get("bound") is not None:
        text += f", |error| <= {enc['bound']:.4g} x each volume's range"
    if data.get("max_abs_error") is not None:
        text += f"; largest stored error {data['max_abs_error']:.3g}"
    return text


@app.command("info")
def info(
    store: Store,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Shape, dtype, codec, size, rows, and every column with summary statistics."""
    from ssltk.store.verify import store_info

    data = store_info(store)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    out = console()
    head = Table(title=str(store), show_header=False)
    per = f" ({_size(data['bytes_per_volume'])}/volume)" if data["bytes_per_volume"] else ""
    for key, value in [
        ("rows", f"{data['rows']}" + (f" (+{data['uncommitted']} uncommitted)"
                                      if data["uncommitted"] else "")),
        ("shape", " x ".join(map(str, data["shape"]))), ("dtype", data["dtype"]),
        ("encoding", _encoding(data)),
        ("checksums", "Fletcher-32 per volume" if data["checksums"] else "none (old store)"),
        ("compression", data["compression"]), ("size on disk", _size(data["size_bytes"]) + per),
        ("spacing (mm)", data["spacing"]), ("orientation", data["orientation"]),
        ("preprocessing", json.dumps(data["preprocessing"])),
        ("written by", f"ssltk {data['ssltk_version']} on {data['created']}"),
    ] + ([("being written by", data["writer"])] if data["writer"] else []):
        head.add_row(key, str(value))
    out.print(head)
    cols = Table(title="columns")
    for name in ("column", "kind", "unit", "summary"):
        cols.add_column(name, overflow="fold")
    for name, col in data["columns"].items():
        cols.add_row(name, col["kind"], col["unit"] or "", _column_summary(col))
    out.print(cols)


@app.command("verify")
def verify(
    store: Store,
    rehash: Annotated[bool, typer.Option(
        "--rehash", help="Also re-hash source files still on disk.")] = False,
) -> None:
    """Check committed rows, every volume (readable, finite), duplicates and source hashes."""
    from ssltk.store.verify import verify_store

    result = verify_store(store, rehash=rehash)
    for note in result.notes:
        typer.echo(f"note: {note}")
    for problem in result.problems:
        typer.echo(problem)
    if not result.ok:
        typer.echo(f"{store}: {len(result.problems)} problem(s)", err=True)
        raise typer.Exit(1)
    typer.echo(f"ok {store}: {result.rows} rows verified")


command = app  # registered by ssltk.cli as the `ssltk store` group
