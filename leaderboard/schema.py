"""Result entries as validated data: the JSON Schema, reading, writing and file layout.

An *entry* is one result record (defense x dataset x model x explainer x profile x seed),
PROTOCOL.md section 8; its format is ``schema.json`` beside this file (JSON Schema draft
2020-12, ``schema_version`` 3; entries of versions 1 and 2, written before, still read). Every
entry is validated before it is written and after it is read, so a leaderboard never renders
a string where a number belongs.

Version 3 adds ``reported``, required: ``null`` for a *measured* entry (made by ``xrbench
evaluate``), or an object for a *reported* entry, numbers copied from a paper's table
(``source``, ``table``, ``method`` as printed, ``label``, ``xrbench_defense``, ``note``; each
metric keeps the text ``as_printed``; no checkpoint, subset, run or environment; protocol
version null). Entries of versions 1 and 2 have no ``reported`` field and are measured
entries. The reported entries shipped with xrbench live in ``reported/`` beside this file
(:func:`reported_dir`).

Version 2 added: ``not_applicable`` (the stages that did not run for this model and explainer,
each with the reason; their metrics are absent), ``defense.reference`` (the recipe is the
reference recipe of the dataset and model) with ``recipe_diff`` or ``reference_note`` when it
is not, the ``source`` and ``distribution`` (name, version) of the defense, model and
explainer, and ``metrics.manipulation_loss.second_half_fall`` (the number behind the
``not_converged`` flag).

Beyond the schema, :func:`validate_entry` checks what JSON Schema cannot say:

- no NaN or infinity anywhere (Python's ``json`` writes them, but they are not JSON); a value
  that could not be computed is ``null``;
- every interval has ``lo <= hi``;
- the landscape's ``explanation`` and ``cross_entropy`` curves have one value per gamma;
- ``date`` is a real ISO 8601 time with a UTC offset;
- a reported metric's ``value`` is its ``as_printed`` text in the entry's units (Expl printed
  in units of 1e-7, :data:`REPORTED_SCALE`).

Layout of a results folder (:func:`entry_path`)::

    DIR/<dataset>/<model>/<explainer>/<profile>/<defense>-s<seed>.json
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import re
from datetime import datetime
from importlib import resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from xrbench.errors import XRBenchError
from xrbench.utils import atomic_write_bytes, read_json, sha256_bytes, write_json

SCHEMA_VERSION = 3  # 2: not_applicable, defense.reference, component distributions,
#                      second_half_fall; 3: reported (null = measured)

#: printed unit of a reported metric, in the entry's units (the SEP paper prints L_e x1e7)
REPORTED_SCALE: dict[str, float] = {"expl_start": 1e-7, "expl_end": 1e-7}

_MAX_MESSAGE = 240  # characters of an error message (an instance repr can be huge)


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    text = resources.files("xrbench.leaderboard").joinpath("schema.json").read_text("utf-8")
    return json.loads(text)


@functools.lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    schema = _schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def load_schema() -> dict[str, Any]:
    """The entry schema (a fresh copy of ``schema.json``, JSON Schema draft 2020-12)."""
    return copy.deepcopy(_schema())


def _path_str(path: Any) -> str:
    out = "entry"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _walk(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, path + (k,))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, path + (i,))


def _semantic_error(entry: dict[str, Any]) -> str | None:
    """The first problem JSON Schema cannot express, as ``"<path>: <what>"``, or None."""
    for path, value in _walk(entry):
        if isinstance(value, float) and not math.isfinite(value):
            return (f"{_path_str(path)}: {value!r} is not a JSON number; write null for a "
                    "value that could not be computed")
    for path, value in _walk(entry.get("metrics", {}), ("metrics",)):
        if (path and path[-1] == "ci" and isinstance(value, list) and len(value) == 2
                and all(isinstance(v, (int, float)) for v in value) and value[0] > value[1]):
            return f"{_path_str(path)}: interval {value!r} has lo > hi"
    land = entry.get("metrics", {}).get("landscape")
    if isinstance(land, dict):
        n = len(land.get("gammas", []))
        for key in ("explanation", "cross_entropy"):
            if len(land.get(key, [])) != n:
                return (f"{_path_str(('metrics', 'landscape', key))}: has "
                        f"{len(land.get(key, []))} values for {n} gammas")
    if is_reported(entry):
        return _reported_value_error(entry)
    date = entry.get("date")
    try:
        datetime.fromisoformat(date.replace("Z", "+00:00"))
    except ValueError:
        return f"entry.date: {date!r} is not a valid ISO 8601 date-time"
    return None


def _reported_value_error(entry: dict[str, Any]) -> str | None:
    """A reported metric whose ``value`` is not its ``as_printed`` text in the entry's units."""
    for path, value in _walk(entry.get("metrics", {}), ("metrics",)):
        if isinstance(value, dict) and "as_printed" in value and "value" in value:
            want = float(value["as_printed"]) * REPORTED_SCALE.get(str(path[1]), 1.0)
            if not math.isclose(value["value"], want, rel_tol=1e-9, abs_tol=1e-15):
                return (f"{_path_str(path)}: value {value['value']!r} is not the printed "
                        f"{value['as_printed']!r} in the entry's units ({want!r})")
    return None


