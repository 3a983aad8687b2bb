"""Every algorithm's hooks in-process, against the same computation in NumPy.

The ranks are threads of this process talking through real tcp listeners
(``run_local(..., threads=True)``). The jobs and their NumPy references are in
tests/exchange_hook_cases.py; tests/integration/test_exchange_references.py runs the
parameter-server ones through tfyarn.run on the local Spark cluster.
"""

from __future__ import annotations

import pytest
from exchange_hook_cases import CASES, TIMEOUT, Case, Model

from tfyarn.exchange.local import LocalContext, run_local


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_hooks_do_what_numpy_says(case: Case) -> None:
    def fn(ctx: LocalContext) -> object:
        strategy = ctx.strategy()
        return case.job(strategy, Model(strategy.rank))

    results = run_local(
        fn, threads=True, workers=2, ps=case.ps, strategy=case.strategy,
        strategy_options={**TIMEOUT, **case.options},
    )  # fmt: skip
    case.check(results)
