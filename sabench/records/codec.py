"""One codec for the record types: `parse` and `dump` read each dataclass's fields, not a hand list.

A field's annotation says what it holds and whether it may be absent:

    Optional[X]            may be absent (or null); absent reads as None and is not written
    X with a default       absent reads as the default; X without one: "is missing"
    int, float, str, bool  checked as records/checks.py checks them (finite; integers; one line per error)
    Dict[str, float]       a mapping of name -> number;  Dict[str, Any]: a mapping, kept as written
    Dict[str, Record]      a mapping of name -> record (named `overhead['key']` in messages)
    Tuple[float, ...]      a list of numbers (samples: checked in one pass, a bad one then found and named)
    Tuple[str, ...]        a list of strings;  Tuple[Record, ...]: a list of records (named `rounds[2]`)
    Record                 a nested record (named `latency_ms.median`)
    extra: Dict[str, Any]  the keys no field names, kept as written and written back last

and its metadata (`checked(...)`) the rest:

    lo, positive, choices  the range or the words a value may take
    integer=False          an int field that takes any number (files written before it was checked)
    nonempty               a string or list must not be empty
    when_ok                more of these while the status is ok (`required`: the value must be there)
    status_of              on a `status` field: the noun of its messages ("record", "round"); the
                           class's other fields, and the records inside it, see `when_ok` by this status
    len_of                 absent: the length of that (list) field as written
    omit                   not written while it equals this value;  null: written as null when None
    null_with              written as null when None and one of these fields is set
    skip                   neither read nor written

A class's `validate(self, w, name)` judges its rules across fields after the parse.
"""
from __future__ import annotations

import math
import typing
from dataclasses import MISSING, field, fields, is_dataclass
from typing import Any, Callable, Dict, Optional

from sabench.records.checks import Where, mapping, number, strings, text
from sabench.values import show

_READ_KEYS = ("lo", "positive", "choices", "nonempty", "required", "integer")


def checked(default=None, **meta):
    """A field with a default and codec metadata: `warmup: Optional[int] = checked(lo=0)`."""
    return field(default=default, metadata=meta)


def required(**meta):
    """A field without a default, with codec metadata: `seq_len: int = required(positive=True)`."""
    return field(metadata=meta)


class Record:
    """A record type: `to_dict` writes it from its fields."""
    __slots__ = ()

    def to_dict(self) -> dict:
        return dump(self)


def parse(cls, w: Where, name: str, v, ok: Optional[str] = None, known: Optional[dict] = None):
    """A `cls` read from the mapping `v` (which must be there); `ok` is the noun whose status is ok
    ("record") while `when_ok` rules apply, else None; `known` holds fields already read."""
    return _spec(cls).parse(w, name, v, ok, known)


def parse_fields(cls, w: Where, v: dict, names) -> dict:
    """Only the fields `names` of `cls` from the mapping v (read before the rest, for a label)."""
    spec = _spec(cls)
    out = {}
    for f in spec.fields:
        if f.name in names:
            out[f.name] = f.plain(w, f.name, v.get(f.name), v)
    return out


def named_and_extra(cls, values: dict) -> dict:
    """The keyword arguments of `cls` from plain values already checked (what a tracker or the point
    process measured): its fields by name, every other key in `extra`."""
    names = _spec(cls).names
    return {**{k: v for k, v in values.items() if k in names},
            "extra": {k: v for k, v in values.items() if k not in names}}


def dump(obj) -> dict:
    """The JSON-ready mapping of a record, in field order, extra keys last."""
    return _spec(type(obj)).dump(obj)


# ---------------------------------------------------------------------------- one field


_NUMBER_TYPES = frozenset((int, float))


def _plain_numbers(xs, lo, positive: bool) -> bool:
    """All finite numbers in range: the common case of a sample list, checked at C speed (a NaN or
    an infinity makes the sum so)."""
    if not set(map(type, xs)) <= _NUMBER_TYPES:
        return False
    try:
        if not math.isfinite(sum(xs)):
            return False
    except OverflowError:
        return False
    return not xs or ((lo is None or min(xs) >= lo) and (not positive or min(xs) > 0))


