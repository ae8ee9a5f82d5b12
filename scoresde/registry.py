"""One small registry pattern for every named thing: samplers, SDEs, schedules, losses, networks,
datasets and metrics.

A :class:`Registry` maps names to :class:`Entry` objects. Each entry holds its callable, its
options read **once** from the callable's signature (name -> default), and each option's accepted
values declared **once** as a :class:`Param` (``Real``, ``Int``, ``Bool``, ``Choice``,
``OneOf``, ``Anything``). Validation happens in one place, :meth:`Entry.validate`, and every error
names the argument, the value that was given and what is accepted::

    LOSSES = Registry("loss", skip=("model", "x0", "generator", "cond", "reduce"))

    @LOSSES.register("edm", params={"P_std": Real(gt=0)})
    def edm_loss(model, x0, *, P_mean=-1.2, P_std=1.2, sigma_data=0.5, ...): ...

    LOSSES.get("edm").validate({"P_std": -1})
    # ValueError: loss 'edm': P_std=-1 is not accepted; accepted: a number > 0

Options whose accepted values are not declared are inferred from their defaults: a ``bool``
default accepts only True/False, an ``int`` default any integer (not a bool, not a float), a
``float`` default any finite real number; anything else is not checked beyond being given.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

__all__ = [
    "Registry", "Entry", "Param", "Real", "Int", "Bool", "Choice", "OneOf", "Maybe", "Anything", "REQUIRED",
    "options_of", "check_value",
]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: the default of an option that has none (it must be given).
REQUIRED = _Required()


# ---------------------------------------------------------------------------------- parameters
class Param:
    """The accepted values of one option: ``check(value) -> value`` (normalised) or raise."""

    def accepts(self, value: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError("a Param subclass defines accepts()")  # abstract

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError("a Param subclass defines describe()")  # abstract

    def normalise(self, value: Any) -> Any:
        return value

    def check(self, name: str, value: Any, where: str = "") -> Any:
        if not self.accepts(value):
            prefix = f"{where}: " if where else ""
            raise ValueError(f"{prefix}{name}={value!r} is not accepted; accepted: {self.describe()}")
        return self.normalise(value)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and type(v).__name__ != "bool_"


def _bounds_text(ge, gt, le, lt) -> str:
    parts = []
    if ge is not None:
        parts.append(f">= {ge:g}")
    if gt is not None:
        parts.append(f"> {gt:g}")
    if le is not None:
        parts.append(f"<= {le:g}")
    if lt is not None:
        parts.append(f"< {lt:g}")
    return " and ".join(parts)


def _in_bounds(v: float, ge, gt, le, lt) -> bool:
    return ((ge is None or v >= ge) and (gt is None or v > gt) and (le is None or v <= le)
            and (lt is None or v < lt))


@dataclass(frozen=True)
class Real(Param):
    """A real number (int or float, never a bool), finite unless ``allow_inf``, within bounds."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    allow_inf: bool = False

    def accepts(self, value: Any) -> bool:
        if not _is_real(value):
            return False
        v = float(value)
        if math.isnan(v) or (math.isinf(v) and not self.allow_inf):
            return False
        return _in_bounds(v, self.ge, self.gt, self.le, self.lt)

    def normalise(self, value: Any) -> float:
        return float(value)

    def describe(self) -> str:
        b = _bounds_text(self.ge, self.gt, self.le, self.lt)
        kind = "number (inf allowed)" if self.allow_inf else "finite number"
        return f"a {kind}{' ' + b if b else ''}"


@dataclass(frozen=True)
class Int(Param):
    """An integer (a Python or numpy int, never a bool or a float), within bounds."""

    ge: int | None = None
    le: int | None = None

    def accepts(self, value: Any) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_" \
            and _in_bounds(int(value), self.ge, None, self.le, None)

    def normalise(self, value: Any) -> int:
        return int(value)

    def describe(self) -> str:
        b = _bounds_text(self.ge, None, self.le, None)
        return f"an integer{' ' + b if b else ''}"


