"""Read a participants table (BIDS ``participants.tsv`` or any CSV) into typed columns.

* The id column is ``participant_id`` (BIDS) or ``subject_id``; a ``sub-`` prefix is stripped,
  so ``sub-01`` in the table matches ``sub-01_T1w.nii.gz`` and ``01.nii.gz`` alike.
* An optional ``session`` (or ``session_id``) column makes rows per (subject, session).
* Every other column is typed from its values: all numeric -> ``continuous``, else
  ``categorical`` (or categorical when named in ``categorical``). ``n/a``, ``NA``, ``nan`` and
  empty cells are missing. A column that is mostly numbers with a few words in it is an error
  naming the row: it is almost always a typo or an unmarked missing value.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssltk.store.schema import ColumnSpec, StoreError

MISSING = frozenset({"", "n/a", "N/A", "NA", "na", "nan", "NaN"})
ID_COLUMNS = ("participant_id", "subject_id")
SESSION_COLUMNS = ("session", "session_id")
RESERVED = frozenset({"subject_id", "session"})


def strip_prefix(value: str, prefix: str) -> str:
    """``strip_prefix("sub-01", "sub-") -> "01"``; values without the prefix are unchanged."""
    value = value.strip()
    return value[len(prefix):] if value.startswith(prefix) else value


@dataclass
class Participants:
    """A parsed participants table.

    Attributes:
        path: the file it came from.
        columns: typed metadata columns (the id and session columns excluded).
        rows: ``(subject, session or "")`` -> column -> value (float NaN / "" when missing).
        by_session: whether rows are per (subject, session) rather than per subject.
    """

    path: Path
    columns: dict[str, ColumnSpec]
    rows: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    by_session: bool = False

    def lookup(self, subject: str, session: str) -> dict[str, Any] | None:
        """The row of a subject (and session, when the table has sessions), or None."""
        return self.rows.get((subject, session if self.by_session else ""))

    def unused(self, used: Iterable[tuple[str, str]]) -> list[str]:
        """Rows that matched no file, as ``sub-XX`` / ``sub-XX ses-YY`` labels."""
        seen = {(s, ses if self.by_session else "") for s, ses in used}
        return [f"sub-{s}" + (f" ses-{ses}" if ses else "") for s, ses in self.rows
                if (s, ses) not in seen]


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"cannot read participants file {path}: {exc}") from None
    if path.suffix.lower() == ".tsv":
        delimiter = "\t"
    elif path.suffix.lower() == ".csv":
        delimiter = ","
    else:
        try:
            delimiter = csv.Sniffer().sniff(text.splitlines()[0] if text else "").delimiter
        except csv.Error:
            delimiter = "\t"
    lines = [r for r in csv.reader(text.splitlines(), delimiter=delimiter) if any(r)]
    if not lines:
        raise StoreError(f"participants file {path} is empty; it needs a header row")
    header = [h.strip() for h in lines[0]]
    if len(set(header)) != len(header):
        raise StoreError(f"participants file {path} repeats a column name in its header: "
                         f"{header}")
    return header, lines[1:]


def _as_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _column_kind(path: Path, name: str, cells: list[tuple[int, str, str]],
                 categorical: set[str]) -> str:
    """``continuous`` or ``categorical``; mostly-numeric columns with a word in them raise."""
    present = [(line, pid, v) for line, pid, v in cells if v not in MISSING]
    if name in categorical or not present:
        return "categorical"
    words = [(line, pid, v) for line, pid, v in present if _as_float(v) is None]
    if not words:
        return "continuous"
    if len(words) * 2 <= len(present):
        line, pid, value = words[0]
        raise StoreError(f"{path.name} line {line} ({pid}): column '{name}' is numeric but has "
                         f"{value!r}; fix the value, write n/a if it is missing, or pass "
                         f"--categorical {name}")
    return "categorical"


def read_participants(path: str | Path, categorical: Iterable[str] = ()) -> Participants:
    """Parse ``path`` (``.tsv``, ``.csv`` or sniffed) into typed columns and keyed rows.

    Args:
        path: the participants table.
        categorical: column names to keep categorical even when their values are numbers.

    Raises:
        StoreError: no id column, duplicate rows, empty ids, a stray word in a numeric column.
    """
    path = Path(path)
    header, body = _read_table(path)
    id_col = next((c for c in ID_COLUMNS if c in header), None)
    if id_col is None:
        raise StoreError(f"participants file {path} has no 'participant_id' or 'subject_id' "
                         f"column (columns: {', '.join(header)}); rename its id column")
    ses_col = next((c for c in SESSION_COLUMNS if c in header), None)
    data_cols = [c for c in header if c not in (id_col, ses_col)]
    records: list[tuple[int, tuple[str, str], dict[str, str]]] = []
    for line, cells in enumerate(body, start=2):
        cells = [c.strip() for c in cells] + [""] * (len(header) - len(cells))
        rec = dict(zip(header, cells))
        subject = strip_prefix(rec[id_col], "sub-")
        if not subject:
            raise StoreError(f"{path.name} line {line}: empty {id_col}; fill it or delete the row")
        session = strip_prefix(rec[ses_col], "ses-") if ses_col else ""
        records.append((line, (subject, session), rec))
    kinds = {c: _column_kind(path, c, [(ln, f"sub-{k[0]}", r[c]) for ln, k, r in records],
                             set(categorical)) for c in data_cols}
    names = {c: c.replace("/", "_") if c not in RESERVED else f"{c}_participants"
             for c in data_cols}
    table = Participants(path, {names[c]: ColumnSpec(kinds[c], description=f"from {path.name}")
                                for c in data_cols}, by_session=ses_col is not None)
    first_line: dict[tuple[str, str], int] = {}
    for line, key, rec in records:
        if key in table.rows:
            raise StoreError(f"{path.name} lines {first_line[key]} and {line} both describe "
                             f"sub-{key[0]}" + (f" ses-{key[1]}" if key[1] else "")
                             + "; keep one row")
        first_line[key] = line
        table.rows[key] = {names[c]: _typed(rec[c], kinds[c]) for c in data_cols}
    return table


def _typed(text: str, kind: str) -> Any:
    if text in MISSING:
        return math.nan if kind == "continuous" else ""
    return float(text) if kind == "continuous" else text
