"""Fuzzing the loaders of operator files: bootstrap data files (``--data``), API keys
files (``--api-keys``) and the config file (``--config``). Policy files have their own
fuzzer in tests/policy/test_hostile_input.py, which also runs the text mutations here.

The contract each loader keeps, whatever the bytes: a result, or its own error
listing every problem with a position in the file (``file:line:col``), messages
quoting at most a short prefix of the bad input; never another exception, never
a hang, and bounded work for input up to (and just past) the caps in limits.py.

``make test`` runs a fixed, derandomized set; ``GATEHOUSE_FUZZ_EXAMPLES`` (``make fuzz``)
runs more.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatehouse.auth.keys import KeyTable, load_keys, parse_keys
from gatehouse.config.resolve import MAX_FILE_BYTES, MAX_FILE_VALUES, ConfigError, resolve
from gatehouse.config.table import SETTINGS
from gatehouse.errors import DataFileError, FailedPrecondition, KeysFileError, Problem
from gatehouse.graph.bootstrap import load_data
from gatehouse.graph.conformance import Backend, MemoryBackend, RedisBackend
from gatehouse.graph.datafile import load_data_file, load_data_text
from gatehouse.limits import LIMITS
from gatehouse.policy.loader import load_policy
from gatehouse.sourcemap import MAX_ALIAS_VALUES
from tests.conftest import ROOT
from tests.fuzz.yamltext import billion_laughs, mutated_text, random_yaml
from tests.policy.test_hostile_input import _edits, mutate
from tests.redis_server import RedisServer

EXAMPLES = int(os.environ.get("GATEHOUSE_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES or 75, deadline=None, derandomize=EXAMPLES == 0,
                database=None, suppress_health_check=list(HealthCheck))
FEW = settings(FUZZ, max_examples=(EXAMPLES // 5) or 20)
BOUND_SECONDS = 120.0
"""A loader still running after this long has hung (a bounded wait, not a timing)."""
MESSAGE_CHARS = 600
"""No problem message is longer: each quotes at most a short prefix of bad input."""

POLICY = load_policy(ROOT / "policies" / "coupler")
DATA_FILES = {"example": ROOT / "examples" / "coupler.data.yaml",
              "billing": ROOT / "tests" / "testdata" / "usage" / "billing.data.yaml"}
DATA_TEXT = {name: path.read_text(encoding="utf-8") for name, path in DATA_FILES.items()}
DATA_TREES = {name: yaml.safe_load(text) for name, text in DATA_TEXT.items()}
KEYS_TEXT = (ROOT / "tests" / "testdata" / "auth" / "keys" / "valid.yaml").read_text()
KEYS_TREE = yaml.safe_load(KEYS_TEXT)
CONFIG_TEXT = (ROOT / "examples" / "gatehouse.yaml").read_text()

T = TypeVar("T")


def bounded(fn: Callable[[], T], seconds: float = BOUND_SECONDS) -> T:
    """``fn()``, failing the test if it has not returned within ``seconds`` (a hang)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"the loader did not return within {seconds:g} s"
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def assert_problems(problems: list[Problem], file: str) -> None:
    """Every problem names the file and a 1-based position, briefly."""
    assert problems
    for p in problems:
        assert p.file == file, p
        assert p.line >= 1 and p.column >= 1, p
        assert len(p.message) <= MESSAGE_CHARS, f"{len(p.message)} characters: {p}"


# -- data files ---------------------------------------------------------------------------


def check_data_text(text: str) -> list[Any] | None:
    """Load ``text`` as a data file: the operations, or None after checking the problems."""
    try:
        return bounded(lambda: load_data_text(text, "data.yaml", POLICY))
    except DataFileError as exc:
        assert_problems(exc.problems, "data.yaml")
        return None


def store_load(backend: Backend, path: Path) -> None:
    """Load the file at ``path`` into a fresh store: written whole, or refused with nothing
    written (the store's revision unchanged)."""
    async def main() -> None:
        async with backend.open() as store:
            before = await store.head_revision()
            try:
                after = await load_data(store, POLICY, path)
            except (DataFileError, FailedPrecondition):
                assert await store.head_revision() == before
            else:
                assert after >= before
                # Loading again is idempotent: nothing new is committed.
                assert await load_data(store, POLICY, path) == after

    bounded(lambda: asyncio.run(main()))


