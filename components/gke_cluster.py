"""A GKE cluster for GPU inference: its own VPC, private nodes behind Cloud NAT, and two node pools.

- VPC-native (alias IPs from the subnet's secondary ranges), Dataplane V2 (so NetworkPolicies are
  enforced), Workload Identity, Managed Service for Prometheus, a release channel, private nodes
  (no public IPs; Cloud NAT for image pulls and the model download) and a public, optionally
  restricted, control-plane endpoint.
- A small CPU pool for cluster services (DNS, the metrics adapter): GKE taints GPU nodes
  `nvidia.com/gpu=present:NoSchedule`, so nothing else could run without it.
- A GPU pool (`g2-standard-8` + 1x `nvidia-l4` by default) with GKE-managed driver installation,
  autoscaled between the stack's min and max (plus surge headroom for rolling updates), optionally Spot.
- A dedicated node service account holding only `roles/container.defaultNodeServiceAccount`, also for the
  default pool GKE creates (and this component removes) with the cluster: left unset, that pool runs as
  the default Compute Engine account, and creating the cluster fails where that account is disabled.
- A recurring maintenance window (weekend nights by default): with one replica and auto-upgrade on, a node
  upgrade is an outage of several minutes (a new GPU node, the image pull and the model download), so it
  happens when it hurts least (docs/gcp.md).

`kubeconfig` authenticates with `gke-gcloud-auth-plugin`, so it holds no credential.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pulumi
from pulumi_gcp import compute, container, projects, serviceaccount

from components._args import (
    InvalidArgs,
    require,
    require_choice,
    require_min_max,
    require_positive,
    require_text,
)

COMPONENT = "GkeCluster"
RELEASE_CHANNELS = ("RAPID", "REGULAR", "STABLE", "EXTENDED")
NODE_ROLE = "roles/container.defaultNodeServiceAccount"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"

_PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_MACHINE_TYPE = re.compile(r"^[a-z][a-z0-9]*-[a-z0-9-]+$")
_ACCELERATOR = re.compile(r"^nvidia-[a-z0-9-]+$")
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
_RRULE = re.compile(r"^FREQ=(DAILY|WEEKLY)(;[A-Z]+=[A-Z0-9,]+)*$")
# GKE wants at least 4 contiguous hours per window (and 48 hours of windows in any 32 days).
MIN_WINDOW_HOURS = 4
# Any past date serves as the window's anchor: GKE takes its time of day, length and the recurrence.
_WINDOW_ANCHOR = "2025-01-04"


def maintenance_window(window_utc: str) -> tuple[str, str]:
    """`HH:MM-HH:MM` (UTC) -> the RFC 3339 start and end of a recurring window (the end may be next day)."""
    match = _WINDOW.fullmatch(window_utc)
    if match is None:
        raise ValueError(f"{window_utc!r} is not HH:MM-HH:MM")
    start_h, start_m, end_h, end_m = (int(g) for g in match.groups())
    start, end = start_h * 60 + start_m, end_h * 60 + end_m
    if end <= start:
        end += 24 * 60
    day = int(_WINDOW_ANCHOR[-2:])
    return (
        f"{_WINDOW_ANCHOR[:-2]}{day:02d}T{start_h:02d}:{start_m:02d}:00Z",
        f"{_WINDOW_ANCHOR[:-2]}{day + end // (24 * 60):02d}T{end_h:02d}:{end_m:02d}:00Z",
    )


def gcp_labels(tags: Mapping[str, str]) -> dict[str, str]:
    """Tags as GCP labels: keys start with a letter; keys and values are lowercase [a-z0-9_-], <= 63 chars."""
    labels: dict[str, str] = {}
    for key, value in tags.items():
        clean_key = re.sub(r"[^a-z0-9_-]", "_", str(key).lower())[:63]
        if not clean_key or not clean_key[0].isalpha():
            clean_key = f"k{clean_key}"[:63]
        labels[clean_key] = re.sub(r"[^a-z0-9_-]", "_", str(value).lower())[:63]
    return labels


def gcp_resource_id(*parts: str, max_length: int = 30) -> str:
    """A lowercase id from `parts` (service accounts: 6-30 chars); a hash suffix keeps long ones unique."""
    text = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    if not text or not text[0].isalpha():
        text = f"x-{text}"
    if len(text) > max_length:
        digest = hashlib.sha256(text.encode()).hexdigest()[:6]
        text = f"{text[: max_length - 7].rstrip('-')}-{digest}"
    return text.ljust(6, "0")


def _network(component: str, field_name: str, value: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value, strict=True)
    except ValueError as err:
        raise InvalidArgs(component, field_name, f"{value!r} is not an IPv4 CIDR block like 10.0.0.0/20 ({err})") from None


def require_cidrs(component: str, field_name: str, values: tuple[str, ...]) -> None:
    require(component, field_name, isinstance(values, tuple), f"must be a tuple of CIDR blocks, got {values!r}")
    for value in values:
        _network(component, field_name, value)


@dataclass(frozen=True)
class GkeClusterArgs:
    project: str
    region: str
    # "" makes a regional cluster (control plane in three zones); a zone makes a zonal one (cheaper).
    zone: str
    machine_type: str
    accelerator_type: str
    accelerator_count: int
    min_nodes: int
    max_nodes: int
    # Extra GPU nodes the autoscaler may add during a rolling update (maxSurge) on top of max_nodes.
    surge_nodes: int = 1
    spot: bool = False
    node_zones: tuple[str, ...] = ()
    disk_size_gb: int = 200
    system_machine_type: str = "e2-standard-2"
    release_channel: str = "REGULAR"
    subnet_cidr: str = "10.0.0.0/20"
    pods_cidr: str = "10.4.0.0/14"
    services_cidr: str = "10.8.0.0/20"
    # CIDRs allowed to reach the Kubernetes API endpoint; empty means any (IAM still applies).
    api_source_ranges: tuple[str, ...] = ()
    deletion_protection: bool = False
    # RFC 5545 RRULE of the maintenance window (GKE's recurringWindow); "" lets GKE upgrade at any time.
    maintenance_recurrence: str = "FREQ=WEEKLY;BYDAY=SA,SU"
    maintenance_window_utc: str = "03:00-09:00"
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c = COMPONENT
        require(c, "project", isinstance(self.project, str) and bool(_PROJECT_ID.match(self.project)),
                f"{self.project!r} is not a GCP project id (6-30 chars: lowercase letters, digits, hyphens)")
        require(c, "region", isinstance(self.region, str) and bool(_REGION.match(self.region)),
                f"{self.region!r} is not a GCP region like us-central1")
        require(c, "zone", self.zone == "" or (isinstance(self.zone, str) and re.fullmatch(rf"{re.escape(self.region)}-[a-z]", self.zone) is not None),
                f"{self.zone!r} is not a zone of region {self.region} (like {self.region}-a); empty makes a regional cluster")
        require(c, "node_zones", isinstance(self.node_zones, tuple), f"must be a tuple of zones, got {self.node_zones!r}")
        for zone in self.node_zones:
            require(c, "node_zones", re.fullmatch(rf"{re.escape(self.region)}-[a-z]", str(zone)) is not None,
                    f"{zone!r} is not a zone of region {self.region}")
        for name in ("machine_type", "system_machine_type"):
            value = getattr(self, name)
            require_text(c, name, value)
            require(c, name, bool(_MACHINE_TYPE.match(value)), f"{value!r} is not a GCE machine type like g2-standard-8")
        require(c, "accelerator_type", isinstance(self.accelerator_type, str) and bool(_ACCELERATOR.match(self.accelerator_type)),
                f"{self.accelerator_type!r} is not a GKE GPU type like nvidia-l4")
        require(c, "accelerator_count", isinstance(self.accelerator_count, int) and not isinstance(self.accelerator_count, bool)
                and self.accelerator_count >= 1, f"must be at least 1 GPU per node, got {self.accelerator_count!r}")
        require_min_max(c, "min_nodes", self.min_nodes, "max_nodes", self.max_nodes)
        require(c, "surge_nodes", isinstance(self.surge_nodes, int) and self.surge_nodes >= 0,
                f"must be a whole number >= 0, got {self.surge_nodes!r}")
        require_positive(c, "disk_size_gb", self.disk_size_gb)
        require(c, "disk_size_gb", self.disk_size_gb >= 100,
                f"({self.disk_size_gb}) must be at least 100 GB: the vLLM image and the model cache live on the boot disk")
        require_choice(c, "release_channel", self.release_channel, RELEASE_CHANNELS)
        ranges = {name: _network(c, name, getattr(self, name)) for name in ("subnet_cidr", "pods_cidr", "services_cidr")}
        for name, network in ranges.items():
            require(c, name, network.is_private, f"{network} must be a private range (RFC 1918 or 100.64.0.0/10)")
        names = list(ranges)
        for i, first in enumerate(names):
            for second in names[i + 1:]:
                require(c, second, not ranges[first].overlaps(ranges[second]),
                        f"{ranges[second]} overlaps {first} {ranges[first]}")
        require(c, "pods_cidr", ranges["pods_cidr"].prefixlen <= 21, "must be /21 or larger (GKE gives each node a /24 of pod IPs)")
        require_cidrs(c, "api_source_ranges", self.api_source_ranges)
        if self.maintenance_recurrence:
            require(c, "maintenance_recurrence", isinstance(self.maintenance_recurrence, str)
                    and _RRULE.fullmatch(self.maintenance_recurrence) is not None,
                    f"{self.maintenance_recurrence!r} is not an RRULE such as FREQ=WEEKLY;BYDAY=SA,SU")
            require(c, "maintenance_window_utc", isinstance(self.maintenance_window_utc, str)
                    and _WINDOW.fullmatch(self.maintenance_window_utc) is not None,
                    f"{self.maintenance_window_utc!r} is not a UTC time range such as 03:00-09:00")
            start, end = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in maintenance_window(self.maintenance_window_utc))
            require(c, "maintenance_window_utc", end - start >= timedelta(hours=MIN_WINDOW_HOURS),
                    f"{self.maintenance_window_utc!r} is shorter than the {MIN_WINDOW_HOURS} hours GKE requires")

    @property
    def location(self) -> str:
        return self.zone or self.region


class GkeCluster(pulumi.ComponentResource):
    """The cluster, its network and node pools; `kubeconfig` feeds a `pulumi_kubernetes.Provider`."""

    cluster_name: pulumi.Output[str]
    location: str
    endpoint: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    node_service_account: pulumi.Output[str]
    workload_pool: str

    def __init__(self, name: str, args: GkeClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(f"llminfer:gke_cluster:{COMPONENT}", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        labels = gcp_labels(args.labels)
        self.location = args.location
        self.workload_pool = f"{args.project}.svc.id.goog"

        network = compute.Network(
            f"{name}-network",
            project=args.project,
            auto_create_subnetworks=False,
            routing_mode="REGIONAL",
            description="GKE inference cluster network (managed by Pulumi)",
            opts=child,
        )
        subnet = compute.Subnetwork(
            f"{name}-subnet",
            project=args.project,
            region=args.region,
            network=network.id,
            ip_cidr_range=args.subnet_cidr,
            # Private nodes reach Google APIs (Artifact Registry, Monitoring) without NAT.
            private_ip_google_access=True,
            secondary_ip_ranges=[
                compute.SubnetworkSecondaryIpRangeArgs(range_name="pods", ip_cidr_range=args.pods_cidr),
                compute.SubnetworkSecondaryIpRangeArgs(range_name="services", ip_cidr_range=args.services_cidr),
            ],
            opts=child,
        )
        router = compute.Router(f"{name}-router", project=args.project, region=args.region, network=network.id, opts=child)
        # Private nodes have no public IP: NAT carries the vLLM image pull (Docker Hub) and the model download.
        compute.RouterNat(
            f"{name}-nat",
            project=args.project,
            region=args.region,
            router=router.name,
            nat_ip_allocate_option="AUTO_ONLY",
            source_subnetwork_ip_ranges_to_nat="ALL_SUBNETWORKS_ALL_IP_RANGES",
            log_config=compute.RouterNatLogConfigArgs(enable=True, filter="ERRORS_ONLY"),
            opts=child,
        )

        account = serviceaccount.Account(
            f"{name}-nodes",
            project=args.project,
            account_id=gcp_resource_id(name, pulumi.get_stack(), "nodes"),
            display_name=f"GKE nodes of {name} ({pulumi.get_stack()})",
            opts=child,
        )
        node_role = projects.IAMMember(
            f"{name}-nodes-role",
            project=args.project,
            role=NODE_ROLE,
            member=account.email.apply(lambda email: f"serviceAccount:{email}"),
            opts=child,
        )

        cluster = container.Cluster(
            f"{name}-cluster",
            project=args.project,
            location=args.location,
            network=network.id,
            subnetwork=subnet.id,
            networking_mode="VPC_NATIVE",
            ip_allocation_policy=container.ClusterIpAllocationPolicyArgs(
                cluster_secondary_range_name="pods",
                services_secondary_range_name="services",
            ),
            datapath_provider="ADVANCED_DATAPATH",
            # The default pool cannot be shaped as needed; GKE requires one at creation, so drop it.
            remove_default_node_pool=True,
            initial_node_count=1,
            release_channel=container.ClusterReleaseChannelArgs(channel=args.release_channel),
            workload_identity_config=container.ClusterWorkloadIdentityConfigArgs(workload_pool=self.workload_pool),
            private_cluster_config=container.ClusterPrivateClusterConfigArgs(
                enable_private_nodes=True,
                enable_private_endpoint=False,
            ),
            master_authorized_networks_config=(
                container.ClusterMasterAuthorizedNetworksConfigArgs(
                    cidr_blocks=[
                        container.ClusterMasterAuthorizedNetworksConfigCidrBlockArgs(cidr_block=cidr, display_name=f"allowed-{i}")
                        for i, cidr in enumerate(args.api_source_ranges)
                    ]
                )
                if args.api_source_ranges
                else None
            ),
            monitoring_config=container.ClusterMonitoringConfigArgs(
                enable_components=["SYSTEM_COMPONENTS"],
                managed_prometheus=container.ClusterMonitoringConfigManagedPrometheusArgs(enabled=True),
            ),
            logging_config=container.ClusterLoggingConfigArgs(enable_components=["SYSTEM_COMPONENTS", "WORKLOADS"]),
            cost_management_config=container.ClusterCostManagementConfigArgs(enabled=True),
            # The default pool GKE creates with the cluster (removed right after) runs as this account too,
            # not as the default Compute Engine one, which many projects disable.
            node_config=container.ClusterNodeConfigArgs(service_account=account.email, oauth_scopes=[CLOUD_PLATFORM_SCOPE]),
            maintenance_policy=(
                container.ClusterMaintenancePolicyArgs(
                    recurring_window=container.ClusterMaintenancePolicyRecurringWindowArgs(
                        start_time=maintenance_window(args.maintenance_window_utc)[0],
                        end_time=maintenance_window(args.maintenance_window_utc)[1],
                        recurrence=args.maintenance_recurrence,
                    )
                )
                if args.maintenance_recurrence
                else None
            ),
            resource_labels=labels,
            deletion_protection=args.deletion_protection,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[node_role],
                # nodeConfig only shapes the default pool at creation (it is removed right away); a change
                # must not replace an existing cluster.
                ignore_changes=["nodeConfig"],
            ),
        )

        def node_config(machine_type: str, **extra) -> container.NodePoolNodeConfigArgs:
            return container.NodePoolNodeConfigArgs(
                machine_type=machine_type,
                service_account=account.email,
                oauth_scopes=[CLOUD_PLATFORM_SCOPE],
                workload_metadata_config=container.NodePoolNodeConfigWorkloadMetadataConfigArgs(mode="GKE_METADATA"),
                shielded_instance_config=container.NodePoolNodeConfigShieldedInstanceConfigArgs(
                    enable_secure_boot=True, enable_integrity_monitoring=True
                ),
                resource_labels=labels,
                **extra,
            )

        management = container.NodePoolManagementArgs(auto_repair=True, auto_upgrade=True)
        system_pool = container.NodePool(
            f"{name}-system-pool",
            project=args.project,
            location=args.location,
            cluster=cluster.name,
            initial_node_count=1,
            autoscaling=container.NodePoolAutoscalingArgs(total_min_node_count=1, total_max_node_count=3, location_policy="BALANCED"),
            management=management,
            node_config=node_config(args.system_machine_type, disk_size_gb=50, disk_type="pd-balanced"),
            opts=child,
        )
        gpu_pool = container.NodePool(
            f"{name}-gpu-pool",
            project=args.project,
            location=args.location,
            cluster=cluster.name,
            node_locations=list(args.node_zones) or None,
            # Per zone, and changing it replaces the pool: one node where the pool has one zone, else
            # none and the autoscaler adds nodes for the pending vLLM pods (up to min/max in total).
            initial_node_count=1 if len(args.node_zones) == 1 or (args.zone and not args.node_zones) else 0,
            autoscaling=container.NodePoolAutoscalingArgs(
                total_min_node_count=args.min_nodes,
                total_max_node_count=args.max_nodes + args.surge_nodes,
                # ANY: take L4 capacity in whichever zone has it; GPUs are often short in one zone.
                location_policy="ANY",
            ),
            management=management,
            upgrade_settings=container.NodePoolUpgradeSettingsArgs(max_surge=1, max_unavailable=0),
            node_config=node_config(
                args.machine_type,
                disk_size_gb=args.disk_size_gb,
                disk_type="pd-balanced",
                spot=args.spot,
                guest_accelerators=[
                    container.NodePoolNodeConfigGuestAcceleratorArgs(
                        type=args.accelerator_type,
                        count=args.accelerator_count,
                        gpu_driver_installation_config=container.NodePoolNodeConfigGuestAcceleratorGpuDriverInstallationConfigArgs(
                            # LATEST: the vLLM images are built on recent CUDA and need a recent driver.
                            gpu_driver_version="LATEST"
                        ),
                    )
                ],
            ),
            opts=child,
        )

        self.cluster_name = cluster.name
        self.endpoint = cluster.endpoint
        self.node_service_account = account.email
        self.node_pools = [system_pool, gpu_pool]
        self.kubeconfig = pulumi.Output.all(cluster.name, cluster.endpoint, cluster.master_auth).apply(
            lambda values: kubeconfig(values[0], values[1], values[2]["cluster_ca_certificate"])
        )
        self.register_outputs(
            {
                "cluster_name": self.cluster_name,
                "endpoint": self.endpoint,
                "kubeconfig": self.kubeconfig,
                "node_service_account": self.node_service_account,
            }
        )


def kubeconfig(cluster_name: str, endpoint: str, ca_certificate: str) -> str:
    """A kubeconfig (JSON is YAML) that gets short-lived tokens from `gke-gcloud-auth-plugin`."""
    context = f"gke-{cluster_name}"
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": f"https://{endpoint}", "certificate-authority-data": ca_certificate}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
            "current-context": context,
            "users": [
                {
                    "name": context,
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1beta1",
                            "command": "gke-gcloud-auth-plugin",
                            "provideClusterInfo": True,
                            "interactiveMode": "Never",
                            "installHint": "Install it with `gcloud components install gke-gcloud-auth-plugin`; see docs/gcp.md.",
                        }
                    },
                }
            ],
        },
        indent=2,
    )
