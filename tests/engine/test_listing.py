"""ListAccessible lists exactly what Check allows, page by page, for every policy set.

Random graphs are generated from each shipped policy's own types (parents,
roles, ownership, attributes); for random subjects, actions and `within`
scopes, the concatenated pages must equal the set of resources Check allows,
in id order, with no repeats.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatehouse import engine
from gatehouse.engine.listing import list_accessible
from gatehouse.graph.changes import Change, Operation, PutObject, TouchRelationship
from gatehouse.graph.index import GraphIndex
from gatehouse.graph.model import ObjectRef, Relationship
from gatehouse.policy import load_policy
from gatehouse.policy.model import CompiledPolicy

ROOT = Path(__file__).resolve().parents[2]
POLICIES = {name: load_policy(ROOT / "policies" / name) for name in ("coupler", "agency",
                                                                     "gumloop")}


def random_graph(policy: CompiledPolicy, rnd: random.Random) -> tuple[GraphIndex, list[str]]:
    users = [f"user:u{i}" for i in range(6)]
    objects: dict[str, list[str]] = {}
    ops: list[Operation] = []
    order = sorted(policy.types.values(), key=lambda t: len(t.lineage))
    for tdef in order:
        if tdef.subject:
            continue
        keys = []
        for i in range(rnd.randint(1, 4) if tdef.parent is None else rnd.randint(2, 7)):
            key = f"{tdef.name}:{tdef.name[0]}{i}"
            if tdef.parent is not None:
                parents = objects.get(tdef.parent)
                if not parents:
                    continue
                ops.append(TouchRelationship(Relationship.parse(
                    f"{key}#parent@{rnd.choice(parents)}")))
            attrs = {}
            for attr in tdef.attributes.values():
                if attr.type == "bool":
                    attrs[attr.name] = rnd.random() < 0.5
                elif attr.type == "list":
                    attrs[attr.name] = [f"t{rnd.randrange(3)}"]
            if attrs:
                ops.append(PutObject(ObjectRef(*key.split(":", 1)), attrs))
            for role in sorted(tdef.roles):
                for user in rnd.sample(users, rnd.randint(0, 2)):
                    ops.append(TouchRelationship(Relationship.parse(f"{key}#{role}@{user}")))
            if tdef.owned and rnd.random() < 0.8:
                ops.append(TouchRelationship(Relationship.parse(
                    f"{key}#owner@{rnd.choice(users)}")))
            keys.append(key)
        objects[tdef.name] = keys
    index = GraphIndex()
    index.apply([Change(1, tuple(ops))])
    return index, [*users, "user:stranger"]


def all_pages(policy: CompiledPolicy, index: GraphIndex, subject: str, action: str,
              rtype: str, within: str | None, limit: int) -> list[str]:
    out: list[str] = []
    after = None
    for _ in range(1000):
        page = list_accessible(policy, index, subject, action, rtype, within=within,
                               after=after, limit=limit)
        assert len(page.ids) <= limit
        out.extend(page.ids)
        if page.complete:
            return out
        assert page.after is not None
        after = page.after
    raise AssertionError("listing never completed")


class TestListMatchesCheck:
    @pytest.mark.parametrize("name", sorted(POLICIES))
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.integers(0, 2**32), limit=st.integers(1, 6))
    def test_listing_equals_the_set_check_allows(self, name: str, seed: int,
                                                 limit: int) -> None:
        """Every listed id passes Check and every id that passes Check is listed, once,
        in order — across pages of any size and within any ancestor."""
        policy = POLICIES[name]
        rnd = random.Random(seed)
        index, subjects = random_graph(policy, rnd)
        for rtype, tdef in policy.types.items():
            if tdef.subject or not tdef.actions:
                continue
            resources = sorted(k for k in index.up if k.startswith(rtype + ":"))
            for action in tdef.actions:
                subject = rnd.choice(subjects)
                ancestors = sorted({a for k in resources for a in index.up[k].values()})
                within = rnd.choice([None, *ancestors]) if ancestors else None
                expected = [
                    k.partition(":")[2] for k in resources
                    if engine.check(policy, index, subject, action, rtype, k)
                    and (within is None or index.up[k].get(within.partition(":")[0]) == within)
                ]
                got = all_pages(policy, index, subject, action, rtype, within, limit)
                assert got == expected, (subject, action, rtype, within)


class TestListingScope:
    def test_cross_tenant_subjects_see_nothing(self) -> None:
        """A member of one organization lists nothing of another organization."""
        policy = POLICIES["coupler"]
        ops = [TouchRelationship(Relationship.parse(t)) for t in (
            "workspace:a#parent@organization:o1", "workspace:b#parent@organization:o2",
            "data_flow:f1#parent@workspace:a", "data_flow:f2#parent@workspace:b",
            "workspace:a#admin@user:x", "organization:o2#owner@user:y")]
        index = GraphIndex()
        index.apply([Change(1, tuple(ops))])
        assert list_accessible(policy, index, "user:x", "view", "data_flow").ids == ["f1"]
        assert list_accessible(policy, index, "user:y", "view", "data_flow").ids == ["f2"]
        assert list_accessible(policy, index, "user:x", "view", "data_flow",
                               within="organization:o2").ids == []

    def test_time_limit_ends_the_page_incomplete_with_a_cursor(self) -> None:
        """Out of time, a page says it is incomplete; continuing from its cursor finishes
        the listing with nothing skipped or repeated."""
        import time

        policy = POLICIES["coupler"]
        ops = [TouchRelationship(Relationship.parse("workspace:a#parent@organization:o")),
               TouchRelationship(Relationship.parse("workspace:a#admin@user:x"))]
        ops += [TouchRelationship(Relationship.parse(f"data_flow:f{i:03d}#parent@workspace:a"))
                for i in range(300)]
        index = GraphIndex()
        index.apply([Change(1, tuple(ops))])
        late = list_accessible(policy, index, "user:x", "view", "data_flow",
                               deadline=time.monotonic() - 1)
        assert not late.complete and late.after is not None
        assert 0 < len(late.ids) < 300
        rest = list_accessible(policy, index, "user:x", "view", "data_flow", after=late.after)
        assert rest.complete
        assert late.ids + rest.ids == [f"f{i:03d}" for i in range(300)]
