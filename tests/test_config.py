"""`gatehouse serve` settings: one table read from flags, environment and a config file.

Precedence, masking and refusals are proved through the real command
(`gatehouse serve --print-config`, and a served instance); the table's own
invariants (every ServerConfig field is a setting, the documentation lists
each one) in-process.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
from pathlib import Path

import grpc
import pytest
import yaml

from gatehouse.config import (
    SETTINGS,
    Address,
    Boolean,
    ConfigError,
    Integer,
    ListOf,
    Setting,
    Text,
    Url,
    render,
    resolve,
    worker_invocation,
)
from gatehouse.config.resolve import reference_table
from gatehouse.config.table import COMPOSED
from gatehouse.server import ServerConfig
from gatehouse.v1 import authorization_pb2 as pb
from gatehouse.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import GATEHOUSE, ROOT, free_port, wait_serving

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}


def serve(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
          ) -> subprocess.CompletedProcess[str]:
    """`gatehouse serve ARGS` with only the given GATEHOUSE_* variables set."""
    return subprocess.run([*GATEHOUSE, "serve", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env={**CLEAN_ENV, **(env or {})})


def printed(*args: str, env: dict[str, str] | None = None
            ) -> tuple[dict[str, object], dict[str, str]]:
    """The values `--print-config` prints, and the source comment beside each."""
    out = serve(*args, "--print-config", env=env)
    assert out.returncode == 0, out.stderr
    values = yaml.safe_load(out.stdout)
    notes = dict(re.findall(r"^(\w+): .*?  # (.*)$", out.stdout, re.MULTILINE))
    return values, notes


def refusal(*args: str, env: dict[str, str] | None = None) -> str:
    """stderr of a `serve` that must refuse its configuration: exit 2, no traceback."""
    out = serve(*args, "--print-config", env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == "" and "Traceback" not in out.stderr
    return out.stderr


class TestTable:
    def test_names_flags_and_env_follow_one_rule(self) -> None:
        """Each setting's flag and variable derive from its key, and none collide."""
        for s in SETTINGS:
            assert s.flag == "--" + s.name.replace("_", "-")
            assert s.env == "GATEHOUSE_" + s.name.upper()
        assert len({s.name for s in SETTINGS}) == len(SETTINGS)

    def test_every_server_config_field_is_a_setting_with_its_default(self) -> None:
        """The server receives nothing the table does not declare, with the same defaults."""
        fields = {f.name: f.default for f in dataclasses.fields(ServerConfig)
                  if f.name not in COMPOSED}
        targets = {s.target: s.default for s in SETTINGS if s.target is not None}
        assert targets == fields
        names = {s.name: s for s in SETTINGS}
        for field, parts in COMPOSED.items():  # built from settings the server doesn't see
            assert field in {f.name for f in dataclasses.fields(ServerConfig)}
            assert all(names[part].target is None for part in parts), field

    def test_every_default_reads_back_through_its_kind(self) -> None:
        """A default written as text or YAML (--print-config, worker argv) reads back the same."""
        for s in SETTINGS:
            if s.default is not None:
                assert s.kind.from_text(s.kind.to_text(s.default)) == s.default, s.name
                assert s.kind.from_yaml(s.kind.to_yaml(s.default)) == s.default, s.name

    def test_a_name_that_is_not_snake_case_is_refused(self) -> None:
        """A mistyped table entry fails at import, not at an operator's start-up."""
        with pytest.raises(ValueError, match="snake_case"):
            Setting("Redis-URL", Text(), None, "x")


