"""A ferry.v1 client as another team would write it: Python stubs that
protoc generated from proto/, mutual TLS with an operator certificate.
Prints one JSON object with what it saw; python_client_test.go checks it.

usage: python_client.py STUBS ADDR CA CERT KEY HOST
"""
import json
import sys
import uuid

stubs, addr, ca, cert, key, host = sys.argv[1:7]
sys.path.insert(0, stubs)

import grpc  # noqa: E402
from ferry.v1 import migration_job_pb2, migration_job_pb2_grpc  # noqa: E402
from ferry.v1 import migration_server_pb2, migration_server_pb2_grpc  # noqa: E402
from ferry.v1 import target_inventory_pb2, target_inventory_pb2_grpc  # noqa: E402


def read(path):
    with open(path, "rb") as f:
        return f.read()


creds = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
out = {}
with grpc.secure_channel(addr, creds) as ch:
    inv = target_inventory_pb2_grpc.TargetInventoryServiceStub(ch)
    cluster = inv.CreateCluster(target_inventory_pb2.CreateClusterRequest(
        cluster=target_inventory_pb2.Cluster(display_name="from python", zone="py"),
        request_id=str(uuid.uuid4())), timeout=20)
    out["cluster_type"] = type(cluster).__name__
    out["cluster_name"] = cluster.name
    out["cluster_display_name"] = cluster.display_name
    got = inv.GetCluster(target_inventory_pb2.GetClusterRequest(name=cluster.name), timeout=20)
    out["get_cluster_zone"] = got.zone
    try:
        inv.GetCluster(target_inventory_pb2.GetClusterRequest(name="clusters/absent"), timeout=20)
        out["absent"] = "no error"
    except grpc.RpcError as e:
        out["absent"] = "%s: %s" % (e.code().name, e.details())

    servers = migration_server_pb2_grpc.MigrationServerServiceStub(ch)
    srv = servers.CreateMigrationServer(migration_server_pb2.CreateMigrationServerRequest(
        migration_server=migration_server_pb2.MigrationServer(
            host=host, type="PLATFORM_KVM", cache_path="/var/lib/ferry/cache",
            downstream_bandwidth="500Mbps"),
        request_id=str(uuid.uuid4())), timeout=20)
    out["server_type"] = type(srv).__name__
    out["server_name"] = srv.name
    out["server_host"] = srv.host
    out["server_downstream_bits_per_second"] = srv.downstream_bits_per_second
    out["server_enabled"] = srv.enabled

    jobs = migration_job_pb2_grpc.MigrationJobServiceStub(ch)
    page = jobs.ListMigrationJobs(migration_job_pb2.ListMigrationJobsRequest(page_size=10), timeout=20)
    out["jobs"] = len(page.jobs)
    out["jobs_next_page_token"] = page.next_page_token

    deleted = inv.DeleteCluster(target_inventory_pb2.DeleteClusterRequest(name=cluster.name), timeout=20)
    out["delete_type"] = type(deleted).DESCRIPTOR.full_name

print(json.dumps(out, sort_keys=True))
