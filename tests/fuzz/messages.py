"""Hypothesis strategies for hostile gatehouse.v1 requests, built from the protos.

Every request message of every RPC is generated from its descriptor, so a
field added to a proto is fuzzed without touching this module. Each string
field draws from two pools: values the served policy and data know (so a
request gets past its first check and reaches the code behind it) and
hostile text (huge, every Unicode category, control characters, NUL,
non-ASCII digits, near-miss names). Numbers go to their type's limits and
past the service's own; enums take values no proto declares; Structs come
deep, wide, near the size cap and with NaN or Infinity inside.

``wire`` turns a valid message into bytes protobuf would never write:
unknown fields, a known field with the wrong wire type, strings that are not
UTF-8, truncated or random bytes.
"""

from __future__ import annotations

import base64
import hashlib
import struct as binary
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from hypothesis import strategies as st

from gatehouse.limits import LIMITS
from gatehouse.v1 import admin_pb2, authorization_pb2, graph_pb2, tenancy_pb2, usage_pb2

FILES = (authorization_pb2, graph_pb2, usage_pb2, tenancy_pb2, admin_pb2)


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC as the fuzzer calls it: path, message classes and streaming shape."""

    path: str
    name: str
    request: type[Message]
    response: type[Message]
    server_streaming: bool

    def __str__(self) -> str:
        return self.path.rsplit("/", 2)[-2].rsplit(".", 1)[-1] + "." + self.name


def _method(service: str, desc: MethodDescriptor) -> Method:
    return Method(f"/{service}/{desc.name}", desc.name,
                  message_factory.GetMessageClass(desc.input_type),
                  message_factory.GetMessageClass(desc.output_type),
                  desc.server_streaming)


METHODS: tuple[Method, ...] = tuple(
    _method(service.full_name, m)
    for module in FILES for service in module.DESCRIPTOR.services_by_name.values()
    for m in service.methods)

# -- what the served policy (coupler) and data file know ------------------------------

TYPES = ("user", "organization", "workspace", "data_flow", "dashboard", "connection",
         "ai_chat", "invitation", "access_link", "email_domain")
IDS = ("example", "acct", "mystery", "a", "b", "marketing", "engineering", "m1", "user1",
       "user2", "owner", "noemail", "user1-alias", "m-asana-1", "m-gads-1", "m-flow-1",
       "e-flow-1", "e-csv-1", "fz-new", "fz-other")
REFS = ("user:user1", "user:owner", "user:user2", "user:noemail", "organization:example",
        "organization:acct", "workspace:a", "workspace:b", "workspace:marketing",
        "data_flow:m-flow-1", "connection:m-asana-1", "connection:m-gads-1", "user:fz-new",
        "workspace:fz-new", "dashboard:fz-new", "ai_chat:fz-new")
NAMES = {
    "type": TYPES, "resource_type": TYPES, "subject_type": TYPES,
    "action": ("view", "edit", "run", "delete", "use", "manage_members", "create_workspace",
               "manage_billing", "request_accounts", "*"),
    "relation": ("parent", "owner", "admin", "user", "guest", "uses", "ai_workspace"),
    "role": ("owner", "admin", "user", "guest", "", "client"),
    "email": ("user1@example.com", "owner@example.com", "new@example.com", "x@gmail.com",
              "USER1@EXAMPLE.COM", "a@b", "@example.com", "user1@example.com\x00"),
    "name": ("Workspace A", "Example Co", "Fuzz", "x" * 100, "x" * 101),
    "confirm_name": ("Workspace A", "Workspace B", "My workspace"),
    "slug": ("ws-a", "ws-b", "fz-slug", "-bad", "a", "x" * 50, "x" * 51),
    "plan": ("free", "pro", "business", "platinum-deluxe"),
    "metric": ("users", "workspaces", "llm_credits", "accounts", "destination_types",
               "source_import_rows"),
    "metrics": ("users", "workspaces", "llm_credits", "accounts"),
    "source_type": ("asana", "google_ads", "csv"),
    "domain": ("example.com", "gmail.com", "fz.example", "EXAMPLE.COM", "example.com."),
    "period": ("2026-11", "2026-13", "2026-00", "0000-01", "9999-12", "current"),
    "dimension": ("asana", "", "d" * 256, "d" * 257),
    "tenants": ("ads-1", "ads-2", "ads-9"),
}
ID_FIELDS = ("id", "resource_id", "subject_id", "organization_id", "workspace_id",
             "to_workspace_id", "invitation_id", "link_id", "connection_id", "event_id",
             "credential_id")
REVISION_FIELDS = ("at_least_as_fresh", "after_revision")

# Digits that are digits to ``str.isdigit`` but not to a revision parser, and other
# near-numbers.
NON_ASCII_DIGITS = ("\u00b2", "\u0663", "\uff13", "1\u00b2", "\u0663\u0663", "\u096a",
                    "\U0001d7ce", "\u1369", "+1", " 1", "1 ", "-1", "1e3", "0x1", "1_0",
                    "01", "", "1.0", "\u0661\u0662\u0663")
HUGE_NUMBERS = ("18446744073709551615", "18446744073709551616", "9223372036854775807",
                "9223372036854775808", "1" * 21, "9" * 400)

# -- text --------------------------------------------------------------------------

# Every category but surrogates (a protobuf string must be UTF-8; lone surrogates are
# sent as raw wire bytes by ``wire``).
_any_char = st.characters(exclude_categories=["Cs"])
_controls = st.sampled_from(["\x00", "\x01", "\x1f", "\x7f", "\x85", "\u2028", "\u2029",
                             "\ufeff", "\u200b", "\u202e", "\ufffd", "\uffff", "\U0010ffff",
                             "\t", "\n", "\r"])
_lengths = st.sampled_from([LIMITS.id_chars - 1, LIMITS.id_chars, LIMITS.id_chars + 1,
                            LIMITS.type_chars, LIMITS.type_chars + 1, LIMITS.cursor_chars,
                            LIMITS.cursor_chars + 1, 65_536, 1 << 20])


@st.composite
def _huge(draw: st.DrawFn) -> str:
    n = draw(_lengths)
    return draw(st.sampled_from(["x", "a", "\u00e9", "\U0001f600", "\x00", "9", "\u0663"])) * n


def _near(seed: str) -> st.SearchStrategy[str]:
    """A known value, changed a little: case, width, a control or separator appended."""
    return st.sampled_from([
        seed.upper(), seed + "\x00", seed + " ", " " + seed, seed + "\n", seed + ":x",
        seed + "#x", seed + "@x", seed + "{x}", "\uff41" + seed, seed.replace("a", "\u0430"),
        seed + "\u0301", seed * 3, seed[:-1],
    ])


hostile_text: st.SearchStrategy[str] = st.one_of(
    st.text(_any_char, max_size=20),
    st.text(st.characters(categories=["Cc", "Cf", "Co", "Cn", "Zl", "Zp", "Zs", "Mn"]),
            min_size=1, max_size=8),
    st.text(st.characters(categories=["Nd", "Nl", "No"]), min_size=1, max_size=8),
    _controls,
    st.sampled_from(NON_ASCII_DIGITS),
    _huge(),
)

# -- numbers -----------------------------------------------------------------------

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_INTERESTING_INTS = (0, 1, -1, 2, 7, 100, 999, 1000, 1001, 9999, 10_000, 10_001, 86_400,
                     2**31 - 1, 2**31, 2**32 - 1, 2**53, 2**53 + 1, 2**63 - 1, -(2**63),
                     2**64 - 1)


def integers_of(kind: int) -> st.SearchStrategy[int]:
    lo, hi = _INT_RANGES[kind]
    return st.one_of(st.sampled_from([i for i in _INTERESTING_INTS if lo <= i <= hi]),
                     st.integers(lo, hi))


doubles: st.SearchStrategy[float] = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1e12, 1e12 + 1, 1e13, 2.0**53, 2.0**53 + 2,
                     1e308, -1e308, 5e-324, float("nan"), float("inf"), float("-inf")]),
    st.floats(allow_nan=True, allow_infinity=True),
)

# -- Struct ------------------------------------------------------------------------

_struct_keys = st.one_of(st.sampled_from(["shared", "ip", "owner", "x", "", "a.b", "0",
                                          "__class__"]), hostile_text)
_json_leaves = st.one_of(st.none(), st.booleans(), doubles, hostile_text,
                         st.sampled_from(["", "true", "acme", "1"]))
_json = st.recursive(_json_leaves,
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(_struct_keys, inner, max_size=4),
                     max_leaves=12)


def _fill_value(target: Any, value: Any) -> None:
    """Set a google.protobuf.Value from a plain value (numbers may be NaN or Infinity)."""
    if value is None:
        target.null_value = 0
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, float | int):
        target.number_value = float(value)
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, list):
        lst = target.list_value
        lst.SetInParent()
        for item in value:
            _fill_value(lst.values.add(), item)
    else:
        st_ = target.struct_value
        st_.SetInParent()
        for key, item in value.items():
            _fill_value(st_.fields[key], item)


def nested_struct(depth: int, via_list: bool = False) -> Struct:
    """A Struct nested ``depth`` levels deep (through lists when ``via_list``)."""
    inner = Struct()
    inner.fields["leaf"].number_value = 1
    for _ in range(depth - 1):
        outer = Struct()
        if via_list:
            outer.fields["k"].list_value.values.add().struct_value.CopyFrom(inner)
        else:
            outer.fields["k"].struct_value.CopyFrom(inner)
        inner = outer
    return inner


@st.composite
def structs(draw: st.DrawFn) -> Struct:
    """Small random Structs, deep ones, wide ones and ones at the size caps."""
    kind = draw(st.sampled_from(["json", "json", "json", "deep", "wide", "sized"]))
    out = Struct()
    if kind == "json":
        for key, value in draw(st.dictionaries(_struct_keys, _json, max_size=5)).items():
            _fill_value(out.fields[key], value)
    elif kind == "deep":
        depth = draw(st.sampled_from([LIMITS.context_depth - 1, LIMITS.context_depth,
                                      LIMITS.context_depth + 1, 20, 31, 32, 33, 64]))
        out = nested_struct(depth, draw(st.booleans()))
    elif kind == "wide":
        n = draw(st.sampled_from([100, 1000, 5000]))
        for i in range(n):
            out.fields[f"k{i}"].number_value = i
    else:
        target = draw(st.sampled_from([LIMITS.context_bytes, LIMITS.attributes_bytes]))
        delta = draw(st.sampled_from([-1, 0, 1, 1000]))
        out.fields["blob"].string_value = "y" * max(0, target + delta - 9)
    return out


# -- cursors and tokens --------------------------------------------------------------


def forged_cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode("utf-8", "surrogatepass")).decode().rstrip("=")


@st.composite
def cursors(draw: st.DrawFn, harvested: Sequence[str]) -> str:
    """Random text, base64 of random bytes, well-formed cursors with forged parts, and
    real cursors of other queries."""
    tag = hashlib.sha256(draw(hostile_text).encode()).hexdigest()[:16]
    revision = draw(st.sampled_from(["0", "1", "5", *NON_ASCII_DIGITS, *HUGE_NUMBERS]))
    position = draw(st.lists(hostile_text, max_size=4))
    return draw(st.one_of(
        hostile_text,
        st.binary(max_size=64).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
        st.just(forged_cursor("\x1f".join(["c1", tag, revision, *position]))),
        st.just(forged_cursor("\x1f".join(["c1", tag, revision, "a", "b", "c"]))),
        st.sampled_from(list(harvested) or ["!"]),
        st.sampled_from(list(harvested) or ["!"]).map(lambda c: c[:-1] + ("A" if c[-1:] != "A"
                                                                          else "B")),
    ))


@st.composite
def tokens(draw: st.DrawFn, harvested: Sequence[str]) -> str:
    """Invitation and access-link tokens: forged, mutated real ones, and real ones."""
    real = st.sampled_from(list(harvested) or ["x"])
    return draw(st.one_of(
        hostile_text,
        st.binary(min_size=1, max_size=48).map(
            lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
        real,
        real.map(lambda t: t[:-2] + "AA"),
        real.map(lambda t: t.split(".", 1)[0] + "." if "." in t else t + "."),
        real.map(lambda t: t + "\x00"),
        real.map(lambda t: t.upper()),
    ))


# -- whole messages ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seeds:
    """Values harvested from the running server (cursors, tokens) to forge from."""

    cursors: tuple[str, ...] = ()
    tokens: tuple[str, ...] = ()
    revisions: tuple[str, ...] = ()
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _string(name: str, seeds: Seeds) -> st.SearchStrategy[str]:
    if name == "cursor":
        return cursors(seeds.cursors)
    if name == "token":
        return tokens(seeds.tokens)
    if name in REVISION_FIELDS:
        return st.one_of(st.sampled_from(list(seeds.revisions) or ["0"]),
                         st.sampled_from(NON_ASCII_DIGITS), st.sampled_from(HUGE_NUMBERS),
                         hostile_text)
    known: tuple[str, ...] = seeds.extra.get(name, ()) + NAMES.get(name, ())
    if name in ID_FIELDS:
        known += IDS
    if not known:
        return hostile_text
    return st.one_of(st.sampled_from(known), st.sampled_from(known).flatmap(_near),
                     hostile_text)


def _scalar(fd: FieldDescriptor, seeds: Seeds) -> st.SearchStrategy[Any]:
    if fd.type == FieldDescriptor.TYPE_STRING:
        return _string(fd.name, seeds)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return doubles
    if fd.type == FieldDescriptor.TYPE_ENUM:
        declared = [v.number for v in fd.enum_type.values]
        return st.one_of(st.sampled_from(declared),
                         st.sampled_from([max(declared) + 1, -1, 2**31 - 1, -(2**31)]),
                         st.integers(-(2**31), 2**31 - 1))
    return integers_of(fd.type)


_COUNTS = st.one_of(st.integers(0, 3), st.sampled_from([0, 1, 2, 5]),
                    st.sampled_from([LIMITS.bulk_items, LIMITS.bulk_items + 1,
                                     LIMITS.metrics_per_request + 1]))


_REPEATED_BYTES = LIMITS.message_bytes + (1 << 20)
"""A long repeated field is cut to about this many bytes (a little past the wire cap)."""


def _repeated(fd: FieldDescriptor) -> bool:
    flag = getattr(fd, "is_repeated", None)  # protobuf >= 6; ``label`` before it
    return bool(flag) if flag is not None else fd.label == FieldDescriptor.LABEL_REPEATED


def _set_ref(msg: Message, text: str) -> None:
    type_, _, id_ = text.partition(":")
    msg.type, msg.id = type_, id_  # type: ignore[attr-defined]


@st.composite
def messages(draw: st.DrawFn, desc: Descriptor, seeds: Seeds, depth: int = 0) -> Message:
    """A message of ``desc`` with each field left unset or set to a hostile value."""
    msg = message_factory.GetMessageClass(desc)()
    if desc.full_name == "google.protobuf.Struct":
        return draw(structs())
    if desc.full_name == "google.protobuf.Timestamp":
        msg.seconds = draw(integers_of(FieldDescriptor.TYPE_INT64)
                           | st.sampled_from([1_700_000_000, -62135596801, 253402300800]))
        msg.nanos = draw(integers_of(FieldDescriptor.TYPE_INT32)
                         | st.sampled_from([0, 999_999_999, 1_000_000_000]))
        return msg
    if desc.full_name == "gatehouse.v1.ObjectReference" and draw(st.integers(0, 2)) > 0:
        _set_ref(msg, draw(st.sampled_from(REFS)))
        if draw(st.integers(0, 3)) == 0:
            name = draw(st.sampled_from(["type", "id"]))
            setattr(msg, name, draw(_string(name, seeds)))
        return msg
    chosen_oneofs = {o.name: draw(st.sampled_from([None, *[f.name for f in o.fields]]))
                     for o in desc.oneofs}
    for fd in desc.fields:
        oneof = fd.containing_oneof
        if oneof is not None and chosen_oneofs[oneof.name] != fd.name:
            continue
        if oneof is None and draw(st.integers(0, 9)) < 3:
            continue  # left unset
        if _repeated(fd):
            count = draw(_COUNTS) if depth < 2 else draw(st.integers(0, 2))
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                items = [draw(messages(fd.message_type, seeds, depth + 1))
                         for _ in range(min(count, 4))]
                largest = max((m.ByteSize() for m in items), default=0)
                if count > 4 and largest * count > _REPEATED_BYTES:
                    # Past the message cap either way: keep building it cheap.
                    count = max(5, _REPEATED_BYTES // largest)
                target = getattr(msg, fd.name)
                for i in range(count):
                    target.add().CopyFrom(items[i % len(items)]) if items else None
            else:
                values = [draw(_scalar(fd, seeds)) for _ in range(min(count, 4))]
                largest = max((len(v) for v in values if isinstance(v, str | bytes)), default=0)
                if count > 4 and largest * count > _REPEATED_BYTES:
                    count = max(5, _REPEATED_BYTES // largest)
                getattr(msg, fd.name).extend(values[i % len(values)] for i in range(count)
                                             if values)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            if depth > 3:
                continue
            getattr(msg, fd.name).CopyFrom(draw(messages(fd.message_type, seeds, depth + 1)))
        else:
            setattr(msg, fd.name, draw(_scalar(fd, seeds)))
    return msg


# -- the wire ------------------------------------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + varint(len(payload)) + payload


@st.composite
def unknown_fields(draw: st.DrawFn) -> bytes:
    """Fields no gatehouse message declares, of every wire type."""
    number = draw(st.sampled_from([99, 1000, 2**29 - 1, 19_000]))
    kind = draw(st.sampled_from([0, 1, 2, 5]))
    if kind == 0:
        return tag(number, 0) + varint(draw(st.integers(0, 2**64 - 1)))
    if kind == 1:
        return tag(number, 1) + binary.pack("<d", draw(doubles))
    if kind == 5:
        return tag(number, 5) + binary.pack("<I", draw(st.integers(0, 2**32 - 1)))
    return length_delimited(number, draw(st.binary(max_size=32)))


@st.composite
def wrong_wire_type(draw: st.DrawFn, desc: Descriptor) -> bytes:
    """A declared field of ``desc`` encoded with a wire type that is not its own."""
    if not desc.fields:
        return draw(unknown_fields())
    fd = draw(st.sampled_from(list(desc.fields)))
    if fd.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE,
                   FieldDescriptor.TYPE_BYTES):
        return tag(fd.number, draw(st.sampled_from([0, 1, 5]))) + varint(
            draw(st.integers(0, 2**64 - 1))) + b"\x00" * 8
    return length_delimited(fd.number, draw(st.binary(max_size=16)))


@st.composite
def bad_utf8(draw: st.DrawFn, desc: Descriptor) -> bytes:
    """A string field (top level, or inside a first-level message) holding bytes that are
    not UTF-8: lone surrogates, overlong forms, truncated sequences."""
    junk = draw(st.sampled_from([b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xc0\x80", b"\xff",
                                 b"\xe2\x82", b"a\x80b", b"\xf4\x90\x80\x80"]))
    strings = [f for f in desc.fields if f.type == FieldDescriptor.TYPE_STRING]
    nested = [f for f in desc.fields if f.type == FieldDescriptor.TYPE_MESSAGE
              and any(g.type == FieldDescriptor.TYPE_STRING for g in f.message_type.fields)]
    if nested and (not strings or draw(st.booleans())):
        outer = draw(st.sampled_from(nested))
        inner = draw(st.sampled_from([g for g in outer.message_type.fields
                                      if g.type == FieldDescriptor.TYPE_STRING]))
        return length_delimited(outer.number, length_delimited(inner.number, junk))
    if strings:
        return length_delimited(draw(st.sampled_from(strings)).number, junk)
    return junk


@st.composite
def raw_requests(draw: st.DrawFn, desc: Descriptor, valid: Callable[[], st.SearchStrategy[bytes]]
                 ) -> bytes:
    """Bytes for a request of ``desc``: a valid message spliced with wire-level damage."""
    base = draw(valid())
    kind = draw(st.sampled_from(["unknown", "wrong_type", "utf8", "truncated", "random",
                                 "random", "repeated_field"]))
    if kind == "unknown":
        return base + draw(unknown_fields())
    if kind == "wrong_type":
        return base + draw(wrong_wire_type(desc))
    if kind == "utf8":
        return draw(bad_utf8(desc)) + base
    if kind == "truncated":
        return base[:draw(st.integers(0, max(0, len(base) - 1)))] + draw(st.binary(max_size=3))
    if kind == "repeated_field":
        return base + base  # a message concatenated with itself: fields merge
    return draw(st.binary(max_size=256))


__all__ = ["METHODS", "Method", "Seeds", "messages", "raw_requests"]