class TestKinds:
    def test_addresses(self) -> None:
        """HOST:PORT, [IPv6]:PORT and unix:PATH are addresses; a missing or huge port is not."""
        for good in ("0.0.0.0:50051", "[::1]:0", "gatehouse.internal:443", "unix:/run/g.sock"):
            assert Address().from_text(good) == good
        for bad in ("50051", "host:", ":50051", "host:65536", "unix:", "a b:1"):
            with pytest.raises(ValueError, match="HOST:PORT"):
                Address().from_text(bad)

    def test_urls_hide_passwords_in_the_user_part_and_the_query(self) -> None:
        """Both places a Redis URL may carry a password are masked; the rest is kept as is."""
        url = Url()
        assert url.mask("rediss://app:pw@h:6380/0") == "rediss://app:***@h:6380/0"
        assert url.mask("redis://h/0?db=1&password=pw") == "redis://h/0?db=1&password=***"
        assert url.mask("unix:///run/redis.sock?db=2") == "unix:///run/redis.sock?db=2"

    def test_booleans_read_the_usual_words_from_text_only(self) -> None:
        """Env and flags read yes/no, on/off, 1/0; a file needs a real boolean."""
        assert [Boolean().from_text(w) for w in ("YES", "on", "1", "False", "off", "0")] == \
            [True, True, True, False, False, False]
        with pytest.raises(ValueError, match="true or false"):
            Boolean().from_yaml("yes please")

    def test_lists_from_a_file_and_from_comma_separated_text(self) -> None:
        """A list setting reads a YAML list or 'a,b'; a bad entry is named by its place."""
        kind = ListOf(Address(), max_items=3)
        assert kind.from_text("h1:1, h2:2") == ("h1:1", "h2:2")
        assert kind.from_yaml(["h1:1"]) == ("h1:1",)
        assert kind.from_text(kind.to_text(("h1:1", "h2:2"))) == ("h1:1", "h2:2")
        with pytest.raises(ValueError, match="entry 2 must be HOST:PORT"):
            kind.from_yaml(["h1:1", "nope"])
        with pytest.raises(ValueError, match="at most 3 entries"):
            kind.from_text("a:1,b:2,c:3,d:4")
        with pytest.raises(ValueError, match="must be a list"):
            kind.from_yaml("h1:1")


class TestPrecedence:
    def test_flag_beats_env_beats_file_beats_default(self, tmp_path: Path) -> None:
        """The same setting from file, env and flag: each source wins in turn."""
        conf = tmp_path / "gatehouse.yaml"
        conf.write_text("workers: 1\nlisten: 127.0.0.1:7001\nredis_prefix: file\n")
        values, notes = printed()
        assert values["listen"] == "127.0.0.1:50051" and notes["listen"] == "default"
        values, notes = printed("--config", str(conf))
        assert values["listen"] == "127.0.0.1:7001"
        assert notes["listen"] == f"from {conf}:2:1"
        values, notes = printed("--config", str(conf),
                                env={"GATEHOUSE_LISTEN": "127.0.0.1:7002"})
        assert values["listen"] == "127.0.0.1:7002"
        assert notes["listen"] == "from env GATEHOUSE_LISTEN"
        assert values["redis_prefix"] == "file"  # the file still supplies the rest
        values, notes = printed("--config", str(conf), "--listen", "127.0.0.1:7003",
                                env={"GATEHOUSE_LISTEN": "127.0.0.1:7002"})
        assert values["listen"] == "127.0.0.1:7003" and notes["listen"] == "from --listen"

    def test_booleans_follow_the_same_order(self, tmp_path: Path) -> None:
        """A boolean from the file is overridden by env, then by --x / --no-x (and --no-watch)."""
        conf = tmp_path / "c.yaml"
        conf.write_text("watch_policy: false\n")
        assert printed("--config", str(conf))[0]["watch_policy"] is False
        env = {"GATEHOUSE_WATCH_POLICY": "yes"}
        assert printed("--config", str(conf), env=env)[0]["watch_policy"] is True
        assert printed("--config", str(conf), "--no-watch", env=env)[0]["watch_policy"] is False
        assert printed("--no-watch-policy", "--watch-policy")[0]["watch_policy"] is True

    def test_the_config_file_can_come_from_the_environment(self, tmp_path: Path) -> None:
        """GATEHOUSE_CONFIG names the file; --config beats it."""
        one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
        one.write_text("redis_prefix: one\n")
        two.write_text("redis_prefix: two\n")
        env = {"GATEHOUSE_CONFIG": str(one)}
        assert printed(env=env)[0]["redis_prefix"] == "one"
        assert printed("--config", str(two), env=env)[0]["redis_prefix"] == "two"

    def test_print_config_output_is_a_config_file_that_round_trips(self, tmp_path: Path) -> None:
        """What --print-config prints, given back with --config, yields the same values."""
        out = serve("--print-config", "--workers", "3", "--no-watch", "--transport", "aio",
                    "--grace-seconds", "2.5", "--data", "my data.yaml", env={
                        "GATEHOUSE_REDIS_URL": "redis://localhost:1234/2",
                        "GATEHOUSE_REDIS_PREFIX": "35", "GATEHOUSE_LISTEN": "[::1]:6001"})
        assert out.returncode == 0, out.stderr
        conf = tmp_path / "printed.yaml"
        conf.write_text(out.stdout)
        again, notes = printed("--config", str(conf))
        assert again == yaml.safe_load(out.stdout)
        assert again["redis_prefix"] == "35" and again["workers"] == 3
        assert all(n.startswith(f"from {conf}:") for n in notes.values())


