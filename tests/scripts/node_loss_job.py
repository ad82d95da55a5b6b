"""Run the nightly job (tools-only) on a three-node ``ray.cluster_utils.Cluster`` (a head without CPU actors, two
CPU workers) and remove the worker that runs the tool actor once the job has written its first block. Prints, as
JSON, what was removed and how many nodes were left. A separate process: the test session has its own Ray.

    python tests/scripts/node_loss_job.py BUNDLE_URI REQUESTS_URI OUTPUT_URI RUN_DATE
"""
import json
import sys
import threading
import time


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    from jobs.nightly_score import NightlyJob, run
    from reasonrec import storage
    from reasonrec.batch.config import ScoreConfig

    bundle, requests, output, run_date = sys.argv[1:5]
    start, marks = time.time(), {}
    # The GCS declares a silent node dead after failure_threshold missed health checks (default 5 x 3 s): 2 x 1 s
    # here, so that the test waits for the recovery, not for the detection.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": {
        "health_check_period_ms": 1000, "health_check_failure_threshold": 2}})
    workers = [cluster.add_node(num_cpus=2, resources={"cpu_worker": 100}) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    marks["cluster_up"] = time.time() - start
    removed = []

    def remove_the_tool_node():
        while not any("/ledger/" in f for f in storage.list_files(output)):
            time.sleep(0.1)
        for actor in list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=1000):
            node = next((w for w in workers if w.node_id == actor.node_id), None)
            if "ToolActor" in actor.class_name and node is not None:
                cluster.remove_node(node, allow_graceful=False)
                marks["removed"] = time.time() - start
                removed.append(node.node_id)
                return

    killer = threading.Thread(target=remove_the_tool_node, daemon=True)
    killer.start()
    try:
        config = ScoreConfig(mode="tools-only", batch_size=16, horizon_batch_size=16, tool_actors=1,
                             cpu_actor_resources={"cpu_worker": 1})
        manifest = run(NightlyJob(requests, bundle, output, run_date, force=True, score=config))
        marks["job_done"] = time.time() - start
        killer.join(timeout=5)
        alive = sum(n["Alive"] for n in ray.nodes())
        print(json.dumps({"removed": removed, "alive_nodes_after": alive, "rows_out": manifest["rows_out"],
                          "seconds": {k: round(v, 1) for k, v in marks.items()}}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
