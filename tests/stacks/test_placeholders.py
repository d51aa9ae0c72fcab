"""The example stack files as shipped are refused at preview, with the key that holds the placeholder.

Every other stack test runs the examples with stacks.rendered.EXAMPLE_STAND_INS in the placeholders' place.
"""

from __future__ import annotations

import pytest

from stacks.config import documentation_range
from stacks.rendered import EXAMPLE_STAND_INS, refused_stack, run_stack
from tests.ssh_keys import ed25519_public_key


def test_the_gcp_example_is_refused_for_its_project_id_first():
    err, run = refused_stack("gcp", stand_ins=False)
    assert err.key == "gcp:project"
    assert "'my-llm-inference-project': is the example's placeholder" in str(err)
    assert "pulumi config set gcp:project <value>" in str(err)
    assert run.resources == []  # refused before anything is created


def test_the_gcp_example_is_refused_for_its_documentation_range_once_the_project_is_set():
    err, run = refused_stack("gcp", {"gcp:project": "mock-project"}, stand_ins=False)
    assert err.key == "llm-inference:gkeServiceSourceRanges"
    assert "in the documentation range 203.0.113.0/24" in str(err)
    assert "--path 'llm-inference:gkeServiceSourceRanges[0]'" in str(err)
    assert "curl -4 -s https://ifconfig.me" in str(err)
    assert run.resources == []


def test_the_azure_example_is_refused_for_its_documentation_range():
    err, run = refused_stack("azure", {"sshPublicKey": ed25519_public_key()}, stand_ins=False)
    assert err.key == "llm-inference:apiSourceCidrs"
    assert "203.0.113.0/24" in str(err) and "documentation range" in str(err)
    assert run.resources == []


@pytest.mark.parametrize(
    ("key", "value", "doc"),
    [
        ("sshSourceCidrs", ["198.18.9.1/32", "192.0.2.10/32"], "192.0.2.0/24"),  # any item, not only the first
        ("apiSourceCidrs", ["198.51.100.7"], "198.51.100.0/24"),  # a bare address too
        ("apiSourceCidrs", ["203.0.113.128/25"], "203.0.113.0/24"),  # inside the range
    ],
)
def test_every_documentation_range_is_refused_in_any_source_list(key, value, doc):
    err, _ = refused_stack("azure", {"sshPublicKey": ed25519_public_key(), key: value})
    assert err.key == f"llm-inference:{key}"
    assert f"documentation range {doc}" in str(err)


def test_gke_api_source_ranges_refuse_a_documentation_range():
    err, _ = refused_stack("gcp", {"gkeApiSourceRanges": ["192.0.2.0/24"]})
    assert err.key == "llm-inference:gkeApiSourceRanges"


def test_ranges_next_to_the_documentation_ones_pass():
    # 203.0.112.0/24 and 198.51.101.0/24 border documentation ranges; a wider block that holds one is someone's
    # real network too, so only blocks inside a documentation range are placeholders.
    assert documentation_range("203.0.112.0/24") is None
    assert documentation_range("198.51.101.0/24") is None
    assert documentation_range("203.0.0.0/16") is None
    assert documentation_range("2001:db8:1::/48").compressed == "2001:db8::/32"
    assert documentation_range("not-an-address") is None
    run = run_stack("azure", {"sshPublicKey": ed25519_public_key(), "apiSourceCidrs": ["203.0.112.0/24"]})
    assert run.outputs["url"]


def test_the_stand_ins_are_not_placeholders():
    for values in EXAMPLE_STAND_INS.values():
        for value in values.values():
            for item in value if isinstance(value, list) else [value]:
                assert documentation_range(item) is None and item != "my-llm-inference-project"