class TestServing:
    def start(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None,
              address: str) -> subprocess.Popen[str]:
        log = tmp_path / f"serve-{address.rsplit(':', 1)[1]}.log"
        proc = subprocess.Popen([*GATEHOUSE, "serve", *args], cwd=ROOT, text=True,
                                stdout=log.open("w"), stderr=subprocess.STDOUT,
                                env={**CLEAN_ENV, "PYTHONUNBUFFERED": "1", **(env or {})})
        wait_serving(address, proc, log)
        return proc

    def check(self, address: str) -> pb.CheckResponse:
        with grpc.insecure_channel(address) as ch:
            return pb_grpc.AuthorizationServiceStub(ch).Check(pb.CheckRequest(
                subject=pb.ObjectReference(type="user", id="ben"), action="delete",
                resource=pb.ObjectReference(type="data_flow", id="acme-sales-pipeline")),
                timeout=10)

    def stop(self, proc: subprocess.Popen[str]) -> int:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def test_a_server_runs_from_the_config_file(self, tmp_path: Path) -> None:
        """listen, policy and data from the file: the server answers Check there."""
        address = f"127.0.0.1:{free_port()}"
        conf = tmp_path / "gatehouse.yaml"
        conf.write_text(f"listen: {address}\npolicy: policies/coupler\n"
                        "data: examples/coupler.data.yaml\ntransport: aio\n"
                        "watch_policy: false\ngrace_seconds: 1\n")
        proc = self.start(tmp_path, "--config", str(conf), address=address)
        try:
            assert self.check(address).decision == pb.DECISION_ALLOW
        finally:
            assert self.stop(proc) == 0

    def test_the_environment_overrides_the_file_for_the_running_server(
            self, tmp_path: Path) -> None:
        """With listen in the file and in GATEHOUSE_LISTEN, the server listens where env says."""
        in_file, in_env = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        conf = tmp_path / "gatehouse.yaml"
        conf.write_text(f"listen: {in_file}\ndata: examples/coupler.data.yaml\n")
        proc = self.start(tmp_path, env={"GATEHOUSE_CONFIG": str(conf),
                                         "GATEHOUSE_LISTEN": in_env}, address=in_env)
        try:
            assert self.check(in_env).decision == pb.DECISION_ALLOW
            with pytest.raises(grpc.RpcError) as err, grpc.insecure_channel(in_file) as ch:
                pb_grpc.AuthorizationServiceStub(ch).Check(pb.CheckRequest(), timeout=1)
            assert err.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                        grpc.StatusCode.DEADLINE_EXCEEDED)
        finally:
            assert self.stop(proc) == 0


PASSWORD = "hunter2-s3cret"


class TestMasking:
    @pytest.mark.parametrize("source", ["file", "env", "flag"])
    def test_a_redis_password_is_never_printed(self, tmp_path: Path, source: str) -> None:
        """From any source, --print-config shows the Redis URL with its password as ***."""
        url = f"redis://app:{PASSWORD}@localhost:6390/0"
        conf = tmp_path / "c.yaml"
        conf.write_text(f"redis_url: {url}\n")
        args = {"file": ["--config", str(conf)], "env": [], "flag": ["--redis-url", url]}[source]
        env = {"GATEHOUSE_REDIS_URL": url} if source == "env" else {}
        out = serve(*args, "--print-config", env=env)
        assert out.returncode == 0, out.stderr
        assert PASSWORD not in out.stdout + out.stderr
        assert "redis_url: redis://app:***@localhost:6390/0  # " in out.stdout
        assert "masked" in out.stdout

    def test_a_bad_redis_url_is_refused_without_echoing_its_password(self) -> None:
        """A malformed URL's error quotes it masked."""
        err = refusal(env={"GATEHOUSE_REDIS_URL": f"redis://u:{PASSWORD}@h:port/0"})
        assert "redis_url (env GATEHOUSE_REDIS_URL): the port of the host" in err
        assert PASSWORD not in err

    def test_a_secret_setting_is_masked_and_kept_off_worker_command_lines(self) -> None:
        """A setting marked secret prints as *** and reaches workers by environment only."""
        table = (*SETTINGS, Setting("api_token", Text(), None, "A token.", secret=True,
                                    field=None))
        eff = resolve({"api_token": PASSWORD}, {}, table=table)
        text = render(eff)
        assert PASSWORD not in text
        assert "api_token: '***'  # from --api-token, masked" in text
        argv, env = worker_invocation(eff, {"workers": 1})
        assert not any(PASSWORD in a for a in argv)
        assert env["GATEHOUSE_API_TOKEN"] == PASSWORD

    def test_workers_get_every_setting_and_the_redis_url_by_environment(self) -> None:
        """A worker's argv carries each non-secret setting; the URL and the file go by env."""
        eff = resolve({"workers": "2"},
                      {"GATEHOUSE_REDIS_URL": f"redis://:{PASSWORD}@h:1/0",
                       "GATEHOUSE_WATCH_POLICY": "false"}, table=SETTINGS)
        argv, env = worker_invocation(eff, {"workers": 1, "reuse_port": True, "data": None})
        assert "--workers=1" in argv and "--reuse-port" in argv and "--no-watch-policy" in argv
        assert not any(a.startswith("--data") or PASSWORD in a for a in argv)
        assert env["GATEHOUSE_REDIS_URL"] == f"redis://:{PASSWORD}@h:1/0"
        assert env["GATEHOUSE_CONFIG"] is None and env["GATEHOUSE_DATA"] is None


