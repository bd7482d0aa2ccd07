"""Leaderboards: result entries as validated JSON data, and pure rendering to tables.

- :mod:`xrbench.leaderboard.schema`: ``schema.json`` (JSON Schema draft 2020-12,
  ``schema_version`` 3; 1 and 2 still read; measured entries and *reported* ones, numbers
  copied from a paper), :func:`validate_entry`, :func:`read_entry`, :func:`write_entry`,
  :func:`entry_path`, :func:`load_entries` (strict), :func:`scan_entries` (skips bad files).
- :mod:`xrbench.leaderboard.board`: a leaderboard as data (:class:`Board`: tables with
  measured and reported rows, duplicates, skipped files), :func:`load_board`,
  :func:`build_board`, the combined JSON document (``leaderboard-schema.json``).
- :mod:`xrbench.leaderboard.analysis`: the correlation of PGD accuracy with each explanation
  metric under every table (PROTOCOL 5.7).
- :mod:`xrbench.leaderboard.render` (markdown), :mod:`xrbench.leaderboard.html` (one
  self-contained page), :mod:`xrbench.leaderboard.readme` (``leaderboard/README.md``).
- ``results/``: the published entries; ``reported/``: the SEP paper's Table 2 and Joo et al.
  2023's Table 1 as reported entries; both shipped as package data.
"""

from .board import Board, build_board, load_board
from .document import render_board
from .render import group_key, render_markdown
from .schema import (SCHEMA_VERSION, entry_path, is_reported, load_entries, load_schema,
                     read_entry, scan_entries, validate_entry, write_entry)