def is_reported(entry: Mapping[str, Any]) -> bool:
    """Whether ``entry`` holds numbers copied from a paper (its ``reported`` is an object)
    rather than measured by xrbench."""
    return isinstance(entry, Mapping) and isinstance(entry.get("reported"), Mapping)


def validate_entry(entry: dict[str, Any]) -> None:
    """Check ``entry`` against ``schema.json`` and the rules in the module docstring.

    Raises :class:`~xrbench.errors.XRBenchError` with one line naming the path of the first
    problem and what is wrong, e.g.
    ``entry.metrics.clean_acc.value: 'high' is not of type 'number', 'null'``.
    """
    if not isinstance(entry, dict):
        raise XRBenchError(f"entry: expected a JSON object, got {type(entry).__name__}")
    error: ValidationError | None = best_match(_validator().iter_errors(entry))
    if error is not None:
        raise XRBenchError(_one_line(f"{_path_str(error.absolute_path)}: {error.message}"))
    problem = _semantic_error(entry)
    if problem is not None:
        raise XRBenchError(_one_line(problem))


def read_entry(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate one entry file; any problem is an :class:`XRBenchError` naming it."""
    entry = read_json(path)  # names the file on missing / malformed JSON
    try:
        validate_entry(entry)
    except XRBenchError as exc:
        raise XRBenchError(f"invalid result entry {path}: {exc}") from exc
    return entry


#: what may differ between two runs of the same thing (when, how long, where it ran, and
#: whether the checkpoint was trained now or taken from the cache)
_RUN_DETAILS = ("date", "timing", "environment", "xrbench", "examples")


def same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same inputs and same numbers: every field but :data:`_RUN_DETAILS`, the checkpoint's
    origin, the dataset's ``source`` and the schema version agrees (the source is
    information, e.g. where an ``imagefolder`` lives now; the dataset's identity is its name,
    a hash of its files; an entry of version 2 and the same run written as version 3, with
    ``reported: null``, are one run)."""
    def core(e: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in e.items() if k not in _RUN_DETAILS}
        # the schema version is the file format, not the run; versions < 3 are measured
        out.pop("schema_version", None)
        out["reported"] = e.get("reported")
        out["checkpoint"] = {k: v for k, v in e.get("checkpoint", {}).items() if k != "origin"}
        if isinstance(e.get("dataset"), dict):
            out["dataset"] = {k: v for k, v in e["dataset"].items() if k != "source"}
        return out
    return core(a) == core(b)


@dataclass
class Written:
    """What :func:`write_entry` did: the entry now at ``path`` and whether it wrote it."""

    path: Path
    entry: dict[str, Any]
    written: bool


def write_entry(path: str | os.PathLike[str], entry: dict[str, Any], *,
                overwrite: bool = False, examples: Mapping[str, Any] | None = None
                ) -> Written:
    """Validate ``entry`` and write it atomically to ``path``, its per-example ``examples``
    (``{"stage/field": array}``, :mod:`xrbench.leaderboard.examples`) first, beside it.

    The one overwrite rule: an existing entry of the same run (:func:`same_run`) is left as
    it is (``written`` False; if its per-example file is missing or damaged, both are written
    again); an existing file that holds anything else is replaced only with
    ``overwrite=True`` (``--force``), otherwise an :class:`XRBenchError` says what to do.
    """
    from .examples import examples_bytes, examples_path

    path = Path(path)
    validate_entry(entry)  # an invalid entry writes nothing, not even its examples
    exclusive = True  # the entry's name is free: claim it, against every other process
    if path.exists():
        old = _existing(path, entry, examples, overwrite)
        if old is not None:
            return old
        exclusive = False  # replacing (--replace), or the same run's damaged files
    data = examples_bytes(examples) if examples is not None else None
    if data is not None:
        side = examples_path(path)
        entry = {**entry, "examples": {"file": side.name, "format": "npz",
                                       "sha256": sha256_bytes(data)}}
    validate_entry(entry)
    text = (json.dumps(entry, indent=2, sort_keys=False) + "\n").encode("utf-8")
    if exclusive and not atomic_write_bytes(path, text, exclusive=True):
        # another run wrote this entry while this one was working (two runs, one --out):
        # judged as if it had been there from the start, never silently replaced
        old = _existing(path, entry, examples, overwrite, meanwhile=True)
        if old is not None:
            return old
        atomic_write_bytes(path, text)
    elif not exclusive:
        atomic_write_bytes(path, text)
    if data is not None:  # the entry's name is this run's now: its examples follow it
        atomic_write_bytes(examples_path(path), data)
    return Written(path, entry, True)


def _existing(path: Path, entry: dict[str, Any], examples: Mapping[str, Any] | None,
              overwrite: bool, meanwhile: bool = False) -> Written | None:
    """The overwrite rule for an entry already at ``path``: ``Written(..., False)`` for the
    same run with intact examples, None where this run may write, else an error."""
    try:
        old = read_entry(path)
    except XRBenchError:
        old = None
    if old is not None and same_run(old, entry):
        if _examples_intact(path, old, examples):
            return Written(path, old, False)
        return None  # the same run whose per-example file is missing or damaged: again
    if overwrite:
        return None
    when = " (written by another run while this one was working)" if meanwhile else ""
    raise XRBenchError(f"{path} already holds a different result entry{when} (other "
                       "checkpoint, recipe, protocol values, stages or numbers); pass "
                       "--replace (overwrite=True) to replace it with this run (--force also "
                       "recomputes every stage), or choose another output folder")


def _examples_intact(path: Path, old: dict[str, Any], wanted: Mapping[str, Any] | None) -> bool:
    if wanted is None:
        return True
    from .examples import read_examples

    try:
        read_examples(path, old)
    except XRBenchError:
        return False
    return True


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_component(name: str, max_len: int = 80) -> str:
    """``name`` as one safe path component.

    A name made only of ``A-Z a-z 0-9 . _ + -`` (and not starting with a dot) is kept as it
    is. Anything else (``timm:resnet18``, ``imagefolder:/data/x``, ``a|b``) has each run of
    other characters replaced by ``_`` and gets ``-`` plus 8 hex digits of the name's sha256,
    so two different names never share a folder: ``timm_resnet18-1b3f...``.
    """
    name = str(name)
    safe = _UNSAFE.sub("_", name).strip("._")[:max_len]
    if safe == name and safe not in ("", ".", ".."):
        return safe
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{safe}-{digest}" if safe else digest


def entry_path(out_dir: str | os.PathLike[str], entry: dict[str, Any]) -> Path:
    """``out_dir/<dataset>/<model>/<explainer>/<profile>/<defense>-s<seed>.json``, each name
    made safe by :func:`safe_component`."""
    from xrbench.identity import entry_key

    try:
        *parts, defense, seed = entry_key(entry)
    except XRBenchError as exc:
        raise XRBenchError(f"cannot place entry in {out_dir}: {exc}; validate it with "
                           "validate_entry first") from None
    return Path(out_dir).joinpath(*(safe_component(str(p)) for p in parts),
                                  f"{safe_component(defense)}-s{seed}.json")


def load_entries(results_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every ``*.json`` entry below ``results_dir`` (hidden files and folders skipped), in
    sorted path order, each validated; a malformed or invalid file is an
    :class:`XRBenchError` naming it (strict; :func:`scan_entries` skips such files with a
    warning instead)."""
    root = Path(results_dir)
    if not root.is_dir():
        raise XRBenchError(f"results folder not found: {root}")
    return [read_entry(p) for p in _entry_files(root)]


def reported_dir() -> Path:
    """The folder of the reported entries shipped with xrbench (``reported/`` beside this
    module): the SEP paper's Table 2 and Joo et al. 2023's Table 1, one file per row."""
    return Path(str(resources.files("xrbench.leaderboard").joinpath("reported")))


def _entry_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.json") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


@dataclass(frozen=True)
class Loaded:
    """One entry read from disk: its file and its validated content."""

    path: Path
    entry: dict[str, Any]


@dataclass(frozen=True)
class Skipped:
    """A file that is not a valid entry, and why (one line)."""

    path: Path
    reason: str


@dataclass
class Scan:
    """What :func:`scan_entries` found: the valid entries and the files it skipped."""

    loaded: list[Loaded]
    skipped: list[Skipped]


def scan_entries(results_dirs: Iterable[str | os.PathLike[str]]) -> Scan:
    """Every ``*.json`` file below each folder of ``results_dirs`` (hidden files and folders
    skipped; folders in the given order, files in sorted path order), read leniently: a
    malformed or schema-invalid file is skipped and listed in :attr:`Scan.skipped` with the
    reason (the caller warns: ``xrbench leaderboard`` logs one warning per skipped file, or
    names them in its error when nothing valid is left); a file reached twice (overlapping
    folders) is read once. A folder that does not exist is an :class:`XRBenchError` (a typo, not a bad
    entry). :func:`load_entries` is the strict version."""
    loaded: list[Loaded] = []
    skipped: list[Skipped] = []
    seen: set[Path] = set()
    for d in results_dirs:
        root = Path(d)
        if not root.is_dir():
            raise XRBenchError(f"results folder not found: {root}")
        for p in _entry_files(root):
            key = p.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                loaded.append(Loaded(p, read_entry(p)))
            except XRBenchError as exc:
                reason = _one_line(str(exc).replace(f"invalid result entry {p}: ", ""))
                skipped.append(Skipped(p, reason))
    return Scan(loaded, skipped)
