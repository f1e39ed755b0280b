"""A header sent several times is canonicalised as AWS does: its values joined by ``,``.

Signed by botocore (the reference signer), verified by our code from the multi-valued headers
aiohttp hands over, with the single-value fast path and the join path both exercised.
"""

from __future__ import annotations

import hashlib

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict

from garagekv.api.signature import Headers, verify_request
from garagekv.util.errors import AccessDenied

AK, SK, REGION, HOST = "GKtest", "secret", "garage", "127.0.0.1:3904"


def botocore_signed(repeated: list[tuple[str, str]]) -> CIMultiDict:
    req = AWSRequest(method="GET", url=f"http://{HOST}/b/pk?sort_key=a", data=b"")
    for name, value in repeated:
        req.headers[name] = value  # botocore's HTTPHeaders keeps every assignment
    req.headers["X-Amz-Content-SHA256"] = hashlib.sha256(b"").hexdigest()
    SigV4Auth(Credentials(AK, SK), "k2v", REGION).add_auth(req)
    out = CIMultiDict({"Host": HOST})
    for name, value in req.headers.items():
        out.add(name, value)
    return out


@pytest.mark.parametrize(
    "repeated",
    [
        [("Accept", "application/json"), ("Accept", "application/octet-stream")],
        [("X-Amz-Meta-A", "1"), ("x-amz-meta-a", " 2 "), ("X-AMZ-META-A", "3")],
        [("Accept", "*/*")],
    ],
)
def test_botocore_signature_of_repeated_headers_verifies(repeated):
    headers = botocore_signed(repeated)
    verified = verify_request("GET", "/b/pk", "sort_key=a", headers, REGION, {AK: SK}.get)
    assert verified.access_key_id == AK
    verify_request("GET", "/b/pk", "sort_key=a", Headers(headers.items()), REGION, {AK: SK}.get)


def test_order_of_repeated_values_is_signed():
    headers = botocore_signed([("Accept", "application/json"), ("Accept", "application/octet-stream")])
    values = headers.getall("Accept")
    del headers["Accept"]
    for v in reversed(values):
        headers.add("Accept", v)
    with pytest.raises(AccessDenied):
        verify_request("GET", "/b/pk", "sort_key=a", headers, REGION, {AK: SK}.get)
