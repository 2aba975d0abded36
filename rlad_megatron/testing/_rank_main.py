"""One rank of ``run_distributed``: load the body's module from its file, set up, run, write the result."""
from __future__ import annotations

import importlib.util
import os
import pickle
import sys
import traceback
from pathlib import Path


def _load_function(spec: dict):
    for entry in reversed(spec["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    name = spec["module_name"]
    module_spec = importlib.util.spec_from_file_location(name, spec["module_file"])
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # so that pickled results referring to the module resolve
    module_spec.loader.exec_module(module)
    return getattr(module, spec["function"])


def main(workdir: Path) -> int:
    rank = int(os.environ["RANK"])
    spec = pickle.loads((workdir / "spec.pkl").read_bytes())
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        from rlad_megatron import parallel

        parallel.init_distributed(timeout_s=120)
        if spec["init_megatron"]:
            parallel.initialize_model_parallel(
                spec["tp"], spec["pp"], virtual_pipeline_parallel=spec["vpp"], seed=spec["seed"],
                expert_parallel=spec.get("ep", 1),
            )
        fn = _load_function(spec)
        result = fn(*spec["args"], **spec["kwargs"])
        (workdir / f"result{rank}.pkl.tmp").write_bytes(pickle.dumps(result))
        os.replace(workdir / f"result{rank}.pkl.tmp", workdir / f"result{rank}.pkl")
    except BaseException:
        (workdir / f"error{rank}.txt").write_text(traceback.format_exc())
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    try:
        import torch.distributed as dist

        dist.barrier()
    except Exception:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: gloo handles and vLLM exit hooks can abort a clean run at exit (see notes).
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
