"""Static web content (the demo UI): S3 buckets stay private, encrypted and logged; CloudFront serves
them over HTTPS only, through origin access control, with security headers and access logs.

Resource checks: a CloudFront distribution's every cache behaviour redirects or refuses plain HTTP, has a
response headers policy, and the distribution writes access logs; an S3 origin is read through origin
access control (not the legacy origin access identity, not a public bucket); a custom certificate's
minimum is TLS 1.2. A public access block has all four blocks on; no object or bucket ACL grants the public.

Graph checks: every S3 bucket of the stack has a public access block with all four on, a server-side
encryption configuration, and either server access logging or, when it is a log destination (of S3
access logs or of CloudFront), a lifecycle rule that expires what it holds (the log-retention idea for
buckets). S3 encrypts every object since January 2023 whatever is set; the configuration is asked for so
that the choice (SSE-S3 or a KMS key) is stated in the stack, where a review sees it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from policy._model import Node, Rule, as_list, get, is_map, number, truthy

HTTPS_VIEWER_POLICIES = frozenset({"https-only", "redirect-to-https"})
# CloudFront security policies that allow TLS below 1.2 (CloudFront Developer Guide, supported protocols).
WEAK_TLS = frozenset({"SSLv3", "TLSv1", "TLSv1_2016", "TLSv1.1_2016"})
PUBLIC_ACLS = frozenset({"public-read", "public-read-write", "authenticated-read"})
_BLOCKS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
_BUCKET_TYPES = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")


def _is_s3_domain(domain: Any) -> bool:
    text = str(domain or "")
    return ".s3." in text and text.endswith(".amazonaws.com") and ".s3-website" not in text


def _distribution_problems(inputs: Mapping[str, Any]) -> Iterator[str]:
    behaviors = [("default cache behavior", inputs.get("defaultCacheBehavior"))]
    behaviors += [(f"cache behavior {get(b, 'pathPattern', default=i)!r}", b)
                  for i, b in enumerate(as_list(inputs.get("orderedCacheBehaviors")))]
    for label, behavior in behaviors:
        if not is_map(behavior):
            continue
        policy = behavior.get("viewerProtocolPolicy")
        if policy not in HTTPS_VIEWER_POLICIES:
            yield f"{label} has viewerProtocolPolicy {policy!r}; set https-only (or redirect-to-https)"
        if not behavior.get("responseHeadersPolicyId"):
            yield f"{label} has no responseHeadersPolicyId; attach a policy with the security headers (HSTS, nosniff, frame, CSP)"
    if not get(inputs, "loggingConfig", "bucket"):
        yield "writes no access logs; set loggingConfig.bucket to a log bucket of the stack (with an expiry)"
    for origin in as_list(inputs.get("origins")):
        if not is_map(origin) or not _is_s3_domain(origin.get("domainName")):
            continue
        label = f"origin {origin.get('originId')!r}"
        if get(origin, "s3OriginConfig", "originAccessIdentity"):
            yield f"{label} uses a legacy origin access identity; use origin access control (originAccessControlId)"
        elif not origin.get("originAccessControlId"):
            yield f"{label} reads S3 without origin access control: the bucket would have to be public; set originAccessControlId"
    certificate = inputs.get("viewerCertificate")
    if is_map(certificate) and (certificate.get("acmCertificateArn") or certificate.get("iamCertificateId")):
        if str(certificate.get("minimumProtocolVersion") or "TLSv1") in WEAK_TLS:
            yield (f"viewer certificate allows {certificate.get('minimumProtocolVersion') or 'TLSv1'}; "
                   "set minimumProtocolVersion TLSv1.2_2021 or newer")


def web_content(type_: str, name: str, inputs: Mapping[str, Any]) -> Iterator[str]:
    if type_ == "aws:cloudfront/distribution:Distribution":
        yield from _distribution_problems(inputs)
    elif type_ == "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock":
        off = [block for block in _BLOCKS if not truthy(inputs.get(block))]
        if off:
            yield f"leaves {', '.join(off)} off; turn all four on (the page is served through CloudFront, never S3)"
    elif type_ in ("aws:s3/bucketObjectv2:BucketObjectv2", "aws:s3/bucketObject:BucketObject",
                   "aws:s3/bucketAclV2:BucketAclV2", "aws:s3/bucketAcl:BucketAcl"):
        if str(inputs.get("acl") or "") in PUBLIC_ACLS:
            yield f"grants the public with acl {inputs['acl']!r}; leave the ACL private and serve through CloudFront"


def _refers_to(value: Any, bucket: Node) -> bool:
    names = {str(v) for v in (bucket.props.get("bucket"), bucket.props.get("id")) if v}
    return str(value) in names


def _domain_of(value: Any, bucket: Node) -> bool:
    domains = {str(v) for v in (bucket.props.get("bucketDomainName"), bucket.props.get("bucketRegionalDomainName")) if v}
    return str(value) in domains


def _expires(lifecycle: Node) -> bool:
    for rule in as_list(lifecycle.props.get("rules")):
        if str(get(rule, "status", default="")) == "Enabled" and (number(get(rule, "expiration", "days")) or 0) > 0:
            return True
    return False


def bucket_guardrails(nodes: Sequence[Node]) -> Iterator[tuple[Node, str]]:
    """Every bucket: public access blocked, encryption stated, and access logged or (a log bucket) expired."""
    def of(type_: str) -> list[Node]:
        return [n for n in nodes if n.type == type_]

    blocks = of("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    encryption = of("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    logging = of("aws:s3/bucketLogging:BucketLogging")
    lifecycles = of("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    distributions = of("aws:cloudfront/distribution:Distribution")
    for bucket in (n for n in nodes if n.type in _BUCKET_TYPES):
        block = [b for b in blocks if _refers_to(b.props.get("bucket"), bucket)]
        if not block or not all(truthy(block[0].props.get(k)) for k in _BLOCKS):
            yield bucket, "has no public access block with all four blocks on; add a BucketPublicAccessBlock"
        if not any(_refers_to(e.props.get("bucket"), bucket) for e in encryption):
            yield bucket, "states no server-side encryption; add a BucketServerSideEncryptionConfiguration (AES256 or aws:kms)"
        log_target = any(_refers_to(entry.props.get("targetBucket"), bucket) for entry in logging) or any(
            _domain_of(get(d.props, "loggingConfig", "bucket"), bucket) for d in distributions)
        if log_target:
            if not any(_refers_to(lc.props.get("bucket"), bucket) and _expires(lc) for lc in lifecycles):
                yield bucket, "holds access logs but nothing expires them; add a lifecycle rule with expiration.days"
        elif not any(_refers_to(entry.props.get("bucket"), bucket) for entry in logging):
            yield bucket, "has no server access logging; add a BucketLogging to the stack's log bucket"


RULE = Rule(
    name="private-web-content",
    description="S3 buckets are private, encrypted and logged; CloudFront serves them over HTTPS through origin access control, with security headers and access logs.",
    remediation="Block all public access on every bucket, state its encryption, log access to a log bucket that expires its logs; give CloudFront https-only behaviours, a response headers policy, an origin access control and loggingConfig.",
    resource_checks=(web_content,),
    graph_checks=(bucket_guardrails,),
)
