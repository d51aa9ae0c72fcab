"""GkeCluster: args validation, label/id helpers, kubeconfig, and the graph it builds under Pulumi mocks."""

from __future__ import annotations

import dataclasses
import json

import pytest

from components import InvalidArgs
from components.gke_cluster import GkeCluster, GkeClusterArgs, gcp_labels, gcp_resource_id, kubeconfig
from tests.pulumi_harness import run_program

ARGS = GkeClusterArgs(
    project="my-project-1",
    region="us-central1",
    zone="us-central1-a",
    machine_type="g2-standard-8",
    accelerator_type="nvidia-l4",
    accelerator_count=1,
    min_nodes=1,
    max_nodes=4,
    labels={"project": "llm-inference", "owner": "ML Platform"},
)


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"maintenance_recurrence": "weekly"}, "maintenance_recurrence", "RRULE"),
        ({"maintenance_window_utc": "3-9"}, "maintenance_window_utc", "UTC time range"),
        ({"maintenance_window_utc": "03:00-05:00"}, "maintenance_window_utc", "4 hours"),
    ],
)
def test_bad_maintenance_settings_name_their_field(changes, field, says):
    with pytest.raises(InvalidArgs) as err:
        dataclasses.replace(ARGS, **changes)
    assert err.value.field == field
    assert says in err.value.message


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"project": "My_Project"}, "project", "not a GCP project id"),
        ({"region": "us central"}, "region", "not a GCP region"),
        ({"zone": "europe-west4-a"}, "zone", "not a zone of region us-central1"),
        ({"node_zones": ("us-central1-a", "us-east1-b")}, "node_zones", "'us-east1-b' is not a zone"),
        ({"machine_type": ""}, "machine_type", "non-empty"),
        ({"machine_type": "G2 Standard"}, "machine_type", "not a GCE machine type"),
        ({"accelerator_type": "l4"}, "accelerator_type", "nvidia-l4"),
        ({"accelerator_count": 0}, "accelerator_count", "at least 1 GPU"),
        ({"min_nodes": 5, "max_nodes": 4}, "min_nodes", "must not exceed max_nodes"),
        ({"max_nodes": 0}, "max_nodes", "positive"),
        ({"surge_nodes": -1}, "surge_nodes", ">= 0"),
        ({"disk_size_gb": 50}, "disk_size_gb", "at least 100 GB"),
        ({"release_channel": "NIGHTLY"}, "release_channel", "REGULAR"),
        ({"subnet_cidr": "10.0.0.0/33"}, "subnet_cidr", "not an IPv4 CIDR"),
        ({"subnet_cidr": "10.0.0.1/20"}, "subnet_cidr", "host bits"),
        ({"subnet_cidr": "8.8.0.0/20"}, "subnet_cidr", "private range"),
        ({"services_cidr": "10.4.1.0/24"}, "services_cidr", "overlaps pods_cidr"),
        ({"pods_cidr": "10.4.0.0/24"}, "pods_cidr", "/21 or larger"),
        ({"api_source_ranges": ("203.0.113.0/24", "nonsense")}, "api_source_ranges", "'nonsense' is not an IPv4 CIDR"),
    ],
)
def test_bad_args_name_their_field(changes, field, says):
    with pytest.raises(InvalidArgs) as err:
        dataclasses.replace(ARGS, **changes)
    assert err.value.field == field
    assert says in err.value.message


def test_gcp_labels_are_lowercase_and_short():
    labels = gcp_labels({"Owner": "ML Platform/Team.A", "9lives": "x" * 80, "managed-by": "pulumi"})
    assert labels == {"owner": "ml_platform_team_a", "k9lives": "x" * 63, "managed-by": "pulumi"}


def test_gcp_resource_id_fits_service_account_rules():
    assert gcp_resource_id("gke", "gcp", "nodes") == "gke-gcp-nodes"
    assert gcp_resource_id("a") == "a00000"  # service account ids need 6 characters
    long_one = gcp_resource_id("gke", "a-very-long-stack-name-for-production", "nodes")
    other = gcp_resource_id("gke", "a-very-long-stack-name-for-production-2", "nodes")
    assert len(long_one) <= 30 and len(other) <= 30
    assert long_one != other
    assert gcp_resource_id("9", "Stack_Name") == "x-9-stack-name"


def test_kubeconfig_authenticates_with_the_gcloud_plugin_and_holds_no_secret():
    config = json.loads(kubeconfig("c1", "10.0.0.2", "Q0E="))
    assert config["clusters"][0]["cluster"] == {"server": "https://10.0.0.2", "certificate-authority-data": "Q0E="}
    user = config["users"][0]["user"]
    assert set(user) == {"exec"}  # no token, no client certificate
    assert user["exec"]["command"] == "gke-gcloud-auth-plugin"
    assert config["current-context"] == config["contexts"][0]["name"]


def _build(args: GkeClusterArgs):
    def program():
        cluster = GkeCluster("test", args)
        return {"name": cluster.cluster_name, "kubeconfig": cluster.kubeconfig, "location": cluster.location}

    return run_program(program, stack="dev")


