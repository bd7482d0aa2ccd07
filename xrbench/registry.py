"""One generic registry, one instance per kind (datasets, models, explainers, defenses, attacks).

Built-ins register on import with :meth:`Registry.register`. Third parties register through
entry points in the group ``xrbench.<kind>`` (e.g. ``xrbench.defenses``); those are loaded
lazily on the first lookup, and ``XRBENCH_DISABLE_PLUGIN_AUTOLOAD=1`` turns that off (as
pytest and torch do for their own plugins).

Names may be *parametrized*: a component registered as ``"timm"`` with ``takes_arg=True``
is created by ``create("timm:resnet18")``; the part after the colon reaches the factory as
its first positional argument. Listings show it as ``timm:NAME``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Generic, TypeVar

from .errors import XRBenchError

log = logging.getLogger(__name__)

T = TypeVar("T")

PLUGIN_AUTOLOAD_ENV = "XRBENCH_DISABLE_PLUGIN_AUTOLOAD"


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component: its factory, a one-line description, where it came from."""

    name: str
    obj: T
    description: str
    takes_arg: bool = False
    arg_name: str = "NAME"
    source: str = "xrbench"

    @property
    def display_name(self) -> str:
        return f"{self.name}:{self.arg_name}" if self.takes_arg else self.name

    @property
    def distribution(self) -> str:
        """The distribution that provides the component: ``"xrbench"`` for a built-in, the
        plugin's distribution name for ``source == "plugin <dist>"``."""
        return self.source[len("plugin "):] if self.source.startswith("plugin ") else "xrbench"

    def provenance(self) -> dict[str, Any]:
        """Where the component comes from, as an entry records it for its defense, model and
        explainer: ``{"source": "xrbench" | "plugin <dist>", "distribution": {"name": <dist>,
        "version": <its installed version, or None where it cannot be found>}}``."""
        return {"source": self.source,
                "distribution": {"name": self.distribution,
                                 "version": distribution_version(self.distribution)}}


