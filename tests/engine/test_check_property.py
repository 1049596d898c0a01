"""Property tests: the fast check path agrees with explain and with a rebuilt index.

Random Coupler graphs are built change by change — with deletes and moves of
flows between workspaces — so the index's incremental maintenance is
exercised. For every request, ``check`` (subject-centric fast path) must equal
``explain`` (which walks each rule through ``chain`` and ``holds``), on the
incrementally maintained index and on one rebuilt from scratch.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatehouse import engine
from gatehouse.graph.changes import (
    Change,
    DeleteRelationship,
    Operation,
    PutObject,
    TouchRelationship,
)
from gatehouse.graph.index import GraphIndex
from gatehouse.graph.model import ObjectRecord, ObjectRef, Relationship, Snapshot
from gatehouse.policy import load_policy

ROOT = Path(__file__).resolve().parents[2]
POLICY = load_policy(ROOT / "policies/coupler")
USERS = [f"user:u{i}" for i in range(5)]
ORGS = ["organization:o1", "organization:o2"]
WORKSPACES = {"workspace:a": "organization:o1", "workspace:b": "organization:o1",
              "workspace:c": "organization:o2"}
RESOURCES = [f"data_flow:f{i}" for i in range(4)] + [f"connection:c{i}" for i in range(3)] + \
    ["ai_chat:h0", "dashboard:d0"]
ROLES = {"organization": ["owner"], "workspace": ["admin", "user", "guest"]}


def rel(res: str, relation: str, subj: str) -> Relationship:
    return Relationship(ObjectRef(*res.split(":", 1)), relation, ObjectRef(*subj.split(":", 1)))


@st.composite
def histories(draw: st.DrawFn) -> list[list[Operation]]:
    """A list of batches: the skeleton first, then random role/ownership churn and moves."""
    skeleton: list[Operation] = [TouchRelationship(rel(w, "parent", o))
                                 for w, o in WORKSPACES.items()]
    parents = {r: draw(st.sampled_from(sorted(WORKSPACES))) for r in RESOURCES}
    skeleton += [TouchRelationship(rel(r, "parent", w)) for r, w in parents.items()]
    for r in RESOURCES:
        skeleton.append(TouchRelationship(rel(r, "owner", draw(st.sampled_from(USERS)))))
        if r.startswith("connection:"):
            skeleton.append(PutObject(ObjectRef(*r.split(":", 1)),
                                      {"shared": draw(st.booleans())}))
    batches = [skeleton]
    ws_parents = dict(WORKSPACES)
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["grant", "revoke", "move", "move_workspace", "chown"]))
        if kind in ("grant", "revoke"):
            target = draw(st.sampled_from(ORGS + sorted(WORKSPACES)))
            role = draw(st.sampled_from(ROLES[target.split(":")[0]]))
            r = rel(target, role, draw(st.sampled_from(USERS)))
            batches.append([TouchRelationship(r) if kind == "grant" else DeleteRelationship(r)])
        elif kind == "move":
            res = draw(st.sampled_from(RESOURCES))
            new = draw(st.sampled_from(sorted(WORKSPACES)))
            batches.append([DeleteRelationship(rel(res, "parent", parents[res])),
                            TouchRelationship(rel(res, "parent", new))])
            parents[res] = new
        elif kind == "move_workspace":
            # The stores keep tenants apart, but the index must re-derive lineage for
            # any parent change, descendants included.
            ws = draw(st.sampled_from(sorted(WORKSPACES)))
            new = draw(st.sampled_from(ORGS))
            batches.append([DeleteRelationship(rel(ws, "parent", ws_parents[ws])),
                            TouchRelationship(rel(ws, "parent", new))])
            ws_parents[ws] = new
        else:
            res = draw(st.sampled_from(RESOURCES))
            batches.append([TouchRelationship(rel(res, "owner", draw(st.sampled_from(USERS))))])
    return batches


def rebuilt(index: GraphIndex) -> GraphIndex:
    rels = []
    for obj, relations in index.forward.items():
        for relation, subjects in relations.items():
            rels.extend(rel(obj, relation, s) for s in subjects)
    objects = tuple(ObjectRecord(ObjectRef(*k.split(":", 1)), a) for k, a in index.attrs.items())
    return GraphIndex.from_snapshot(Snapshot(index.revision, objects, tuple(rels)))


class TestCheckAgreesWithExplain:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(histories())
    def test_fast_path_equals_rule_walk_on_incremental_and_rebuilt_index(
        self, batches: list[list[Operation]]
    ) -> None:
        """check == explain for every request, and the incremental index decides like a
        freshly built one after deletes and moves."""
        index = GraphIndex()
        index.apply([Change(i + 1, tuple(b)) for i, b in enumerate(batches)])
        fresh = rebuilt(index)
        for resource in [*RESOURCES, *WORKSPACES, *ORGS]:
            rtype = resource.split(":")[0]
            for action in POLICY.types[rtype].actions:
                for subject in [*USERS, "user:stranger"]:
                    fast = engine.check(POLICY, index, subject, action, rtype, resource)
                    slow = engine.explain(POLICY, index, subject, action, rtype, resource)
                    again = engine.check(POLICY, fresh, subject, action, rtype, resource)
                    assert fast == slow.allowed == again, (subject, action, resource,
                                                           slow.trace)