class TestDataFiles:
    @FUZZ
    @given(st.sampled_from(sorted(DATA_TREES)), _edits)
    def test_mutated_trees_load_or_report_positions(self, name: str,
                                                    edits: list[tuple[int, str, Any]]) -> None:
        """A shipped data file with values replaced, deleted, duplicated, re-keyed or
        retyped (NaN, 1:30, dates, !!binary, 10**30, lists where names belong) loads or
        raises DataFileError with positioned problems."""
        check_data_text(mutate(DATA_TREES[name], edits))

    @FUZZ
    @given(st.sampled_from(sorted(DATA_TEXT)).flatmap(lambda n: mutated_text(DATA_TEXT[n])))
    def test_mutated_text_loads_or_reports_positions(self, text: str) -> None:
        """The text itself damaged (punctuation, tabs, tags, aliases, spans cut or
        repeated) loads or is reported with positions."""
        check_data_text(text)

    @FUZZ
    @given(random_yaml(("objects", "relationships")))
    def test_random_documents(self, text: str) -> None:
        """Random small documents of the data file's keys load or are reported."""
        check_data_text(text)

    @FEW
    @given(st.sampled_from(sorted(DATA_TREES)), _edits)
    def test_what_loads_is_written_whole_to_the_memory_store(
            self, tmp_path_factory: pytest.TempPathFactory, name: str,
            edits: list[tuple[int, str, Any]]) -> None:
        """What the loader accepts, a memory store takes whole (or refuses whole)."""
        text = mutate(DATA_TREES[name], edits)
        if check_data_text(text) is None:
            return
        path = tmp_path_factory.mktemp("data") / "data.yaml"
        path.write_text(text, encoding="utf-8")
        store_load(MemoryBackend(), path)

    def test_what_loads_is_written_whole_to_redis(self, redis_server: RedisServer,
                                                  tmp_path: Path) -> None:
        """The same on Redis, where attributes travel as JSON: fewer examples."""
        @settings(FEW, max_examples=(EXAMPLES // 20) or 10)
        @given(st.sampled_from(sorted(DATA_TREES)), _edits)
        def case(name: str, edits: list[tuple[int, str, Any]]) -> None:
            text = mutate(DATA_TREES[name], edits)
            if check_data_text(text) is None:
                return
            path = tmp_path / f"{uuid.uuid4().hex}.yaml"
            path.write_text(text, encoding="utf-8")
            store_load(RedisBackend(redis_server.url), path)

        case()

    def test_deep_nesting_and_alias_bombs_are_refused_with_a_position(self) -> None:
        """Nesting past the depth cap and aliases that expand past the value cap are
        problems, not a RecursionError or a long expansion."""
        with pytest.raises(DataFileError) as info:
            load_data_text("objects: " + "[" * 1000 + "]" * 1000, "data.yaml", POLICY)
        assert_problems(info.value.problems, "data.yaml")
        with pytest.raises(DataFileError) as info:
            bounded(lambda: load_data_text(billion_laughs(9), "data.yaml", POLICY))
        assert [p.message for p in info.value.problems] == [
            f"aliases (*name) expand to more than {MAX_ALIAS_VALUES} values"]


# -- API keys files ----------------------------------------------------------------------


def check_keys_text(text: str) -> KeyTable | None:
    try:
        return bounded(lambda: parse_keys(text, "keys.yaml"))
    except KeysFileError as exc:
        assert_problems(exc.problems, "keys.yaml")
        return None


class TestKeysFiles:
    @FUZZ
    @given(_edits)
    def test_mutated_trees_load_or_report_positions(self,
                                                    edits: list[tuple[int, str, Any]]) -> None:
        """The valid keys file with values replaced, deleted, duplicated, re-keyed or
        retyped loads or raises KeysFileError with positioned problems."""
        check_keys_text(mutate(KEYS_TREE, edits))

    @FUZZ
    @given(mutated_text(KEYS_TEXT))
    def test_mutated_text_loads_or_reports_positions(self, text: str) -> None:
        """Damaged text loads or is reported with positions."""
        check_keys_text(text)

    @FUZZ
    @given(random_yaml(("keys", "name", "sha256", "scopes", "organizations", "rate",
                        "client_certificates")))
    def test_random_documents(self, text: str) -> None:
        """Random small documents of the keys file's own words load or are reported."""
        check_keys_text(text)

    def test_a_file_at_the_key_count(self, tmp_path: Path) -> None:
        """LIMITS.api_keys keys load within the byte cap (only just: the entries share
        their scopes through an alias); one more is refused (tests/auth/test_keys.py)."""
        count = LIMITS.api_keys
        lines = ["keys:"]
        for i in range(count):
            scopes = "&s [check]" if i == 0 else "*s"
            digest = hashlib.sha256(str(i).encode()).hexdigest()
            lines.append(f"- {{name: k{i}, sha256: {digest}, scopes: {scopes}}}")
        path = tmp_path / "keys.yaml"
        path.write_text("\n".join(lines) + "\n")
        assert path.stat().st_size <= LIMITS.api_keys_file_bytes
        assert len(bounded(lambda: load_keys(path)).keys) == count

    @pytest.mark.parametrize("extra", [0, 1])
    def test_a_file_at_and_past_the_byte_cap(self, tmp_path: Path, extra: int) -> None:
        """A file of exactly LIMITS.api_keys_file_bytes is read; one byte more is refused
        before it is parsed."""
        head = KEYS_TEXT.encode()
        path = tmp_path / "keys.yaml"
        path.write_bytes(head + b"#" * (LIMITS.api_keys_file_bytes - len(head) + extra))
        if extra:
            with pytest.raises(KeysFileError) as info:
                load_keys(path)
            assert [p.message for p in info.value.problems] == [
                f"larger than {LIMITS.api_keys_file_bytes:,} bytes"]
        else:
            assert len(load_keys(path).keys) == 2

    def test_alias_bombs_are_refused(self) -> None:
        """A keys file of aliases expanding exponentially is refused by position or cap."""
        with pytest.raises(KeysFileError) as info:
            bounded(lambda: parse_keys(billion_laughs(9), "keys.yaml"))
        assert_problems(info.value.problems, "keys.yaml")


# -- the config file ---------------------------------------------------------------------

_CONFIG_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(),
    st.sampled_from(["127.0.0.1:50051", "[::1]:0", "0.0.0.0:99999", "localhost:",
                     "redis://localhost:1/0", "redis://u:p@h/0", "rediss://", "http://x",
                     "policies/coupler", "/dev/zero", "/nonexistent", "", "auto", "core",
                     "info", "debug", "LOUD", "1", "-1", "1e3", "\u0663"]),
    st.text(max_size=20), st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
_SETTING_NAMES = tuple(s.name for s in SETTINGS)


def check_config_text(tmp: Path, text: str) -> None:
    path = tmp / f"{uuid.uuid4().hex}.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        bounded(lambda: resolve({}, {}, str(path)))
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.startswith((str(path), "config (")) or " (file " in problem \
                or f"{path}:" in problem, problem
            assert len(problem) <= MESSAGE_CHARS + len(str(path)) * 2, problem
    finally:
        path.unlink()


class TestConfigFile:
    @FUZZ
    @given(st.dictionaries(st.sampled_from(_SETTING_NAMES) | st.text(max_size=8),
                           _CONFIG_VALUES, max_size=6))
    def test_generated_settings_resolve_or_report(self, tmp_path_factory:
                                                  pytest.TempPathFactory,
                                                  tree: dict[str, Any]) -> None:
        """Every setting given a value of any type resolves, or ConfigError names the
        file, the position and the setting."""
        text = yaml.safe_dump(tree, allow_unicode=True)
        check_config_text(tmp_path_factory.mktemp("config"), text)

    @FUZZ
    @given(mutated_text(CONFIG_TEXT))
    def test_mutated_text_resolves_or_reports(self, tmp_path_factory: pytest.TempPathFactory,
                                              text: str) -> None:
        """The example config with its text damaged resolves or is reported."""
        check_config_text(tmp_path_factory.mktemp("config"), text)

    @FUZZ
    @given(random_yaml(_SETTING_NAMES))
    def test_random_documents(self, tmp_path_factory: pytest.TempPathFactory,
                              text: str) -> None:
        """Random documents of the settings' own names resolve or are reported."""
        check_config_text(tmp_path_factory.mktemp("config"), text)

    @pytest.mark.parametrize("extra", [0, 1])
    def test_a_file_at_and_past_the_byte_cap(self, tmp_path: Path, extra: int) -> None:
        """A config file of exactly the byte cap is read; one byte more is refused."""
        head = b"log_level: info\n#"
        path = tmp_path / "gatehouse.yaml"
        path.write_bytes(head + b"x" * (MAX_FILE_BYTES - len(head) + extra))
        if extra:
            with pytest.raises(ConfigError) as info:
                resolve({}, {}, str(path))
            assert info.value.problems == [
                f"{path}: config file is larger than {MAX_FILE_BYTES} bytes"]
        else:
            assert resolve({}, {}, str(path))["log_level"] == "info"

    def test_values_past_the_cap_are_refused_where_they_cross_it(self,
                                                                 tmp_path: Path) -> None:
        """More values than the cap (a long flow list within the byte cap) are refused at
        the value that crosses it."""
        path = tmp_path / "gatehouse.yaml"
        path.write_text("x: [" + ",".join(["1"] * MAX_FILE_VALUES) + "]\n")
        with pytest.raises(ConfigError) as info:
            resolve({}, {}, str(path))
        (problem,) = info.value.problems
        assert problem.startswith(f"{path}:1:") and \
            f"more than {MAX_FILE_VALUES} values" in problem


# -- a data file that is not a file ------------------------------------------------------


class TestDataFileSources:
    def test_a_device_is_refused_not_read_without_end(self) -> None:
        """``--data /dev/zero`` is refused (not a regular file) instead of filling memory."""
        with pytest.raises(DataFileError) as info:
            bounded(lambda: load_data_file("/dev/zero", POLICY), 30)
        assert [str(p) for p in info.value.problems] == [
            "/dev/zero cannot read: not a regular file"]

    def test_a_file_past_the_byte_cap_is_refused_before_parsing(self,
                                                                tmp_path: Path) -> None:
        """A data file one byte past LIMITS.data_file_bytes is refused unread."""
        path = tmp_path / "data.yaml"
        with path.open("wb") as f:
            f.truncate(LIMITS.data_file_bytes + 1)
        with pytest.raises(DataFileError) as info:
            load_data_file(path, POLICY)
        assert [p.message for p in info.value.problems] == [
            f"cannot read: larger than {LIMITS.data_file_bytes:,} bytes (the limit of one "
            "data file)"]
