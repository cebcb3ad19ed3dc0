"""Cloud TPU VMs / pod slices for lmx: create, set up every worker, run, stream logs, delete.

  python tpu/pod.py create --name lmx-v4 --zone us-central2-b --accelerator v4-32 [--spot]
  python tpu/pod.py setup  --name lmx-v4 --zone us-central2-b [--bucket BUCKET]
  python tpu/pod.py run    --name lmx-v4 --zone us-central2-b --config experiments/X.py \
                           --workdir /home/$USER/bucket/runs/x [-- --config.k=v ...]
  python tpu/pod.py logs   --name lmx-v4 --zone us-central2-b [--worker all]
  python tpu/pod.py delete --name lmx-v4 --zone us-central2-b

Every subcommand takes --dry-run: it prints the exact commands, one per line, and runs
nothing. `run` starts the same launcher on every worker (`--worker=all`) with
LMX_DISTRIBUTED=1, so `jax.distributed.initialize()` finds its peers from the TPU metadata.
The workdir must be one filesystem for all workers (orbax writes every host's shards into
one checkpoint): `setup --bucket` mounts a GCS bucket with gcsfuse at ~/bucket on each.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

LIBTPU_INDEX = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
ARCHIVE = "/tmp/lmx.tar.gz"
LOG = "~/lmx-run.log"


def _tpu(verb: str, args, *rest: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", verb, args.name, f"--zone={args.zone}",
            *([f"--project={args.project}"] if args.project else []), *rest]


def _ssh(args, command: str, worker: str = "all") -> list[str]:
    return _tpu("ssh", args, f"--worker={worker}", f"--command={command}")


def create(args) -> list[list[str]]:
    flags = [f"--accelerator-type={args.accelerator}", f"--version={args.version}"]
    flags += ["--spot"] if args.spot else []
    return [_tpu("create", args, *flags)]


def setup(args) -> list[list[str]]:
    """Ships this checkout (git archive of HEAD) to every worker and installs it."""
    install = ("mkdir -p ~/lmx && tar -xzf ~/lmx.tar.gz -C ~/lmx && cd ~/lmx && "
               "python3 -m venv .venv && .venv/bin/pip install -q -c requirements/lock.txt "
               f"-e '.[tpu]' -f {LIBTPU_INDEX}")
    commands = [["git", "archive", "--format=tar.gz", f"--output={ARCHIVE}", "HEAD"],
                ["gcloud", "compute", "tpus", "tpu-vm", "scp", ARCHIVE,
                 f"{args.name}:~/lmx.tar.gz", "--worker=all", f"--zone={args.zone}",
                 *([f"--project={args.project}"] if args.project else [])],
                _ssh(args, install)]
    if args.bucket:
        mount = (f"mkdir -p ~/bucket && (mountpoint -q ~/bucket || "
                 f"gcsfuse --implicit-dirs {shlex.quote(args.bucket)} ~/bucket)")
        commands.append(_ssh(args, mount))
    return commands


def run(args) -> list[list[str]]:
    launcher = shlex.join([".venv/bin/python", "-m", "lmx.main", f"--config={args.config}",
                           f"--workdir={args.workdir}", *args.overrides])
    command = (f"cd ~/lmx && LMX_DISTRIBUTED=1 nohup {launcher} > {LOG} 2>&1 < /dev/null &")
    return [_ssh(args, command)]


def logs(args) -> list[list[str]]:
    return [_ssh(args, f"tail -n 100 -F {LOG}", worker=args.worker)]


def delete(args) -> list[list[str]]:
    return [_tpu("delete", args, "--quiet")]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for name in ("create", "setup", "run", "logs", "delete"):
        p = sub.add_parser(name)
        p.add_argument("--name", required=True)
        p.add_argument("--zone", required=True)
        p.add_argument("--project", default="")
        p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
        if name == "create":
            p.add_argument("--accelerator", required=True, help="e.g. v4-8, v4-32, v5litepod-16")
            p.add_argument("--version", default="tpu-ubuntu2204-base")
            p.add_argument("--spot", action="store_true")
        if name == "setup":
            p.add_argument("--bucket", default="", help="GCS bucket mounted at ~/bucket")
        if name == "run":
            p.add_argument("--config", required=True)
            p.add_argument("--workdir", required=True, help="on a filesystem all workers share")
            p.add_argument("overrides", nargs="*", help="after --: --config.k=v ...")
        if name == "logs":
            p.add_argument("--worker", default="0", help="0 (the only one writing logs) or all")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    commands = {"create": create, "setup": setup, "run": run, "logs": logs,
                "delete": delete}[args.action](args)
    for command in commands:
        print(shlex.join(command), flush=True)
        if not args.dry_run:
            subprocess.run(command, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
