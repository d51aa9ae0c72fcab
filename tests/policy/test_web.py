"""private-web-content: the demo UI's buckets and distribution, one broken piece at a time.

Each case starts from the aws stack's real graph with `demoUi: true` (which passes) and changes or drops
one resource, as a careless edit of components/demo_ui.py would."""

from __future__ import annotations

import copy
from functools import cache

import pytest

from policy import Node, rule
from tests.pulumi_harness import run_stack

WEB = rule("private-web-content")


@cache
def demo_nodes() -> tuple[Node, ...]:
    run = run_stack("aws", {"demoUi": True})
    return tuple(Node(r.type, r.name, r.state or r.inputs, r.urn) for r in run.resources)


def nodes() -> list[Node]:
    return [Node(n.type, n.name, copy.deepcopy(dict(n.props)), n.urn) for n in demo_nodes()]


def found(graph: list[Node]) -> list[str]:
    violations = [v for n in graph for v in WEB.check_resource(n.type, n.name, n.props)]
    violations += WEB.check_graph(graph)
    return [f"{v.name}: {v.message}" for v in violations]


def one(graph: list[Node], type_: str, name: str | None = None) -> Node:
    matches = [n for n in graph if n.type == type_ and (name is None or n.name == name)]
    assert len(matches) == 1, [n.name for n in matches]
    return matches[0]


def without(graph: list[Node], type_: str, name_part: str) -> list[Node]:
    kept = [n for n in graph if not (n.type == type_ and name_part in n.name)]
    assert len(kept) == len(graph) - 1
    return kept


DISTRIBUTION = "aws:cloudfront/distribution:Distribution"


def test_the_demo_ui_as_built_passes():
    assert found(nodes()) == []


@pytest.mark.parametrize("policy", ["allow-all", None])
def test_plain_http_to_viewers_is_refused(policy):
    graph = nodes()
    one(graph, DISTRIBUTION).props["defaultCacheBehavior"]["viewerProtocolPolicy"] = policy
    assert found(graph) == [f"demo-ui-cdn: default cache behavior has viewerProtocolPolicy {policy!r}; "
                            "set https-only (or redirect-to-https)"]


def test_redirect_to_https_is_accepted():
    graph = nodes()
    one(graph, DISTRIBUTION).props["defaultCacheBehavior"]["viewerProtocolPolicy"] = "redirect-to-https"
    assert found(graph) == []


def test_an_ordered_behavior_without_security_headers_is_refused():
    graph = nodes()
    distribution = one(graph, DISTRIBUTION).props
    distribution["orderedCacheBehaviors"] = [{"pathPattern": "/raw/*", "viewerProtocolPolicy": "https-only"}]
    assert found(graph) == ["demo-ui-cdn: cache behavior '/raw/*' has no responseHeadersPolicyId; attach a policy "
                            "with the security headers (HSTS, nosniff, frame, CSP)"]


def test_a_distribution_without_logs_is_refused():
    graph = nodes()
    del one(graph, DISTRIBUTION).props["loggingConfig"]
    problems = found(graph)
    assert any("writes no access logs" in p for p in problems)
    # and the log bucket is then no log destination of CloudFront: it still receives the S3 access logs
    assert len(problems) == 1


@pytest.mark.parametrize(("change", "words"), [
    (lambda o: o.pop("originAccessControlId"), "reads S3 without origin access control"),
    (lambda o: o.update(s3OriginConfig={"originAccessIdentity": "origin-access-identity/cloudfront/E1"}),
     "legacy origin access identity"),
])
def test_an_s3_origin_must_go_through_origin_access_control(change, words):
    graph = nodes()
    change(one(graph, DISTRIBUTION).props["origins"][0])
    assert len(found(graph)) == 1 and words in found(graph)[0]


def test_a_custom_certificate_below_tls_1_2_is_refused():
    graph = nodes()
    one(graph, DISTRIBUTION).props["viewerCertificate"] = {"acmCertificateArn": "arn:aws:acm:us-east-1:1:certificate/x",
                                                           "minimumProtocolVersion": "TLSv1.1_2016"}
    assert found(graph) == ["demo-ui-cdn: viewer certificate allows TLSv1.1_2016; set minimumProtocolVersion "
                            "TLSv1.2_2021 or newer"]


@pytest.mark.parametrize("block", ["blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"])
def test_every_public_access_block_must_be_on(block):
    graph = nodes()
    one(graph, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "demo-ui-site-public-access").props[block] = False
    problems = found(graph)
    assert f"demo-ui-site-public-access: leaves {block} off; turn all four on" in problems[0]
    assert problems[1].startswith("demo-ui-site: has no public access block with all four blocks on")


@pytest.mark.parametrize(("type_", "part", "words"), [
    ("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "site-public-access", "demo-ui-site: has no public access block"),
    ("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration", "site-encryption",
     "demo-ui-site: states no server-side encryption"),
    ("aws:s3/bucketLogging:BucketLogging", "site-access-logs", "demo-ui-site: has no server access logging"),
    ("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "logs-expiry",
     "demo-ui-logs: holds access logs but nothing expires them"),
])
def test_every_bucket_is_blocked_encrypted_and_logged_or_expired(type_, part, words):
    problems = found(without(nodes(), type_, part))
    assert len(problems) == 1 and problems[0].startswith(words), problems


def test_a_disabled_expiry_does_not_count():
    graph = nodes()
    one(graph, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration").props["rules"][0]["status"] = "Disabled"
    assert found(graph) == ["demo-ui-logs: holds access logs but nothing expires them; add a lifecycle rule with "
                            "expiration.days"]


@pytest.mark.parametrize("acl", ["public-read", "public-read-write", "authenticated-read"])
def test_a_public_object_acl_is_refused(acl):
    graph = nodes()
    one(graph, "aws:s3/bucketObjectv2:BucketObjectv2", "demo-ui-index-html").props["acl"] = acl
    assert found(graph) == [f"demo-ui-index-html: grants the public with acl {acl!r}; leave the ACL private and "
                            "serve through CloudFront"]


def test_a_website_endpoint_origin_is_not_taken_for_an_s3_rest_origin():
    graph = nodes()
    origin = one(graph, DISTRIBUTION).props["origins"][0]
    origin["domainName"] = "site.s3-website.us-east-1.amazonaws.com"
    origin.pop("originAccessControlId")
    assert found(graph) == []  # a custom (website) origin: the public-bucket check is the bucket's own