class _Field:
    """One field: `plain` and `when_ok` read it (from the raw value, None when absent), `out` writes it."""

    def __init__(self, f, tp):
        self.name = f.name
        meta = dict(f.metadata)
        self.meta = meta
        self.skip = meta.get("skip", False)
        self.omit = meta.get("omit", MISSING)
        self.null = meta.get("null", False)
        self.null_with = meta.get("null_with", ())
        self.len_of = meta.get("len_of")
        optional, tp = optional_type(tp)
        self.default = None if optional else f.default
        self.factory = MISSING if optional else f.default_factory  # a fresh mapping for each record
        base = {k: meta[k] for k in _READ_KEYS if k in meta}
        base["required"] = base.get("required", self.default is MISSING and self.factory is MISSING)
        self.plain = self._reader(tp, base, "is missing")
        when_ok = meta.get("when_ok")
        # a value required only while the status is ok says so when it is missing
        why = "is missing" if base["required"] else "is missing (the {}'s status is ok)"
        self.when_ok = self.plain if not when_ok else self._reader(tp, {**base, **when_ok}, why)
        # absent reads as the dataclass's default, whatever the status: the parse leaves it to the class
        self.lazy = not base["required"] and not (when_ok or {}).get("required") and self.len_of is None
        self.out = _writer(tp)

    def _reader(self, tp, o: dict, missing: str) -> Callable:
        required, default, factory, len_of = o["required"], self.default, self.factory, self.len_of
        check = _check(tp, o)

        def read(w: Where, name: str, v, m: dict, ok_noun: Optional[str] = None):
            if v is None:
                if len_of is not None:
                    v = len(m[len_of]) if isinstance(m.get(len_of), list) else 0
                elif required:
                    w.fail(name, missing.format(ok_noun))
                else:
                    return default if factory is MISSING else factory()
            return check(w, name, v, ok_noun)
        return read


def optional_type(tp):
    """(True, X) for Optional[X]; (False, tp) otherwise (records/fields.py reads the types so too)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return True, rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]
    return False, tp


def _check(tp, o: dict) -> Callable:
    """(w, name, value present, ok_noun) -> the value, checked, for a value of type tp."""
    lo, positive, choices, nonempty = o.get("lo"), o.get("positive", False), o.get("choices"), o.get("nonempty")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in (int, float):
        integer = tp is int and o.get("integer", True)

        def read_number(w, name, v, ok_noun):
            t = type(v)  # the common case passes here; checks.number finds and words the problem
            if ((t is int or (t is float and not integer and -math.inf < v < math.inf))
                    and (lo is None or v >= lo) and (not positive or v > 0)):
                return v
            return number(w, name, v, integer=integer, lo=lo, positive=positive, optional=False)
        return read_number
    if tp is str:
        def read_text(w, name, v, ok_noun):
            if type(v) is not str or (choices is not None and v not in choices):
                text(w, name, v, choices=choices, optional=False)
            if nonempty and not v:
                w.fail(name, "must not be empty")
            return v
        return read_text
    if tp is bool:
        def read_bool(w, name, v, ok_noun):
            if not isinstance(v, bool):
                w.fail(name, f"must be true or false, got {show(v)}")
            return v
        return read_bool
    if is_dataclass(tp):
        return _spec(tp).parse
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = args[0]
        if item is float:
            def read_floats(w, name, v, ok_noun):
                if not isinstance(v, list):
                    w.fail(name, f"must be a list of numbers, got {show(v)}")
                if nonempty and not v:
                    w.fail(name, "must be a non-empty list")
                if not _plain_numbers(v, lo, positive):  # find and name the bad one
                    for i, x in enumerate(v):
                        number(w, f"{name}[{i}]", x, lo=lo, positive=positive, optional=False)
                return tuple(v)
            return read_floats
        if item is str:
            return lambda w, name, v, ok_noun: strings(w, name, v)
        if is_dataclass(item):
            spec = _spec(item)

            def read_records(w, name, v, ok_noun):
                if not isinstance(v, list):
                    w.fail(name, f"must be a list, got {show(v)}")
                if nonempty and not v:
                    w.fail(name, "must be a non-empty list")
                return tuple(spec.parse(w, f"{name}[{i}]", x, ok_noun) for i, x in enumerate(v))
            return read_records
    if origin is dict:
        value = args[1] if args else Any
        if value is float:
            def read_numbers(w, name, v, ok_noun):
                if type(v) is dict and _plain_numbers(list(v.values()), None, False):
                    return dict(v)
                m = mapping(w, name, v, optional=False)
                return {str(k): number(w, f"{name}.{k}", x) for k, x in m.items()}
            return read_numbers
        if is_dataclass(value):
            spec = _spec(value)

            def read_keyed(w, name, v, ok_noun):
                return {str(k): spec.parse(w, f"{name}[{k!r}]", x, ok_noun)
                        for k, x in mapping(w, name, v, optional=False).items()}
            return read_keyed
        return lambda w, name, v, ok_noun: mapping(w, name, v, optional=False)
    if tp is Any:
        return lambda w, name, v, ok_noun: v
    raise TypeError(f"the records codec cannot read a field of type {tp!r}")


def _writer(tp) -> Optional[Callable]:
    """value (not None) -> its JSON-ready form; None: the value as it is."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if is_dataclass(tp):
        return _spec(tp).dump
    if origin is tuple:
        if args and is_dataclass(args[0]):
            each = _spec(args[0]).dump
            return lambda v: [each(x) for x in v]
        return list
    if origin is dict and len(args) == 2 and is_dataclass(args[1]):
        each = _spec(args[1]).dump
        return lambda v: {k: each(x) for k, x in v.items()}
    return None


