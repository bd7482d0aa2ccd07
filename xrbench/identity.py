"""What names an entry, which table it belongs to, and when two entries may be compared.

Defined once here, read by the results folder layout (:func:`xrbench.leaderboard.schema.
entry_path`), the leaderboards' tables, the figures, ``xrbench compare``, ``xrbench
regress`` and the sweep. Torch-free: entries are plain JSON dicts.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .columns import get_field
from .errors import XRBenchError

#: (dataset, model, explainer, profile, protocol version): one leaderboard table (PROTOCOL 8)
TableKey = tuple[str, str, str, str, Any]
#: (dataset, model, explainer, profile, defense, seed): one entry of a results folder
EntryKey = tuple[str, str, str, str, str, int]

#: the entry fields of a table, in :data:`TableKey` order (the version comes last)
TABLE_FIELDS: tuple[tuple[str, ...], ...] = (
    ("dataset", "name"), ("model", "name"), ("explainer", "name"), ("protocol", "profile"))
TABLE_FIELD_NAMES = ("dataset", "model", "explainer", "profile", "protocol version")
#: fields that must agree for two entries to hold the same examples: the same protocol and
#: the same frozen subset (images and ordered pairs, in the same order)
SAME_EXAMPLES: tuple[tuple[str, ...], ...] = (("protocol", "version"),
                                              ("subset", "manifest_sha256"))


def table_key(entry: Mapping[str, Any]) -> TableKey:
    """(dataset, model, explainer, profile, protocol version) of an entry; names as text,
    the version as the entry has it (None for a reported entry: no xrbench protocol)."""
    return (*(str(get_field(entry, *f)) for f in TABLE_FIELDS),  # type: ignore[return-value]
            get_field(entry, "protocol", "version"))


def table_title(key: TableKey) -> str:
    """``digits / convnet / grad_x_input / profile quick / protocol v2`` (plain text; a
    renderer escapes it); ``... / reported only`` for a table of reported rows only."""
    dataset, model, explainer, profile, version = key
    tail = "reported only" if version is None else f"protocol v{version}"
    return f"{dataset} / {model} / {explainer} / profile {profile} / {tail}"


def entry_key(entry: Mapping[str, Any]) -> EntryKey:
    """(dataset, model, explainer, profile, defense, seed): what makes two entries the same
    entry (of a results folder, of a baseline); an :class:`XRBenchError` when a field is
    missing."""
    try:
        return (entry["dataset"]["name"], entry["model"]["name"], entry["explainer"]["name"],
                entry["protocol"]["profile"], entry["defense"]["name"], int(entry["seed"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise XRBenchError(f"entry lacks {exc}; is it a result entry?") from None


def key_text(key: EntryKey) -> str:
    """``digits/convnet/grad_x_input/smoke/mat-s0``."""
    return f"{'/'.join(key[:4])}/{key[4]}-s{key[5]}"


def entry_name(entry: Mapping[str, Any]) -> str:
    """``"mat-s0 (digits / convnet / grad_x_input / quick)"``: how messages name an entry."""
    return (f"{get_field(entry, 'defense', 'name')}-s{get_field(entry, 'seed')} "
            f"({' / '.join(str(get_field(entry, *f)) for f in TABLE_FIELDS)})")


def first_difference(a: Mapping[str, Any], b: Mapping[str, Any],
                     fields: Sequence[tuple[str, ...]]) -> tuple[str, Any, Any] | None:
    """The first of ``fields`` on which ``a`` and ``b`` differ, as (dotted path, a's value,
    b's value), or None when they agree on all."""
    for path in fields:
        va, vb = get_field(a, *path), get_field(b, *path)
        if va != vb:
            return ".".join(path), va, vb
    return None