class TestRefusals:
    @pytest.mark.parametrize(("text", "expected"), [
        ("lisen: 127.0.0.1:1\n", "{f}:1:1 unknown key 'lisen'; did you mean 'listen'?"),
        ("redis-url: redis://h/0\n", "{f}:1:1 unknown key 'redis-url'; did you mean "
         "'redis_url'?"),
        ("listen: 127.0.0.1:1\n\n  # c\nbogus: 1\n", "{f}:4:1 unknown key 'bogus'"),
        ("workers: two\n", "{f}:1:10 workers: must be a whole number, not str"),
        ("workers: true\n", "{f}:1:10 workers: must be a whole number, not true/false"),
        ("workers: 2.0\n", "{f}:1:10 workers: must be a whole number, not a number"),
        ("workers: 65\n", "{f}:1:10 workers: must be between 1 and 64, not 65"),
        ("usage_dedup_days: 0\n", "{f}:1:19 usage_dedup_days: must be above 0, at most 3650"),
        ("usage_dedup_days: false\n", "usage_dedup_days: must be a number, not true/false"),
        ("grace_seconds: .nan\n", "{f}:1:16 grace_seconds: '.nan' is not a plain decimal"),
        ("grace_seconds: -.inf\n", "{f}:1:16 grace_seconds: '-.inf' is not a plain decimal"),
        ("grace_seconds: 0x10\n", "{f}:1:16 grace_seconds: '0x10' is not a plain decimal"),
        ("redis_prefix: 12\n", "{f}:1:15 redis_prefix: must be text, not a number (quote it)"),
        ("watch_policy: 1\n", "{f}:1:15 watch_policy: must be true or false, not a number"),
        ("transport: fast\n", "{f}:1:12 transport: must be auto, core or aio, not 'fast'"),
        ("listen: nowhere\n", "{f}:1:9 listen: must be HOST:PORT"),
        ("policy: null\n", "{f}:1:1 policy: must be set"),
        ("listen: [a, b]\n", "{f}:1:9 listen: must be text, not a list"),
        ("- listen: 127.0.0.1:1\n", "{f}:1:1 a config file must be a mapping of setting keys"),
        ("just text\n", "{f}:1:1 a config file must be a mapping"),
        ("listen: [1, 2\nworkers: 1\n", "{f}:2:8 YAML syntax error: while parsing a flow "
         "sequence (line 1)"),
        ("listen: a\nlisten: b\n", "{f}:2:1 listen: duplicate key 'listen'"),
        ("workers: 2\n", "{f}:1:1 workers: above 1 needs a shared store"),
        ("config: other.yaml\n", "{f}:1:1 unknown key 'config'; a config file cannot name "
         "another"),
    ])
    def test_a_bad_file_names_the_key_and_its_position(self, tmp_path: Path, text: str,
                                                       expected: str) -> None:
        """A config file problem stops start-up (exit 2) with file:line:col and the key."""
        conf = tmp_path / "bad.yaml"
        conf.write_text(text)
        assert expected.format(f=conf) in refusal("--config", str(conf))

    def test_every_problem_is_reported_at_once(self, tmp_path: Path) -> None:
        """Several bad keys give one line each, so one edit fixes them all."""
        conf = tmp_path / "bad.yaml"
        conf.write_text("lisen: x\nworkers: 0\ngrace_seconds: .inf\n")
        err = refusal("--config", str(conf))
        assert len(err.strip().splitlines()) == 3
        assert all(line.startswith(f"gatehouse: {conf}:") for line in err.splitlines())

    @pytest.mark.parametrize(("env", "args", "expected"), [
        ({"GATEHOUSE_WORKERS": "0"}, [],
         "gatehouse: workers (env GATEHOUSE_WORKERS): must be between 1 and 64, not 0"),
        ({"GATEHOUSE_USAGE_DEDUP_DAYS": "nan"}, [],
         "usage_dedup_days (env GATEHOUSE_USAGE_DEDUP_DAYS): must be a decimal number, "
         "not 'nan'"),
        ({"GATEHOUSE_REUSE_PORT": "maybe"}, [],
         "reuse_port (env GATEHOUSE_REUSE_PORT): must be true or false, not 'maybe'"),
        ({"GATEHOUSE_LISTEN": ""}, [], "listen (env GATEHOUSE_LISTEN): must be HOST:PORT"),
        ({}, ["--listen", "127.0.0.1:70000"], "listen (--listen): must be HOST:PORT"),
        ({}, ["--usage-dedup-days", "inf"], "usage_dedup_days (--usage-dedup-days): must be "
         "a decimal number"),
        ({}, ["--workers", "2", "--redis-url", "redis://h/0", "--listen", "127.0.0.1:0"],
         "workers (--workers): above 1 needs a fixed port to share"),
        ({}, ["--redis-url", "http://h/0"], "redis_url (--redis-url): unknown scheme 'http'"),
        ({"GATEHOUSE_CONFIG": "/nonexistent/g.yaml"}, [],
         "config (env GATEHOUSE_CONFIG): cannot read '/nonexistent/g.yaml'"),
    ])
    def test_a_bad_flag_or_variable_names_the_key_and_the_source(
            self, env: dict[str, str], args: list[str], expected: str) -> None:
        """A value from env or a flag is refused naming the setting and the variable or flag."""
        assert expected in refusal(*args, env=env)

    def test_a_file_too_large_is_refused_unread(self, tmp_path: Path) -> None:
        """A config file past its size bound (a wrong path, say) is refused, not parsed."""
        conf = tmp_path / "big.yaml"
        conf.write_text("# padding\n" * 30_000)
        assert "config file is larger than 262144 bytes" in refusal("--config", str(conf))

    def test_an_empty_file_sets_nothing(self, tmp_path: Path) -> None:
        """A file of comments only is valid: every value stays its default."""
        conf = tmp_path / "empty.yaml"
        conf.write_text("# nothing yet\n")
        _, notes = printed("--config", str(conf))
        assert set(notes.values()) == {"default"}

    def test_the_server_refuses_before_serving(self, tmp_path: Path) -> None:
        """Without --print-config, a bad config also exits 2 before listening."""
        conf = tmp_path / "bad.yaml"
        conf.write_text("workers: 0\n")
        out = serve("--config", str(conf), "--listen", f"127.0.0.1:{free_port()}")
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert out.stderr == f"gatehouse: {conf}:1:10 workers: must be between 1 and 64, " \
            "not 0\n"

    def test_resolve_raises_one_error_with_every_problem(self) -> None:
        """In-process, the same refusals come as one ConfigError listing each line."""
        table = (Setting("port", Integer(1, 9), 1, "p", field=None),
                 Setting("on", Boolean(), False, "o", field=None))
        with pytest.raises(ConfigError) as err:
            resolve({"port": "10"}, {"GATEHOUSE_ON": "perhaps"}, table=table, rules=())
        assert err.value.problems == [
            "port (--port): must be between 1 and 9, not 10",
            "on (env GATEHOUSE_ON): must be true or false, not 'perhaps'",
        ]


class TestDocumentation:
    def test_the_documented_table_matches_the_code(self) -> None:
        """docs/configuration.md lists every setting with its flag, env, default and meaning."""
        doc = (ROOT / "docs/configuration.md").read_text()
        start = doc.index("-->\n", doc.index("<!-- settings table")) + len("-->\n")
        documented = doc[start:doc.index("<!-- end of settings table -->")]
        assert documented == reference_table(), "expected table:\n" + reference_table()

    def test_the_example_config_is_the_documented_one_and_loads(self) -> None:
        """examples/gatehouse.yaml (shown in the docs) loads, every key taken from it."""
        example = (ROOT / "examples/gatehouse.yaml").read_text()
        assert f"```yaml\n{example}```" in (ROOT / "docs/configuration.md").read_text()
        values, notes = printed("--config", "examples/gatehouse.yaml")
        written = yaml.safe_load(example)
        assert {k: values[k] for k in written} == written
        assert all(notes[k].startswith("from examples/gatehouse.yaml:") for k in written)
