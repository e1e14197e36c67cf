"""Several training processes through `accelerate launch`, keeping the DVC stage command one line.

`dvc repro` runs `python -m stages.train ...` as one process. With train.devices > 1 (or 0 and
several GPUs) that process only starts the same command again under accelerate's launcher, one
process per device, and waits; the launched processes see accelerate's / torchrun's environment
(LOCAL_RANK, WORLD_SIZE, ...) and train. A command already started by `accelerate launch` (by hand,
e.g. one launcher per machine for several machines, docs/multi-gpu.md) trains at once: its
launcher decides the processes, and train.devices is not read.

accelerate launches several processes through torchrun (its `--multi_gpu` mode); on a machine
without GPUs the same launch gives CPU processes joined over gloo (accelerate's MULTI_CPU), which
is how tests run the multi-process path.
"""

from __future__ import annotations

import os

from accelerate.commands.launch import launch_command, launch_command_parser
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError


def launched() -> bool:
    """This process was started by a distributed launcher (accelerate launch, torchrun)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_args(module: str, argv: list[str], processes: int, mixed_precision: str) -> list[str]:
    """`accelerate launch` arguments to run `python -m module argv` in `processes` processes on this
    machine, on a free port (`--main_process_port 0`: runs side by side do not collide). The
    processes' interpreter is $PREFBENCH_PYTHON where set, as for the stage itself
    (scripts/python.sh), else accelerate's own (this one)."""
    program = ["--no_python", os.environ["PREFBENCH_PYTHON"], "-m"] if os.environ.get("PREFBENCH_PYTHON") else ["-m"]
    return ["--multi_gpu", "--num_machines", "1", "--num_processes", str(processes), "--main_process_port", "0",
            "--mixed_precision", mixed_precision, "--dynamo_backend", "no", *program, module, *argv]


def relaunch(module: str, argv: list[str], processes: int, mixed_precision: str, what: str) -> int:
    """Run `module` again under accelerate's launcher (in this process, as `accelerate launch` would
    run it: one interpreter start less), wait, and return the exit status: 1 when a process failed
    (it printed why; the launcher stops the others)."""
    args = launch_args(module, argv, processes, mixed_precision)
    print(f"{what}: {processes} processes through accelerate launch {' '.join(args)}", flush=True)
    try:
        launch_command(launch_command_parser().parse_args(args))
    except ChildFailedError:
        return 1
    return 0