def distribution_version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (xrbench's own ``__version__`` for
    ``"xrbench"``, as the entry's ``xrbench.version`` records it), None if not installed."""
    if dist == "xrbench":
        from . import __version__

        return __version__
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


class Registry(Generic[T]):
    """A named collection of components of one kind, with entry-point plugins."""

    def __init__(self, kind: str, builtins: str | None = None) -> None:
        self.kind = kind
        self.group = f"xrbench.{kind}"
        self._entries: dict[str, Entry[T]] = {}
        self._plugins_loaded = False
        #: the module whose import registers the built-ins, imported on the first lookup
        #: (so that ``import xrbench`` stays cheap)
        self.builtins = builtins
        #: called as ``check(name, obj)`` before anything is registered; raises
        #: :class:`XRBenchError` for an object that is not of this kind (set by the module
        #: that defines the kind's base class, e.g. ``xrbench.defenses.base``)
        self.check: Callable[[str, Any], None] | None = None

    # -- registration -------------------------------------------------------------------
    def register(
        self,
        name: str,
        description: str = "",
        *,
        takes_arg: bool = False,
        arg_name: str = "NAME",
        source: str = "xrbench",
    ) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name``. A duplicate name is an error."""

        def deco(obj: T) -> T:
            self.add(name, obj, description, takes_arg=takes_arg, arg_name=arg_name, source=source)
            return obj

        return deco

    def add(
        self,
        name: str,
        obj: T,
        description: str = "",
        *,
        takes_arg: bool = False,
        arg_name: str = "NAME",
        source: str = "xrbench",
    ) -> None:
        if ":" in name:
            raise XRBenchError(f"{self.kind} name {name!r} may not contain ':'")
        if name in self._entries:
            prev = self._entries[name].source
            raise XRBenchError(
                f"duplicate {self.kind[:-1]} name {name!r}: registered by {_who(prev)} and "
                f"again by {_who(source)}; rename one of them"
            )
        if self.check is not None:
            self.check(name, obj)
        if not description:
            doc = (getattr(obj, "__doc__", None) or "").strip()
            description = doc.splitlines()[0] if doc else ""
        self._entries[name] = Entry(name, obj, description, takes_arg, arg_name, source)

    # -- plugins ------------------------------------------------------------------------
    def load_plugins(self) -> None:
        """Register the built-ins, then load every entry point of group ``xrbench.<kind>``
        once (unless disabled)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        if self.builtins is not None:
            importlib.import_module(self.builtins)
        if os.environ.get(PLUGIN_AUTOLOAD_ENV, "") not in ("", "0"):
            return
        for ep in metadata.entry_points(group=self.group):
            dist = ep.dist.name if ep.dist is not None else "<unknown distribution>"
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is reported
                raise XRBenchError(
                    f"plugin {ep.name!r} (group {self.group}) from distribution {dist!r} "
                    f"failed to load: {type(exc).__name__}: {exc}. Fix or uninstall {dist}, "
                    f"or set {PLUGIN_AUTOLOAD_ENV}=1 to skip plugins"
                ) from exc
            known = self._entries.get(ep.name)
            if known is not None and known.obj is obj:
                # the plugin registered this very object itself on import (with the default
                # source): record the distribution it came from, as for any plugin
                if known.source == "xrbench" and dist != "xrbench":
                    self._entries[ep.name] = dataclasses.replace(known, source=f"plugin {dist}")
                continue
            # a name clash (with a built-in or another plugin) is an error naming both
            self.add(ep.name, obj, source=f"plugin {dist}")

    # -- lookup -------------------------------------------------------------------------
    def names(self, pattern: str = "*") -> list[str]:
        """Sorted display names matching a shell-style ``pattern``."""
        self.load_plugins()
        return sorted(
            e.display_name for e in self._entries.values() if fnmatch.fnmatch(e.name, pattern)
        )

    def entries(self) -> list[Entry[T]]:
        self.load_plugins()
        return [self._entries[k] for k in sorted(self._entries)]

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except XRBenchError:
            return False
        return True

    def split(self, name: str) -> tuple[str, str | None]:
        base, sep, arg = name.partition(":")
        return base, (arg if sep else None)

    def get_entry(self, name: str) -> Entry[T]:
        self.load_plugins()
        base, arg = self.split(name)
        entry = self._entries.get(base)
        if entry is None:
            raise XRBenchError(
                f"unknown {self.kind[:-1]} {name!r}; valid names: {', '.join(self.names())}"
            )
        if entry.takes_arg and not arg:
            raise XRBenchError(
                f"{self.kind[:-1]} {base!r} needs an argument: use {entry.display_name}"
            )
        if arg and not entry.takes_arg:
            raise XRBenchError(f"{self.kind[:-1]} {base!r} takes no ':' argument (got {name!r})")
        return entry

    def get(self, name: str) -> T:
        """The registered object itself (class or function)."""
        return self.get_entry(name).obj

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the registered factory. ``None`` keyword values are dropped (timm's habit),
        so a CLI default never overrides a component's own default."""
        entry = self.get_entry(name)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        _, arg = self.split(name)
        if entry.takes_arg:
            return entry.obj(arg, *args, **kwargs)  # type: ignore[operator]
        return entry.obj(*args, **kwargs)  # type: ignore[operator]


def _who(source: str) -> str:
    """``"xrbench"`` -> ``"xrbench (built-in)"``; ``"plugin d"`` -> ``"plugin distribution 'd'"``."""
    if source.startswith("plugin "):
        return f"plugin distribution {source[len('plugin '):]!r}"
    return f"{source} (built-in)" if source == "xrbench" else source


datasets: Registry[Any] = Registry("datasets", "xrbench.data")
models: Registry[Any] = Registry("models", "xrbench.models")
explainers: Registry[Any] = Registry("explainers", "xrbench.explainers")
defenses: Registry[Any] = Registry("defenses", "xrbench.defenses")
#: the worst-case ensemble's explanation attacks (PROTOCOL 5.8, :mod:`xrbench.attacks.ensemble`)
attacks: Registry[Any] = Registry("attacks", "xrbench.attacks.ensemble")


def _check_attack(name: str, obj: Any) -> None:
    if not callable(obj):
        raise XRBenchError(f"attack {name!r} is not callable: an attack is a function "
                           f"attack(model, explainer, x_victim, x_target, *, pairs, budget) "
                           f"returning x_adv (xrbench.attacks.ensemble)")


attacks.check = _check_attack
