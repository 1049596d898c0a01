"""Hypothesis strategies for damaged YAML text, shared by the loader fuzzers.

The tree mutator of ``tests.policy.test_hostile_input`` keeps documents
well formed (it edits the parsed tree and dumps it again); these edit the
text itself, the way a hand edit or a broken deploy does: YAML punctuation
dropped in at random places, spans deleted or repeated, lines swapped,
indentation broken, tabs, a byte-order mark, tags that name Python objects,
anchors and aliases, several documents in one file.
"""

from __future__ import annotations

from hypothesis import strategies as st

TOKENS = (
    ":", ": ", "- ", "-", "{", "}", "[", "]", ",", "? ", "|", ">", "|-", "&a ", "*a", "*b",
    "<<: *a", "!!python/object/apply:os.system ['true']", "!!python/name:os.system",
    "!!binary aGk=", "!!str ", "!!int ", "!!float ", "!!map ", "!!set ", "!!timestamp ",
    "!custom ", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "---\n", "...\n", "#", "'", '"', "\\",
    "\t", "\n", "\n  ", "    ", "\r\n", "\r", "\x00", "\x07", "\ufeff", "\u2028", "\x85",
    ".nan", ".inf", "-.inf", "1e400", "0x1F", "0o17", "1:30", "2001-12-14", "2001-12-14t21:59",
    "~", "null", "yes", "no", "on", "=", "\uff11\uff12", "\u0663", "9" * 50, "x" * 300,
)

_token = st.sampled_from(TOKENS) | st.text(max_size=4)


@st.composite
def mutated_text(draw: st.DrawFn, text: str) -> str:
    """``text`` with one to five edits in YAML's own terms."""
    for _ in range(draw(st.integers(1, 5))):
        n = len(text)
        at = draw(st.integers(0, n))
        op = draw(st.sampled_from(["insert", "insert", "delete", "repeat", "swap_lines",
                                   "indent", "replace_line"]))
        if op == "insert":
            text = text[:at] + draw(_token) + text[at:]
        elif op == "delete":
            end = min(n, at + draw(st.integers(1, 40)))
            text = text[:at] + text[end:]
        elif op == "repeat":
            end = min(n, at + draw(st.integers(1, 200)))
            times = draw(st.sampled_from([1, 2, 10]))
            text = text[:end] + text[at:end] * times + text[end:]
        else:
            lines = text.split("\n")
            if not lines:
                continue
            i = draw(st.integers(0, len(lines) - 1))
            if op == "swap_lines":
                j = draw(st.integers(0, len(lines) - 1))
                lines[i], lines[j] = lines[j], lines[i]
            elif op == "indent":
                lines[i] = draw(st.sampled_from(["", " ", "  ", "\t", "     "])) + \
                    lines[i].lstrip(" ")
            else:
                lines[i] = draw(st.text(max_size=30) | _token)
            text = "\n".join(lines)
    return text


_scalar_text = st.one_of(
    st.sampled_from(["a", "b", "user:u1", "organization:acme", "view", "1", "-1", "true",
                     "''", '""', "~", ".nan", "0x10", "\u0663", "[]", "{}"]),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=10),
)


@st.composite
def random_yaml(draw: st.DrawFn, keys: tuple[str, ...]) -> str:
    """A small document of the loader's own keys and random values, as text: block and
    flow style, anchors, aliases, tags and odd scalars mixed."""
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.sampled_from(keys) | _scalar_text)
        style = draw(st.sampled_from(["scalar", "flow_list", "flow_map", "block_list",
                                      "block_map", "anchor", "alias"]))
        if style == "scalar":
            lines.append(f"{key}: {draw(_scalar_text)}")
        elif style == "flow_list":
            items = ", ".join(draw(st.lists(_scalar_text, max_size=4)))
            lines.append(f"{key}: [{items}]")
        elif style == "flow_map":
            items = ", ".join(f"{draw(st.sampled_from(keys) | _scalar_text)}: "
                              f"{draw(_scalar_text)}" for _ in range(draw(st.integers(0, 3))))
            lines.append(f"{key}: {{{items}}}")
        elif style == "block_list":
            lines.append(f"{key}:")
            lines += [f"  - {draw(_scalar_text)}" for _ in range(draw(st.integers(0, 3)))]
        elif style == "block_map":
            lines.append(f"{key}:")
            lines += [f"  {draw(st.sampled_from(keys) | _scalar_text)}: {draw(_scalar_text)}"
                      for _ in range(draw(st.integers(0, 3)))]
        elif style == "anchor":
            lines.append(f"{key}: &a [{draw(_scalar_text)}, {draw(_scalar_text)}]")
        else:
            lines.append(f"{key}: *a")
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\n---\nx: 1\n", "\n..."]))


def billion_laughs(levels: int, width: int = 10) -> str:
    """A document whose aliases expand to ``width ** levels`` values."""
    lines = ["a0: &a0 [x]"]
    for i in range(1, levels + 1):
        refs = ", ".join([f"*a{i - 1}"] * width)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


__all__ = ["TOKENS", "billion_laughs", "mutated_text", "random_yaml"]
