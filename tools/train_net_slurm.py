#!/usr/bin/env python
"""
Submit train_net.py to a Slurm cluster with submitit: one task per node, each starting
``--gpus-per-node`` processes through detectron2's ``launch``; node 0's hostname gives the
rendezvous URL. A preempted or timed-out job is requeued and resumes from its last checkpoint.
The job parses its arguments with train_net.py's parser and runs train_net.py's main.

    python tools/train_net_slurm.py --nodes 2 --gpus-per-node 8 --partition learnfair \
        --job-dir /checkpoint/$USER/maskformer/%j --config-file CONFIG [OPTS ...]
    python tools/train_net_slurm.py ... --dry-run      # print the job, submit nothing
"""
import copy
import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # train_net.py and maskformer/ in a clone that is not installed
    sys.path.insert(0, str(REPO_ROOT))

import submitit  # noqa: E402

import train_net  # noqa: E402
from maskformer.engine.cli import exit_on_user_error  # noqa: E402
from maskformer.engine.cluster_launch import rendezvous_port  # noqa: E402
from maskformer.engine.config_loading import check_process_count, load_config  # noqa: E402
from maskformer.tools.arguments import at_least  # noqa: E402


def parse_args(argv=None):
    """train_net.py's arguments plus the Slurm job's."""
    parser = train_net.argument_parser()
    slurm = parser.add_argument_group("Slurm")
    slurm.add_argument("--nodes", type=at_least(1), default=1, help="machines of the job")
    slurm.add_argument(
        "--gpus-per-node", type=at_least(1), default=8, help="processes (GPUs) per machine"
    )
    slurm.add_argument("--partition", default=None, help="Slurm partition")
    slurm.add_argument(
        "--timeout", type=at_least(1), default=72 * 60, help="job time limit, minutes"
    )
    slurm.add_argument(
        "--job-dir", default="output/slurm/%j", help="submitit logs and pickles (%%j: job id)"
    )
    slurm.add_argument(
        "--cpus-per-gpu", type=at_least(1), default=10, help="CPU cores per GPU (data loading)"
    )
    slurm.add_argument("--mem-gb", type=at_least(1), default=None, help="memory per node, GB")
    slurm.add_argument("--constraint", default=None, help="Slurm --constraint (e.g. volta32gb)")
    slurm.add_argument("--comment", default=None, help="Slurm --comment")
    slurm.add_argument("--job-name", default="maskformer")
    slurm.add_argument("--dry-run", action="store_true", help="print the job specification only")
    return parser.parse_args(argv)


def job_spec(args) -> dict:
    """submitit AutoExecutor parameters of the job: one task per node, the node's GPUs and cores."""
    return {
        "name": args.job_name,
        "nodes": args.nodes,
        "tasks_per_node": 1,
        "gpus_per_node": args.gpus_per_node,
        "cpus_per_task": args.cpus_per_gpu * args.gpus_per_node,
        "timeout_min": args.timeout,
        "mem_gb": args.mem_gb,
        "slurm_partition": args.partition,
        "slurm_constraint": args.constraint,
        "slurm_comment": args.comment,
        # time to write a checkpoint between the preemption/timeout signal and the kill
        "slurm_signal_delay_s": 120,
    }


class TrainJob(submitit.helpers.Checkpointable):
    """What each node runs: train_net's main through detectron2's launch, with this node's rank."""

    def __init__(self, args):
        self.args = args

    def node_args(self, env):
        """train_net arguments on the node described by ``env`` (a submitit JobEnvironment)."""
        args = copy.deepcopy(self.args)
        args.num_gpus = args.gpus_per_node
        args.num_machines = env.num_nodes
        args.machine_rank = env.node
        args.dist_url = f"tcp://{env.hostnames[0]}:{rendezvous_port(env.job_id)}"
        return args

    def __call__(self):
        train_net.launch_main(self.node_args(submitit.JobEnvironment()))

    def checkpoint(self, *args, **kwargs):
        # requeued after preemption or timeout: continue from OUTPUT_DIR/last_checkpoint
        resumed = copy.deepcopy(self.args)
        resumed.resume = True
        return submitit.helpers.DelayedSubmission(type(self)(resumed))


def main(argv=None):
    args = parse_args(argv)
    with exit_on_user_error(args.debug):
        # a mistake in the config is reported here, not in the job's log after it waited in queue
        cfg = load_config(args.config_file, args.opts, allow_unsafe=args.allow_unsafe_config)
        check_process_count(
            cfg,
            args.nodes * args.gpus_per_node,
            args.gpus_per_node,
            f"--nodes {args.nodes} x --gpus-per-node {args.gpus_per_node}",
            training=not args.eval_only,
            on_this_machine=False,
        )
    spec = job_spec(args)
    if args.dry_run:
        print(
            json.dumps(
                {"job": spec, "job_dir": args.job_dir, "train_net_args": vars(args)}, indent=1
            )
        )
        return None
    executor = submitit.AutoExecutor(folder=args.job_dir, slurm_max_num_timeout=30)
    executor.update_parameters(**spec)
    job = executor.submit(TrainJob(args))
    print(
        f"Submitted job {job.job_id}; logs in {os.path.abspath(str(args.job_dir).replace('%j', str(job.job_id)))}"
    )
    return job


if __name__ == "__main__":
    main()