@dataclass(frozen=True)
class Bool(Param):
    """True or False (no 0/1, no strings)."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool) or type(value).__name__ == "bool_"

    def normalise(self, value: Any) -> bool:
        return bool(value)

    def describe(self) -> str:
        return "True, False"


@dataclass(frozen=True)
class Choice(Param):
    """One of the listed values (compared with ==, and by type for numbers)."""

    values: tuple

    def __init__(self, *values: Any):
        vals = values[0] if len(values) == 1 and isinstance(values[0], (tuple, list)) else values
        object.__setattr__(self, "values", tuple(vals))

    def accepts(self, value: Any) -> bool:
        return any(value == v and type(value) is type(v) for v in self.values)

    def describe(self) -> str:
        return ", ".join(map(repr, self.values))


@dataclass(frozen=True)
class OneOf(Param):
    """Any value accepted by one of the given params (e.g. ``OneOf(Choice("auto"), Real(gt=0))``)."""

    params: tuple

    def __init__(self, *params: Param):
        object.__setattr__(self, "params", tuple(params))

    def accepts(self, value: Any) -> bool:
        return any(p.accepts(value) for p in self.params)

    def normalise(self, value: Any) -> Any:
        for p in self.params:
            if p.accepts(value):
                return p.normalise(value)
        return value

    def describe(self) -> str:
        return "; or ".join(p.describe() for p in self.params)


@dataclass(frozen=True)
class Maybe(Param):
    """None, or a value accepted by ``inner``."""

    inner: Param

    def accepts(self, value: Any) -> bool:
        return value is None or self.inner.accepts(value)

    def normalise(self, value: Any) -> Any:
        return None if value is None else self.inner.normalise(value)

    def describe(self) -> str:
        return f"None or {self.inner.describe()}"


@dataclass(frozen=True)
class Anything(Param):
    """Any value, or (``types``) an instance of one of the given types; ``None`` if ``optional``."""

    types: tuple = ()
    optional: bool = False
    what: str = ""

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional or not self.types
        return not self.types or isinstance(value, self.types)

    def describe(self) -> str:
        if self.what:
            return self.what
        if not self.types:
            return "any value"
        names = " or ".join(t.__name__ for t in self.types)
        return f"a {names}" + (" or None" if self.optional else "")


def infer_param(default: Any) -> Param:
    """The accepted values of an option without a declaration, from its default."""
    if isinstance(default, bool):
        return Bool()
    if isinstance(default, numbers.Integral):
        return Int()
    if isinstance(default, float):
        return Real(allow_inf=math.isinf(default))
    return Anything()


def check_value(name: str, value: Any, param: Param, where: str = "") -> Any:
    """Check one value against a param (for arguments that are not registry options)."""
    return param.check(name, value, where)


# ---------------------------------------------------------------------------------- signatures
def options_of(fn: Callable[..., Any], *, skip: Sequence[str] = (), keyword_only: bool = False) -> dict[str, Any]:
    """The options of ``fn`` read from its signature: name -> default (:data:`REQUIRED` if none).

    ``skip`` names call-convention arguments that are not options (``self`` always is one);
    ``keyword_only`` keeps only keyword-only parameters. ``*args`` / ``**kwargs`` are never options.
    """
    target = fn.__init__ if inspect.isclass(fn) else fn
    sig = inspect.signature(target)
    out: dict[str, Any] = {}
    for p in sig.parameters.values():
        if p.name == "self" or p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if keyword_only and p.kind is not p.KEYWORD_ONLY:
            continue
        out[p.name] = REQUIRED if p.default is p.empty else p.default
    return out


# ---------------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class Entry:
    """One registered thing: its callable, options with defaults, accepted values, metadata."""

    name: str
    obj: Callable[..., Any]
    what: str  # the registry's noun, e.g. "sampler", "loss"
    defaults: Mapping[str, Any]
    params: Mapping[str, Param]
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.what} {self.name!r}"

    def validate(self, options: Mapping[str, Any] | None = None, *, fill: bool = True,
                 extra_valid: Sequence[str] = ()) -> dict[str, Any]:
        """Check ``options`` (unknown or missing names raise the registry's ``error`` type, TypeError by
        default, listing the valid ones; each value is checked against its param, ValueError); return
        them normalised, with the defaults filled in (unless ``fill=False``)."""
        options = dict(options or {})
        error = self.meta.get("_error", TypeError)
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            valid = sorted(set(self.defaults) | set(extra_valid))
            raise error(
                f"unknown option(s) {', '.join(map(repr, unknown))} for {self.where}; valid options: "
                f"{', '.join(valid) if valid else '(none)'}"
            )
        out: dict[str, Any] = {}
        for name, default in self.defaults.items():
            if name in options:
                out[name] = self.params[name].check(name, options[name], self.where)
            elif default is REQUIRED:
                raise error(f"{self.where} needs the option {name!r} ({self.params[name].describe()})")
            elif fill:
                out[name] = default
        return out

    def build(self, **options: Any) -> Any:
        """Call the entry's object with validated options."""
        return self.obj(**self.validate(options))

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.obj) or ""
        return doc.splitlines()[0] if doc else ""


