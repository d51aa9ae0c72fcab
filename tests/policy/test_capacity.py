"""gpu-capacity-max: every autoscaler, node pool and HPA states a maximum within the ceiling."""

from __future__ import annotations

from policy import rule

CAPACITY = rule("gpu-capacity-max")


def messages(type_: str, inputs: dict, config: dict | None = None) -> list[str]:
    return [v.message for v in CAPACITY.check_resource(type_, "r", inputs, config=config)]


TARGET = "aws:appautoscaling/target:Target"
POOL = "gcp:container/nodePool:NodePool"
L4 = {"machineType": "g2-standard-8", "guestAccelerators": [{"type": "nvidia-l4", "count": 1}]}


def test_scalable_target_within_the_ceiling():
    assert messages(TARGET, {"minCapacity": 1, "maxCapacity": 4}) == []
    assert "exceeds the GPU capacity ceiling 16" in messages(TARGET, {"minCapacity": 1, "maxCapacity": 40})[0]
    assert "minimum 5 exceeds its maximum 4" in messages(TARGET, {"minCapacity": 5, "maxCapacity": 4})[0]


def test_ceiling_is_policy_config():
    assert messages(TARGET, {"minCapacity": 1, "maxCapacity": 40}, config={"ceiling": 64}) == []
    assert messages(TARGET, {"minCapacity": 1, "maxCapacity": 8}, config={"ceiling": 4})


def test_gpu_node_pool_needs_a_max_counted_over_its_zones():
    zonal = {"location": "us-central1-a", "nodeConfig": L4, "autoscaling": {"minNodeCount": 0, "maxNodeCount": 4}}
    assert messages(POOL, zonal) == []
    assert "no maxNodeCount" in messages(POOL, {**zonal, "autoscaling": {"minNodeCount": 0}})[0]
    regional = {**zonal, "location": "us-central1", "autoscaling": {"maxNodeCount": 6}}
    assert "3 zone(s)" in messages(POOL, regional)[0]  # 6 per zone x 3 zones = 18 > 16
    pinned = {**regional, "nodeLocations": ["us-central1-a", "us-central1-b"]}
    assert messages(POOL, pinned) == []
    assert messages(POOL, {**zonal, "autoscaling": {"totalMaxNodeCount": 4}}) == []


def test_cpu_node_pool_is_not_asked():
    assert messages(POOL, {"nodeConfig": {"machineType": "e2-standard-4"}}) == []


def test_fixed_gpu_node_pool_is_bounded_by_its_count():
    assert messages(POOL, {"nodeConfig": L4, "nodeCount": 2}) == []
    assert messages(POOL, {"nodeConfig": L4, "nodeCount": 20})


def test_hpa_max_replicas():
    hpa = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
    assert messages(hpa, {"spec": {"minReplicas": 1, "maxReplicas": 4}}) == []
    assert messages(hpa, {"spec": {"minReplicas": 1, "maxReplicas": 100}})
    assert messages(hpa, {"spec": {"minReplicas": 1}})


def test_azure_gpu_agent_pool_and_autoscale_setting():
    pool = "azure-native:containerservice:AgentPool"
    assert messages(pool, {"vmSize": "Standard_NV36ads_A10_v5", "enableAutoScaling": True, "minCount": 1, "maxCount": 4}) == []
    assert messages(pool, {"vmSize": "Standard_NV36ads_A10_v5", "enableAutoScaling": True, "minCount": 1})
    assert messages(pool, {"vmSize": "Standard_D4s_v5", "enableAutoScaling": True}) == []  # not a GPU size
    autoscale = "azure-native:monitor:AutoscaleSetting"
    assert messages(autoscale, {"profiles": [{"name": "p", "capacity": {"minimum": "1", "maximum": "3", "default": "1"}}]}) == []
    assert messages(autoscale, {"profiles": [{"name": "p", "capacity": {"minimum": "1", "maximum": "30", "default": "1"}}]})


def test_sagemaker_variant_initial_count():
    config = "aws:sagemaker/endpointConfiguration:EndpointConfiguration"
    assert messages(config, {"productionVariants": [{"variantName": "A", "instanceType": "ml.g5.2xlarge", "initialInstanceCount": 1}]}) == []
    assert messages(config, {"productionVariants": [{"variantName": "A", "instanceType": "ml.g5.2xlarge", "initialInstanceCount": 32}]})
