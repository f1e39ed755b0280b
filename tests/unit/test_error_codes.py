"""The client's table of error codes and the server's hierarchy agree.

The client is standalone (it never imports the server), so nothing but this test keeps the two
in step: every code the K2V API can answer has a client class with the same HTTP status.
"""

from __future__ import annotations

import inspect

from garagekv.client import errors as client_errors
from garagekv.util import errors as server_errors


def k2v_error_classes() -> list[type[server_errors.GarageKVError]]:
    """The server's error classes a K2V request can end in (admin, config and peer-only errors
    excluded)."""
    out = []
    for _, cls in inspect.getmembers(server_errors, inspect.isclass):
        if not issubclass(cls, server_errors.GarageKVError):
            continue
        if issubclass(cls, (server_errors.AdminError, server_errors.ConfigError)):
            continue
        if cls is server_errors.WrittenWithoutQuorum:
            continue  # between nodes only: the node that asked answers ServiceUnavailable
        out.append(cls)
    return out


def test_every_server_code_has_a_client_class_with_the_same_status():
    missing = []
    for cls in k2v_error_classes():
        client_cls = client_errors.BY_CODE.get(cls.code)
        if client_cls is None or client_cls.default_status not in (None, cls.status):
            missing.append((cls.__name__, cls.code, cls.status, client_cls))
        elif client_cls.default_status is None:  # the status comes from the response: check the family
            assert client_errors.BY_STATUS.get(cls.status) in client_cls.__mro__, cls
    assert not missing, missing


def test_every_client_code_is_one_the_server_uses():
    server_codes = {cls.code for cls in k2v_error_classes()}
    assert set(client_errors.BY_CODE) <= server_codes, set(client_errors.BY_CODE) - server_codes


def test_the_client_falls_back_to_the_status_family_for_unknown_codes():
    e = client_errors.error_from_response(404, b'{"code": "SomethingNew", "message": "m"}')
    assert isinstance(e, client_errors.NotFound) and e.code == "SomethingNew"
