"""An agency's side of horizontal FedAvg: local logistic-regression training, and its Flower ClientApp.

:func:`train_locally` is the pure step: from the global weights it takes ``local_epochs``
full-batch gradient steps on the node's own table, standardised with the public constants of
:data:`pplink.scoring.horizontal.STANDARDISATION` (the same at every node, never estimated from data),
and returns the new weights. The node sends its *model*, not its data; the coordinator clips the
update (new minus global) to the clipping norm, averages and adds Gaussian noise.

The ClientApp (:data:`app`) is a thin adapter: it reads the table named by the SuperNode's
``--node-config data-path="…"``, trains, and replies with an ``ArrayRecord`` (key ``weights``)
and a ``MetricRecord`` holding only ``weight = 1``: every agency counts equally (Flower's
accounted DP path requires equal weights, and the privacy analysis assumes the plain mean). No
training loss or row count goes back: those would be releases the DP noise does not cover.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from pplink.errors import ConfigError
from pplink.scoring.evaluation import sigmoid
from pplink.scoring.horizontal import FEATURES, WEIGHT_METRIC, WEIGHTS_KEY, AreaTable, read_area_csv, standardise

__all__ = ["app", "train_locally"]

app = ClientApp()


def train_locally(weights: np.ndarray, table: AreaTable, *, local_epochs: int, learning_rate: float,
                  l2_penalty: float = 0.0) -> np.ndarray:
    """Full-batch gradient descent on the mean logistic loss, from ``weights`` (intercept last).

    Args:
        weights: the global model this round starts from.
        table: the node's raw features and 0/1 labels.
        local_epochs: gradient steps.
        learning_rate: step size.
        l2_penalty: ridge penalty on the feature weights (not the intercept).

    Returns:
        The locally trained weights (a new array).
    """
    w = np.array(weights, dtype=np.float64, copy=True)
    if w.shape != (len(FEATURES) + 1,):
        raise ValueError(f"the global model has {w.shape} weights; {len(FEATURES) + 1} expected")
    x = np.column_stack([standardise(table.features), np.ones(len(table.labels))])
    y = table.labels.astype(np.float64)
    penalty = np.r_[np.full(len(FEATURES), l2_penalty), 0.0]
    for _ in range(local_epochs):
        gradient = x.T @ (sigmoid(x @ w) - y) / len(y) + penalty * w
        w -= learning_rate * gradient
    return w


@app.train()
def _train(message: Message, context: Context) -> Message:
    """Train on the local table and reply with the new weights (and weight 1)."""
    data_path = context.node_config.get("data-path")
    if not isinstance(data_path, str) or not data_path:
        raise ConfigError("horizontal node: --node-config must set data-path to the node's CSV")
    table = read_area_csv(Path(data_path))
    config = message.content["config"]
    global_weights = message.content["arrays"].to_numpy_ndarrays()[0]
    trained = train_locally(
        global_weights, table, local_epochs=int(config["local-epochs"]),  # type: ignore[arg-type]
        learning_rate=float(config["learning-rate"]), l2_penalty=float(config["l2-penalty"]),  # type: ignore[arg-type]
    )
    content = RecordDict({"arrays": ArrayRecord({WEIGHTS_KEY: Array(trained)}),
                          "metrics": MetricRecord({WEIGHT_METRIC: 1})})
    return Message(content=content, reply_to=message)
