"""The parameter-server algorithms through tfyarn.run, against NumPy re-computations.

The jobs of tests/exchange_hook_cases.py (NumPy-backed variables, so no TensorFlow) run
as a real job on the local Spark cluster: two workers and a ps, each a role process on
its own executor, wired by the launcher's mesh, the ps serving its shard over the
transport (the default, auto: UCX over shared memory on one host). Each rank writes what
it saw to a file (RunResult carries rank 0's value only); the check is the one the
in-process unit test uses, which would fail if no exchange happened: sync_ps applies
the mean gradient once (single-process SGD on the combined batch), downpour applies each
gradient on arrival (the first to arrive sees only its own), EASGD's elastic moves and
ADAG's normalised commits follow the papers' rules.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
from exchange_hook_cases import CASES, TIMEOUT, Case, Model

import tfyarn

pytestmark = pytest.mark.integration

PS_CASES = {name: case for name, case in CASES.items() if case.ps}


def _job(case: Case, out: Path) -> Any:
    def train(ctx: tfyarn.NodeContext) -> None:
        strategy = ctx.strategy()
        result = case.job(strategy, Model(strategy.rank))
        (out / f"{ctx.task_id}.pkl").write_bytes(pickle.dumps(result))

    return train


@pytest.mark.parametrize("case", PS_CASES.values(), ids=list(PS_CASES))
def test_ps_algorithm_through_tfyarn_run_matches_numpy(
    spark: Any, tmp_path: Path, case: Case
) -> None:
    result = tfyarn.run(
        spark, _job(case, tmp_path), workers=2, ps=case.ps, chief=False,
        strategy=case.strategy, strategy_options={**TIMEOUT, **case.options}, progress=False,
    )  # fmt: skip
    assert result.value is None
    assert set(result.roles) == {"worker:0", "worker:1", "ps:0"}
    # The default transport, auto, on one host: UCX over shared memory (tests/multihost
    # runs it across hosts, where it takes tcp).
    assert result.transport == "ucx/shm", result.transport
    results = {task: pickle.loads((tmp_path / f"{task}.pkl").read_bytes())
               for task in ("worker:0", "worker:1")}  # fmt: skip
    case.check(results)