def test_every_child_hangs_off_the_component_and_carries_its_name():
    run = _build(ARGS)
    component = run.one("llminfer:gke_cluster:GkeCluster")
    children = [r for r in run.resources if r is not component]
    assert children and all(r.parent == component.urn for r in children)
    assert all(r.name.startswith("test-") for r in children)
    assert run.type_counts() == {
        "gcp:compute/network:Network": 1,
        "gcp:compute/router:Router": 1,
        "gcp:compute/routerNat:RouterNat": 1,
        "gcp:compute/subnetwork:Subnetwork": 1,
        "gcp:container/cluster:Cluster": 1,
        "gcp:container/nodePool:NodePool": 2,
        "gcp:projects/iAMMember:IAMMember": 1,
        "gcp:serviceaccount/account:Account": 1,
        "llminfer:gke_cluster:GkeCluster": 1,
    }
    assert json.loads(run.outputs["kubeconfig"])["clusters"][0]["cluster"]["server"] == "https://10.0.0.2"
    assert run.outputs["location"] == "us-central1-a"


def test_nodes_run_as_a_dedicated_least_privilege_account():
    run = _build(ARGS)
    account = run.one("gcp:serviceaccount/account:Account")
    assert account.inputs["accountId"] == "test-dev-nodes"
    email = "test-dev-nodes@mock-project.iam.gserviceaccount.com"
    binding = run.one("gcp:projects/iAMMember:IAMMember")
    assert binding.inputs["role"] == "roles/container.defaultNodeServiceAccount"
    assert binding.inputs["member"] == f"serviceAccount:{email}"
    for pool in run.of_type("gcp:container/nodePool:NodePool"):
        assert pool.inputs["nodeConfig"]["serviceAccount"] == email
        assert pool.inputs["nodeConfig"]["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}


def test_the_default_pool_the_cluster_creates_runs_as_the_stacks_account_too():
    # Unset, GKE's initial default pool runs as the default Compute Engine account: creating the cluster
    # fails in projects where that account is disabled, before remove_default_node_pool ever removes it.
    run = _build(ARGS)
    cluster = run.one("gcp:container/cluster:Cluster").inputs
    assert cluster["nodeConfig"] == {
        "serviceAccount": "test-dev-nodes@mock-project.iam.gserviceaccount.com",
        "oauthScopes": ["https://www.googleapis.com/auth/cloud-platform"],
    }
    assert cluster["removeDefaultNodePool"] is True


def test_maintenance_happens_in_a_recurring_window():
    cluster = _build(ARGS).one("gcp:container/cluster:Cluster").inputs
    assert cluster["maintenancePolicy"] == {
        "recurringWindow": {
            "startTime": "2025-01-04T03:00:00Z",
            "endTime": "2025-01-04T09:00:00Z",
            "recurrence": "FREQ=WEEKLY;BYDAY=SA,SU",
        }
    }
    overnight = _build(dataclasses.replace(ARGS, maintenance_window_utc="22:00-04:00", maintenance_recurrence="FREQ=DAILY"))
    window = overnight.one("gcp:container/cluster:Cluster").inputs["maintenancePolicy"]["recurringWindow"]
    assert (window["startTime"], window["endTime"]) == ("2025-01-04T22:00:00Z", "2025-01-05T04:00:00Z")
    anytime = _build(dataclasses.replace(ARGS, maintenance_recurrence=""))
    assert "maintenancePolicy" not in anytime.one("gcp:container/cluster:Cluster").inputs


def test_regional_cluster_spreads_gpu_nodes_and_starts_none_per_zone():
    run = _build(dataclasses.replace(ARGS, zone="", node_zones=("us-central1-a", "us-central1-c"), spot=True))
    cluster = run.one("gcp:container/cluster:Cluster")
    assert cluster.inputs["location"] == "us-central1"
    gpu = run.named("test-gpu-pool")
    assert gpu.inputs["location"] == "us-central1"
    assert gpu.inputs["nodeLocations"] == ["us-central1-a", "us-central1-c"]
    # initial_node_count is per zone (and replaces the pool when changed): the autoscaler adds nodes.
    assert gpu.inputs["initialNodeCount"] == 0
    assert gpu.inputs["autoscaling"]["totalMinNodeCount"] == 1
    assert gpu.inputs["autoscaling"]["totalMaxNodeCount"] == 5
    assert gpu.inputs["nodeConfig"]["spot"] is True


def test_api_source_ranges_become_master_authorized_networks():
    run = _build(dataclasses.replace(ARGS, api_source_ranges=("203.0.113.0/24", "198.51.100.7/32")))
    blocks = run.one("gcp:container/cluster:Cluster").inputs["masterAuthorizedNetworksConfig"]["cidrBlocks"]
    assert [b["cidrBlock"] for b in blocks] == ["203.0.113.0/24", "198.51.100.7/32"]
    open_run = _build(ARGS)
    assert "masterAuthorizedNetworksConfig" not in open_run.one("gcp:container/cluster:Cluster").inputs


def test_labels_reach_the_cluster_and_the_node_vms_sanitized():
    run = _build(ARGS)
    expected = {"project": "llm-inference", "owner": "ml_platform"}
    assert run.one("gcp:container/cluster:Cluster").inputs["resourceLabels"] == expected
    for pool in run.of_type("gcp:container/nodePool:NodePool"):
        assert pool.inputs["nodeConfig"]["resourceLabels"] == expected