class Registry:
    """Names -> :class:`Entry`; ``what`` is the noun used in errors ("sampler", "loss", ...).

    ``skip`` and ``keyword_only`` say which signature parameters are options (see
    :func:`options_of`); ``error`` is the exception type for unknown or missing options (TypeError,
    as Python raises for a bad keyword; ValueError for configuration registries such as networks and
    losses, whose options come from files and command lines). Entries may carry any metadata keywords.
    """

    def __init__(self, what: str, *, skip: Sequence[str] = (), keyword_only: bool = False,
                 entry_type: type[Entry] = Entry, error: type[Exception] = TypeError):
        self.what = what
        self.error = error
        self.skip = tuple(skip)
        self.keyword_only = keyword_only
        self.entry_type = entry_type
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    # -------------------------------------------------------------- adding
    def make_entry(self, name: str, obj: Callable[..., Any], *, params: Mapping[str, Param] | None = None,
                   **meta: Any) -> Entry:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} name must be a non-empty string; got {name!r}")
        if not callable(obj):
            raise TypeError(f"a {self.what} must be callable; got {type(obj).__name__}")
        defaults = options_of(obj, skip=self.skip, keyword_only=self.keyword_only)
        params = dict(params or {})
        stray = sorted(set(params) - set(defaults))
        if stray:
            raise TypeError(f"{self.what} {name!r} declares accepted values for {stray}, which are not options of "
                            f"its signature ({', '.join(defaults) or 'none'})")
        full = {k: params.get(k, infer_param(d) if d is not REQUIRED else Anything()) for k, d in defaults.items()}
        for k, d in defaults.items():  # a declared range must accept its own default
            if d is not REQUIRED and not full[k].accepts(d):
                raise TypeError(f"{self.what} {name!r}: the default {k}={d!r} is outside its declared values "
                                f"({full[k].describe()})")
        meta = dict(meta)
        meta.setdefault("_error", self.error)
        return self.entry_type(name=name, obj=obj, what=self.what, defaults=defaults, params=full, meta=meta)

    def add_entry(self, entry: Entry, *, overwrite: bool = False, aliases: Sequence[str] = ()) -> Entry:
        name = entry.name
        if (name in self._entries or name in self._aliases) and not overwrite:
            raise ValueError(f"{self.what} {name!r} is already registered (pass overwrite=True to replace it)")
        self._aliases.pop(name, None)
        self._entries[name] = entry
        for a in aliases:
            self._aliases[a] = name
        return entry

    def add(self, name: str, obj: Callable[..., Any], *, params: Mapping[str, Param] | None = None,
            overwrite: bool = False, aliases: Sequence[str] = (), **meta: Any) -> Entry:
        """Register ``obj`` under ``name`` (and ``aliases``); returns the entry."""
        return self.add_entry(self.make_entry(name, obj, params=params, **meta), overwrite=overwrite, aliases=aliases)

    def register(self, name: str, *, checked: bool = False, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of :meth:`add`. Returns the object unchanged, or with ``checked=True`` a
        function that validates its options (through the entry) on every direct call as well."""

        def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
            entry = self.add(name, obj, **kwargs)
            if not checked:
                return obj

            @functools.wraps(obj)
            def call(*args: Any, **kw: Any) -> Any:
                opts = {k: v for k, v in kw.items() if k in entry.defaults}
                kw.update(entry.validate(opts, fill=False))
                return obj(*args, **kw)

            return call

        return deco

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)
        for a in [a for a, n in self._aliases.items() if n == name]:
            del self._aliases[a]

    # -------------------------------------------------------------- reading
    def resolve(self, name: str) -> str:
        return self._aliases.get(name, name) if isinstance(name, str) else name

    def get(self, name: str) -> Entry:
        key = self.resolve(name)
        if not isinstance(key, str) or key not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; accepted: {', '.join(self.names(aliases=True))}")
        return self._entries[key]

    def names(self, *, aliases: bool = False) -> list[str]:
        """Registered names in registration order (with ``aliases``: the aliases too)."""
        return list(self._entries) + (list(self._aliases) if aliases else [])

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def build(self, name: str, **options: Any) -> Any:
        return self.get(name).build(**options)

    def __getitem__(self, name: str) -> Callable[..., Any]:
        """The registered object itself (mapping-style access, as the former plain dicts)."""
        key = self.resolve(name)
        if key not in self._entries:
            raise KeyError(name)
        return self._entries[key].obj

    def keys(self) -> list[str]:
        return self.names()

    def values(self) -> list[Callable[..., Any]]:
        return [e.obj for e in self._entries.values()]

    def items(self) -> list[tuple[str, Callable[..., Any]]]:
        return [(n, e.obj) for n, e in self._entries.items()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.resolve(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"
