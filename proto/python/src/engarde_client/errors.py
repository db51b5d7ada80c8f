"""What a failed call says about the request: the services answer bad input with
INVALID_ARGUMENT and a google.rpc.BadRequest naming each bad field, in the status details."""

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The (field, description) pairs of a failed call's google.rpc.BadRequest, in the order
    the service listed them; empty when the status carries none (any code but INVALID_ARGUMENT,
    or an error raised before the call reached a service)."""
    if not isinstance(error, grpc.Call):
        return []
    status = rpc_status.from_call(error)
    if status is None:
        return []
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend((v.field, v.description) for v in bad_request.field_violations)
    return violations
