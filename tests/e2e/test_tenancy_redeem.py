"""RedeemAccessLink checks the redeemer's attributes against the created type."""

from __future__ import annotations

import grpc
from google.protobuf.struct_pb2 import Struct

from gatehouse.v1 import tenancy_pb2 as pb
from tests.e2e.test_graph_service import ref
from tests.e2e.test_tenancy import Client, c, refused, server

__all__ = ["c", "server"]  # the module-scoped fixtures, shared with test_tenancy


class TestRedeemAttributes:
    def test_bad_attributes_are_named_and_the_link_stays_active(self, c: Client) -> None:
        """A wrongly typed attribute or a source_type of the redeemer's own is
        INVALID_ARGUMENT naming it, and the link can still be redeemed after."""
        owner = c.user()
        _org, ws = c.org(owner, plan="pro")
        link = c.tenancy.CreateAccessLink(pb.CreateAccessLinkRequest(
            actor=ref(owner), workspace_id=ws, source_type="hubspot"), timeout=10)
        wrong = Struct()
        wrong.update({"shared": "yes"})
        err = refused(c.tenancy.RedeemAccessLink, pb.RedeemAccessLinkRequest(
            token=link.token, attributes=wrong))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("attributes:") and "shared" in err.details()
        own = Struct()
        own.update({"source_type": "csv"})
        err = refused(c.tenancy.RedeemAccessLink, pb.RedeemAccessLinkRequest(
            token=link.token, attributes=own))
        assert err.details().startswith("attributes.source_type:")
        ok = Struct()
        ok.update({"shared": True, "credential_id": "hs-1"})
        out = c.tenancy.RedeemAccessLink(pb.RedeemAccessLinkRequest(
            token=link.token, attributes=ok), timeout=10)
        assert c.attributes(f"connection:{out.connection_id}") == {
            "shared": True, "credential_id": "hs-1", "source_type": "hubspot"}

    def test_non_finite_and_deep_attributes_are_refused(self, c: Client) -> None:
        """NaN or a Struct nested past the cap is INVALID_ARGUMENT naming the field."""
        owner = c.user()
        _org, ws = c.org(owner, plan="pro")
        link = c.tenancy.CreateAccessLink(pb.CreateAccessLinkRequest(
            actor=ref(owner), workspace_id=ws, source_type="hubspot"), timeout=10)
        nan = Struct()
        nan.fields["credential_id"].number_value = float("nan")
        err = refused(c.tenancy.RedeemAccessLink, pb.RedeemAccessLinkRequest(
            token=link.token, attributes=nan))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("attributes.credential_id:")
        deep = Struct()
        inner = deep
        for _ in range(20):
            inner = inner.fields["k"].struct_value
        err = refused(c.tenancy.RedeemAccessLink, pb.RedeemAccessLinkRequest(
            token=link.token, attributes=deep))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "nested deeper than" in err.details()
