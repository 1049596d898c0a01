"""Names every layer shares: type and id syntax, object keys and how they split."""

from __future__ import annotations

import pytest

from gatehouse.errors import InvalidArgument, quote
from gatehouse.names import object_key, split_key, type_of, validate_id, validate_type


class TestValidateType:
    @pytest.mark.parametrize("name", ["user", "data_flow", "a1", "x" * 64])
    def test_accepts_lowercase_names(self, name: str) -> None:
        """Lowercase letters, digits and '_' starting with a letter are type names."""
        assert validate_type(name, "f") == name

    @pytest.mark.parametrize("name", ["User", "1user", "_user", "data-flow", "a b", "x" * 65])
    def test_rejects_other_names(self, name: str) -> None:
        """Anything else is an InvalidArgument naming the field."""
        with pytest.raises(InvalidArgument) as info:
            validate_type(name, "resource.type")
        assert info.value.field == "resource.type"
        assert quote(name) in info.value.reason

    def test_empty_is_required(self) -> None:
        """An empty type says the field is required."""
        with pytest.raises(InvalidArgument, match=r"^resource\.type: is required$"):
            validate_type("", "resource.type")


class TestValidateId:
    @pytest.mark.parametrize("value", ["alice", "ws_1", "a.b-c=d+e/f|g", "0", "x" * 256])
    def test_accepts_ids(self, value: str) -> None:
        """Letters, digits and _ . - = + / | make an id, up to 256 characters."""
        assert validate_id(value, "f") == value

    @pytest.mark.parametrize("value", ["-lead", ".hidden", "a b", "a:b", "a#b", "a@b", "x" * 257])
    def test_rejects_other_ids(self, value: str) -> None:
        """Ids starting with punctuation or holding separators are rejected."""
        with pytest.raises(InvalidArgument) as info:
            validate_id(value, "subject.id")
        assert info.value.field == "subject.id"

    def test_empty_is_required(self) -> None:
        """An empty id says the field is required."""
        with pytest.raises(InvalidArgument, match=r"^subject\.id: is required$"):
            validate_id("", "subject.id")

    def test_rejects_trailing_newline(self) -> None:
        """An id ending in a newline is not an id."""
        with pytest.raises(InvalidArgument):
            validate_id("alice\n", "subject.id")


class TestKeys:
    def test_split_is_the_inverse_of_object_key(self) -> None:
        """A key splits back into the type and id it was made of."""
        assert split_key(object_key("data_flow", "f1")) == ("data_flow", "f1")
        assert type_of("data_flow:f1") == "data_flow"

    def test_only_the_first_colon_separates(self) -> None:
        """A key splits at its first ':' only, whatever follows."""
        assert split_key("data_flow:a:b") == ("data_flow", "a:b")

    def test_a_long_bad_id_is_quoted_short(self) -> None:
        """An error about a huge id quotes a short prefix and the length, not the whole id."""
        with pytest.raises(InvalidArgument) as info:
            validate_id("a b" * 5000, "subject.id")
        assert len(info.value.reason) < 200 and "(15000 characters)" in info.value.reason