# ---------------------------------------------------------------------------- one record type


class _Spec:
    def __init__(self, cls):
        hints = typing.get_type_hints(cls)
        self.cls = cls
        self.fields = [_Field(f, hints[f.name]) for f in fields(cls) if f.name != "extra"]
        self.fields = [f for f in self.fields if not f.skip]
        self.has_extra = any(f.name == "extra" for f in fields(cls))
        self.names = frozenset(f.name for f in self.fields)
        self.status = next((i for i, f in enumerate(self.fields) if "status_of" in f.meta), None)
        self.validate = getattr(cls, "validate", None)
        self._rows: Dict[str, tuple] = {}
        self.writers = tuple((f.name, f.out, f.omit, f.null or f.null_with) for f in self.fields)

    def rows(self, prefix: str) -> tuple:
        """(field, name in messages) under `prefix`: "latency_ms" -> (median, "latency_ms.median"), ..."""
        out = self._rows.get(prefix)
        if out is None:
            out = self._rows[prefix] = tuple((f, f"{prefix}.{f.name}" if prefix else f.name) for f in self.fields)
        return out

    def parse(self, w: Where, name: str, v, ok: Optional[str], known: Optional[dict] = None):
        if type(v) is not dict:
            mapping(w, name, v, optional=False)
        vals = dict(known) if known else {}
        rows = self.rows(name)
        if self.status is not None:
            f, n = rows[self.status]
            vals[f.name] = status = f.plain(w, n, v.get(f.name), v)
            ok = f.meta["status_of"] if status == "ok" else None
        get = v.get
        for f, n in rows:
            x = get(f.name)
            if (x is None and f.lazy) or f.name in vals:
                continue
            vals[f.name] = (f.when_ok if ok else f.plain)(w, n, x, v, ok)
        if self.has_extra:
            names = self.names
            vals["extra"] = {k: x for k, x in v.items() if k not in names}
        out = self.cls(**vals)
        if self.validate is not None:
            out.validate(w, name)
        return out

    def dump(self, obj) -> dict:
        d = obj.__dict__
        out = {}
        for name, write, omit, nulls in self.writers:
            v = d[name]
            if v is None:
                if nulls is True or (nulls and any(d[n] is not None for n in nulls)):
                    out[name] = None
            elif omit is MISSING or v != omit:
                out[name] = v if write is None else write(v)
        if self.has_extra:
            out.update(d["extra"])
        return out


_SPECS: Dict[type, _Spec] = {}


def _spec(cls) -> _Spec:
    s = _SPECS.get(cls)
    if s is None:
        s = _SPECS[cls] = _Spec(cls)
    return s
