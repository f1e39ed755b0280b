"""Bucket names follow AWS's S3 rules, and a refused name says which rule it breaks."""

from __future__ import annotations

import pytest

from garagekv.model.bucket_table import bucket_name_problem


@pytest.mark.parametrize("name", ["abc", "dev-bucket", "my.bucket.name", "a1-b2.c3", "x" * 63, "1bucket", "b-1.2-c"])
def test_valid_names(name):
    assert bucket_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("ab", "3 to 63 characters"),
        ("x" * 64, "3 to 63 characters"),
        ("Bucket", "lowercase letters, digits, dots and hyphens"),
        ("my_bucket", "lowercase letters, digits, dots and hyphens"),
        ("bucket\n", "lowercase letters, digits, dots and hyphens"),
        ("bucket..x", "two dots in a row"),
        (".bucket", "start or end with a dot"),
        ("bucket.", "start or end with a dot"),
        ("bucket.-x", "start and end with a letter or digit"),
        ("bucket-.x", "start and end with a letter or digit"),
        ("-bucket", "start and end with a letter or digit"),
        ("bucket-", "start and end with a letter or digit"),
        ("192.168.1.1", "IP address"),
        ("xn--bucket", "xn--"),
        ("a.xn--b", "xn--"),
        ("bucket-s3alias", "-s3alias"),
    ],
)
def test_refused_names_name_their_rule(name, rule):
    problem = bucket_name_problem(name)
    assert problem is not None and rule in problem


def test_punycode_allowed_when_configured():
    assert bucket_name_problem("xn--bcher-kva", allow_punycode=True) is None
