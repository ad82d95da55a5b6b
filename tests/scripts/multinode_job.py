"""Run the nightly job on a three-node ``ray.cluster_utils.Cluster`` (a head, a CPU worker, a worker advertising one
GPU) and print, as JSON, where each kind of actor ran. A separate process: the test session has its own Ray.

    python tests/scripts/multinode_job.py BUNDLE_URI REQUESTS_URI OUTPUT_URI
"""
import json
import sys
from collections import defaultdict


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    from jobs.nightly_score import NightlyJob, run
    from reasonrec.batch.config import ScoreConfig
    from reasonrec.vlm.deliberator import DeliberatorConfig

    bundle, requests, output = sys.argv[1:4]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cpu_node = cluster.add_node(num_cpus=2, resources={"cpu_worker": 100})
    gpu_node = cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        config = ScoreConfig(batch_size=64, shortlist=8, mode="planner", cpu_actor_resources={"cpu_worker": 1},
                             deliberator=DeliberatorConfig(backend="transformers", batch_size=16))
        manifest = run(NightlyJob(requests, bundle, output, "2026-11-28", force=True, score=config))
        placed = defaultdict(set)
        for actor in list_actors(detail=True, limit=10_000):
            for kind in ("HorizonActor", "ToolActor", "VLMActor", "PlannerActor"):
                if kind in actor.class_name:
                    placed[kind].add(actor.node_id)
        print(json.dumps({
            "nodes": {"head": cluster.head_node.node_id, "cpu": cpu_node.node_id, "gpu": gpu_node.node_id},
            "placed": {k: sorted(v) for k, v in placed.items()},
            "rows_out": manifest["rows_out"], "vlm_calls": manifest["vlm_calls_total"],
        }))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
