"""Leaderboards: result entries as validated JSON data, and pure rendering to tables.

- :mod:`xrbench.leaderboard.schema`: ``schema.json`` (JSON Schema draft 2020-12,
  ``schema_version`` 2; 1 still reads), :func:`validate_entry`, :func:`read_entry`,
  :func:`write_entry`, :func:`entry_path`, :func:`load_entries`.
- :mod:`xrbench.leaderboard.render`: :func:`render_markdown` and :func:`group_key`.
- ``results/``: the published entries, shipped as package data.
"""

from .render import group_key, render_markdown
from .schema import (SCHEMA_VERSION, entry_path, load_entries, load_schema, read_entry,
                     validate_entry, write_entry)

