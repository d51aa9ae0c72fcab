"""`demoUi: true` on the aws stack under Pulumi mocks: the playground's private bucket behind CloudFront,
its logs, the page objects, and the gateway's CORS for that origin alone (Lambda environment, the
unauthenticated OPTIONS method, API Gateway's own errors). The CORS behaviour itself is tested on the app
(tests/gateway/test_cors.py) and in a browser (tests/playground, tests/local/test_playground_browser.py)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest

from components import InvalidArgs
from components.demo_ui import CACHING_OPTIMIZED_POLICY_ID, CONTENT_SECURITY_POLICY, PAGE_FILES, DemoUiArgs
from gateway.settings import Settings
from tests.pulumi_harness import StackRun, run_stack

ORIGIN = "https://d111111abcdef8.cloudfront.net"  # the mocked distribution's domain (stacks/rendered.py)


@cache
def demo() -> StackRun:
    return run_stack("aws", {"demoUi": True})


@cache
def plain() -> StackRun:
    return run_stack("aws")


def app_environment(run: StackRun) -> dict:
    functions = [r for r in run.of_type("aws:lambda/function:Function") if r.inputs.get("handler") == "run.sh"]
    assert len(functions) == 1
    return functions[0].inputs["environment"]["variables"]


def by_name(run: StackRun, type_: str) -> dict[str, dict]:
    return {r.name: r.inputs for r in run.of_type(type_)}


def test_off_by_default_nothing_of_it_exists():
    run = plain()
    types = run.type_counts()
    assert not [t for t in types if t.startswith(("aws:s3", "aws:cloudfront", "llminfer:demo_ui"))]
    assert "GATEWAY_CORS_ORIGINS" not in app_environment(run)
    assert [m.inputs["httpMethod"] for m in run.of_type("aws:apigateway/method:Method")] == ["ANY"]
    assert "demoUiUrl" not in run.outputs
    for response in run.of_type("aws:apigateway/response:Response"):
        assert "gatewayresponse.header.Access-Control-Allow-Origin" not in (response.inputs.get("responseParameters") or {})


def test_the_page_url_is_an_output_and_the_gateway_allows_that_origin_alone():
    run = demo()
    assert run.outputs["demoUiUrl"] == ORIGIN + "/"
    environment = app_environment(run)
    assert environment["GATEWAY_CORS_ORIGINS"] == ORIGIN
    assert Settings.from_env(environment).cors_origins == (ORIGIN,), "the app starts with it"


def test_preflights_pass_through_api_gateway_without_a_key_to_the_app():
    run = demo()
    methods = {m.inputs["httpMethod"]: m.inputs for m in run.of_type("aws:apigateway/method:Method")}
    assert set(methods) == {"ANY", "OPTIONS"}
    options, any_method = methods["OPTIONS"], methods["ANY"]
    assert options["authorization"] == "NONE" and options["apiKeyRequired"] is False
    assert "authorizerId" not in options
    assert options["resourceId"] == any_method["resourceId"], "on the same /v1/{proxy+} resource"
    assert any_method["apiKeyRequired"] is True, "everything else still needs the key"
    integrations = {i.inputs["httpMethod"]: i.inputs for i in run.of_type("aws:apigateway/integration:Integration")}
    assert integrations["OPTIONS"]["type"] == "AWS_PROXY"
    assert integrations["OPTIONS"]["uri"] == integrations["ANY"]["uri"], "the app answers the preflight"
    deployment = run.one("aws:apigateway/deployment:Deployment")
    assert {m.urn for m in run.of_type("aws:apigateway/method:Method")} <= set(deployment.dependencies)
    before = plain().one("aws:apigateway/deployment:Deployment").inputs["triggers"]["redeployment"]
    assert deployment.inputs["triggers"]["redeployment"] != before, "turning it on redeploys the stage"


def test_api_gateways_own_errors_are_readable_by_the_page():
    for response in demo().of_type("aws:apigateway/response:Response"):
        parameters = response.inputs["responseParameters"]
        assert parameters["gatewayresponse.header.Access-Control-Allow-Origin"] == f"'{ORIGIN}'", response.name
        assert parameters["gatewayresponse.header.Vary"] == "'Origin'"
    throttled = next(r for r in demo().of_type("aws:apigateway/response:Response") if r.inputs["responseType"] == "THROTTLED")
    assert throttled.inputs["responseParameters"]["gatewayresponse.header.Retry-After"] == "'1'", "kept"


def test_both_buckets_are_private_encrypted_and_owner_enforced_or_log_only():
    run = demo()
    buckets = {r.name: r for r in run.of_type("aws:s3/bucket:Bucket")}
    assert set(buckets) == {"demo-ui-site", "demo-ui-logs"}
    names = {name: r.state["bucket"] for name, r in buckets.items()}
    blocks = {b["bucket"]: b for b in by_name(run, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock").values()}
    encryption = {e["bucket"]: e for e in by_name(
        run, "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration").values()}
    ownership = {o["bucket"]: o["rule"]["objectOwnership"]
                 for o in by_name(run, "aws:s3/bucketOwnershipControls:BucketOwnershipControls").values()}
    for bucket in names.values():
        assert all(blocks[bucket][k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                                        "restrictPublicBuckets")), bucket
        rule = encryption[bucket]["rules"][0]
        assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"
    assert ownership == {names["demo-ui-site"]: "BucketOwnerEnforced", names["demo-ui-logs"]: "BucketOwnerPreferred"}
    for bucket in buckets.values():
        assert bucket.inputs["tags"]["project"] == "llm-inference"


def test_the_distribution_waits_for_acls_on_its_log_bucket():
    # CloudFront refuses a log bucket without ACLs at create time, and a new bucket starts without them: the
    # ownership change must land first, and nothing in the distribution's inputs orders it.
    run = demo()
    logs = run.named("demo-ui-logs").state["bucket"]
    (ownership,) = [o for o in run.of_type("aws:s3/bucketOwnershipControls:BucketOwnershipControls")
                    if o.inputs["bucket"] == logs]
    assert ownership.inputs["rule"]["objectOwnership"] == "BucketOwnerPreferred"
    assert ownership.urn in run.one("aws:cloudfront/distribution:Distribution").dependencies


def test_only_this_distribution_reads_the_page_bucket_and_never_over_plain_http():
    run = demo()
    site = run.named("demo-ui-site").state
    distribution = run.one("aws:cloudfront/distribution:Distribution").state
    policy = json.loads(next(p["policy"] for p in by_name(run, "aws:s3/bucketPolicy:BucketPolicy").values()
                             if p["bucket"] == site["bucket"]))
    allow, deny = policy["Statement"]
    assert allow == {
        "Sid": "CloudFrontReadsThroughOAC", "Effect": "Allow", "Principal": {"Service": "cloudfront.amazonaws.com"},
        "Action": "s3:GetObject", "Resource": f"{site['arn']}/*",
        "Condition": {"StringEquals": {"AWS:SourceArn": distribution["arn"]}},
    }
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_cloudfront_serves_https_only_through_oac_with_security_headers_and_logs():
    run = demo()
    distribution = run.one("aws:cloudfront/distribution:Distribution").inputs
    site, logs = run.named("demo-ui-site").state, run.named("demo-ui-logs").state
    oac = run.one("aws:cloudfront/originAccessControl:OriginAccessControl")
    assert oac.inputs["signingBehavior"] == "always" and oac.inputs["signingProtocol"] == "sigv4"
    (origin,) = distribution["origins"]
    assert origin["domainName"] == site["bucketRegionalDomainName"]
    assert origin["originAccessControlId"] == f"{oac.name}-id"
    behavior = distribution["defaultCacheBehavior"]
    assert behavior["viewerProtocolPolicy"] == "https-only"
    assert behavior["allowedMethods"] == ["GET", "HEAD"]
    assert behavior["cachePolicyId"] == CACHING_OPTIMIZED_POLICY_ID
    headers = run.one("aws:cloudfront/responseHeadersPolicy:ResponseHeadersPolicy")
    assert behavior["responseHeadersPolicyId"] == f"{headers.name}-id"
    security = headers.inputs["securityHeadersConfig"]
    assert security["contentSecurityPolicy"]["contentSecurityPolicy"] == CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY and "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert security["frameOptions"]["frameOption"] == "DENY"
    assert security["referrerPolicy"]["referrerPolicy"] == "no-referrer"
    assert security["strictTransportSecurity"]["accessControlMaxAgeSec"] >= 31_536_000
    assert security["contentTypeOptions"]["override"] is True
    assert distribution["defaultRootObject"] == "index.html"
    assert distribution["loggingConfig"]["bucket"] == logs["bucketDomainName"]
    access_logs = run.one("aws:s3/bucketLogging:BucketLogging").inputs
    assert (access_logs["bucket"], access_logs["targetBucket"]) == (site["bucket"], logs["bucket"])
    lifecycle = run.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration").inputs
    assert lifecycle["bucket"] == logs["bucket"]
    retention = int(run.config["llm-inference:logRetentionDays"])
    assert lifecycle["rules"][0]["expiration"]["days"] == retention


def test_the_page_files_and_a_config_with_the_gateway_url_but_never_the_key():
    run = demo()
    objects = {o.inputs["key"]: o.inputs for o in run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")}
    assert set(objects) == {*PAGE_FILES, "config.json"}
    site = run.named("demo-ui-site").state["bucket"]
    for key, content_type in PAGE_FILES.items():
        assert objects[key]["bucket"] == site and objects[key]["contentType"] == content_type
        assert Path(objects[key]["source"].path).read_bytes() == (Path("playground") / key).read_bytes()
    config = json.loads(objects["config.json"]["content"])
    assert config == {"baseUrl": run.outputs["url"], "model": run.config["llm-inference:modelId"]}
    key = run.outputs["apiKey"]
    assert all(key not in json.dumps(o, default=str) for o in objects.values())
    assert all(o["cacheControl"] == "no-cache" for o in objects.values())


def test_every_resource_is_a_child_of_its_component():
    run = demo()
    ui = run.one("llminfer:demo_ui:DemoUi")
    config = run.one("llminfer:demo_ui:DemoUiConfig")
    children = {r.type for r in run.children_of(ui)}
    assert {"aws:s3/bucket:Bucket", "aws:cloudfront/distribution:Distribution", "aws:s3/bucketPolicy:BucketPolicy",
            "aws:cloudfront/originAccessControl:OriginAccessControl"} <= children
    assert [r.inputs["key"] for r in run.children_of(config)] == ["config.json"]
    ours = [r for r in run.resources if r.type.startswith(("aws:s3", "aws:cloudfront"))]
    assert all(r.parent in (ui.urn, config.urn) for r in ours)


@pytest.mark.parametrize(("field", "value", "words"), [
    ("log_retention_days", 10, "is not one of"),
    ("price_class", "PriceClass_Cheap", "PriceClass_100"),
    ("page_dir", Path("/nonexistent"), "lacks index.html"),
])
def test_bad_args_are_refused_naming_the_field(field, value, words):
    with pytest.raises(InvalidArgs) as raised:
        DemoUiArgs(**{field: value}).validate()
    assert field in str(raised.value) and words in str(raised.value)


@pytest.mark.parametrize("origin", ["http://d1.cloudfront.net", "https://d1.cloudfront.net/", "*"])
def test_the_gateway_refuses_a_cors_origin_that_is_not_https_origin(origin):
    from tests.gateway.test_component import args

    with pytest.raises(InvalidArgs) as raised:
        args(cors_origin=origin).validate()
    assert "cors_origin" in str(raised.value) and "https origin" in str(raised.value)


def _rate_rule_headers(run: StackRun) -> list[dict]:
    acl = run.one("aws:wafv2/webAcl:WebAcl").inputs
    (rate,) = [r for r in acl["rules"] if r["name"] == "rate-limit-per-ip"]
    return rate["action"]["block"]["customResponse"]["responseHeaders"]


def test_a_waf_blocked_ips_429_is_readable_by_the_page():
    # The example stack sets wafRateLimitPerIp: without the origin on WAF's own 429 the browser hides its body.
    assert _rate_rule_headers(demo()) == [{"name": "Retry-After", "value": "60"},
                                          {"name": "Access-Control-Allow-Origin", "value": ORIGIN},
                                          {"name": "Vary", "value": "Origin"}]
    assert _rate_rule_headers(plain()) == [{"name": "Retry-After", "value": "60"}]
