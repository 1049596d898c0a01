"""The keys file loader: a KeyTable, or every problem with its file:line:column.

Broken files live under ``tests/testdata/auth/keys/<case>.yaml`` with the exact
problem lines in ``<case>.expected.txt`` (``GATEHOUSE_UPDATE_GOLDEN=1`` rewrites them).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from gatehouse.auth.keys import Rate, load_keys, parse_keys
from gatehouse.errors import KeysFileError
from gatehouse.limits import LIMITS

CASES = Path(__file__).resolve().parents[1] / "testdata" / "auth" / "keys"
UPDATE_GOLDEN = os.environ.get("GATEHOUSE_UPDATE_GOLDEN") == "1"
BROKEN = sorted(p.stem for p in CASES.glob("*.yaml") if p.stem != "valid")
HASH = hashlib.sha256(b"test").hexdigest()


def problems_of(path: Path) -> list[str]:
    with pytest.raises(KeysFileError) as info:
        load_keys(path)
    return [str(p).replace(f"{CASES}{os.sep}", "") for p in info.value.problems]


class TestMalformedKeysFiles:
    @pytest.mark.parametrize("case", BROKEN)
    def test_reports_expected_problems(self, case: str) -> None:
        """A broken keys file loads nothing and reports exactly the lines in its expected file."""
        got = "".join(line + "\n" for line in problems_of(CASES / f"{case}.yaml"))
        expected = CASES / f"{case}.expected.txt"
        if UPDATE_GOLDEN:
            expected.write_text(got, encoding="utf-8")
        assert expected.exists(), f"no {expected}; run with GATEHOUSE_UPDATE_GOLDEN=1"
        assert got == expected.read_text(encoding="utf-8")

    @pytest.mark.parametrize("case", [c for c in BROKEN if c != "empty"])
    def test_every_problem_has_a_position(self, case: str) -> None:
        """Each problem inside a keys file names its 1-based line and column."""
        with pytest.raises(KeysFileError) as info:
            load_keys(CASES / f"{case}.yaml")
        assert all(p.line >= 1 and p.column >= 1 for p in info.value.problems)

    def test_a_key_pasted_as_its_hash_is_never_repeated(self) -> None:
        """A raw key written where the hash belongs does not appear in the problem."""
        text = "\n".join(problems_of(CASES / "bad_sha256.yaml"))
        assert "gh_secret" not in text and "9F86D0" not in text


class TestValidKeysFile:
    def test_every_field_is_read(self) -> None:
        """Names, hashes, scopes, tenants, rates and certificate subjects come through."""
        table = load_keys(CASES / "valid.yaml")
        assert table.names == ("billing-service", "ops.admin_1")
        billing = table.by_digest[hashlib.sha256(b"test").digest()]
        assert billing.caller.name == "billing-service"
        assert billing.caller.scopes == frozenset({"check", "read"})
        assert billing.caller.organizations == frozenset({"acme", "initech"})
        assert billing.rate == Rate(2.5, 3, 8)  # burst defaults to ceil(rate)
        assert table.by_subject["CN=billing,O=Acme"] is billing
        ops = table.keys[1]
        assert ops.caller.organizations is None and ops.rate is None

    def test_an_empty_list_lets_nobody_in(self) -> None:
        """`keys: []` is a valid table with no keys (every call UNAUTHENTICATED)."""
        assert parse_keys("keys: []\n", "k.yaml").keys == ()


class TestBounds:
    def test_a_file_past_the_byte_limit_is_refused_unparsed(self, tmp_path: Path) -> None:
        """A keys file larger than api_keys_file_bytes is one problem naming the bound."""
        path = tmp_path / "keys.yaml"
        path.write_text("keys: []\n" + "#" * LIMITS.api_keys_file_bytes)
        with pytest.raises(KeysFileError) as info:
            load_keys(path)
        assert "larger than 1,048,576 bytes" in str(info.value)

    def test_more_keys_than_the_limit_are_refused(self) -> None:
        """A file with more than api_keys entries fails with the count and the bound."""
        text = "keys:\n" + "  - {}\n" * (LIMITS.api_keys + 1)
        with pytest.raises(KeysFileError) as info:
            parse_keys(text, "k.yaml")
        assert f"{LIMITS.api_keys + 1} keys; at most {LIMITS.api_keys}" in str(info.value)

    def test_a_missing_file_is_a_problem_not_a_crash(self, tmp_path: Path) -> None:
        """An unreadable keys file raises KeysFileError naming the file."""
        with pytest.raises(KeysFileError) as info:
            load_keys(tmp_path / "absent.yaml")
        assert "absent.yaml" in str(info.value) and "cannot read" in str(info.value)

    def test_binary_content_is_refused(self, tmp_path: Path) -> None:
        """A file that is not UTF-8 text is refused with the offending byte's offset."""
        path = tmp_path / "keys.yaml"
        path.write_bytes(b"keys: []\n\xff\xfe")
        with pytest.raises(KeysFileError) as info:
            load_keys(path)
        assert "not UTF-8" in str(info.value)
