"""InputMode.FILES on hdfs:// Parquet files: what each trainer read (a module, not a script).

``train_fn(out)``: each trainer writes ``OUT/<task>.json`` with its files, its row count
and the sum of column ``x``. Run in the session's yarn-client application
(``restart_app.py``), two trainers sharing the files round robin.
"""

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle

# Imported from a path the executors do not have: ship the function by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def train_fn(out: str) -> Callable[[Any], dict[str, Any]]:
    def train(ctx: Any) -> dict[str, Any]:
        x = ctx.columns()["x"]
        seen = {"files": ctx.files, "rows": len(x), "total": float(x.sum())}
        (Path(out) / f"{ctx.task_id.replace(':', '-')}.json").write_text(json.dumps(seen))
        return seen

    return train
