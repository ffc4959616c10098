"""The coordinator's strategy on constructed replies: what history.json and the checkpoints hold.

No Flower runtime, no network and no data: hospitals' replies are built as ``Message``s the way
fedaaa.client.app builds them, and fed to the strategy's hooks (or to Flower's own ``start`` loop
through a stand-in Grid).
"""

from __future__ import annotations

import json
import logging
import math
import random
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

from fedaaa.common.config import ROUND_KEYS, RunSettings
from fedaaa.common.errors import ConfigError
from fedaaa.common.metrics import evaluation_stats, summarize
from fedaaa.common.model_file import read_model_file
from fedaaa.common.settings import TrainSettings
from fedaaa.server import app as server

ROOT = Path(__file__).resolve().parents[1]
NODES = (11, 12, 13)  # hospitals A, B, C


@pytest.fixture(autouse=True)
def _task_identity():
    """Messages are built outside a Flower runtime here; give them the identity a runtime would."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


# ---- what the hospitals send --------------------------------------------------------------------------


def _state(node: int, server_round: int) -> dict[str, torch.Tensor]:
    """A hospital's (toy) weights after a round: no network is needed on the server side."""
    return {
        "features.w": torch.full((2, 3), float(node + 10 * server_round)),
        "head.b": torch.tensor([float(node - server_round)]),
    }


def _train_metrics(node: int, server_round: int) -> dict:
    return {"train-loss": 0.1 * node + server_round, "num-examples": node - 5, "skipped-studies": node % 2}


def _val_data(node: int, server_round: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(1000 * server_round + node)
    n = 6 + node % 3
    aaa = (np.arange(n) % 2).astype(float)
    d_true = np.where(aaa > 0, 45.0, 20.0) + rng.normal(0, 2, n)
    measured = d_true + rng.normal(0, 3, n)
    d_true[0] = np.nan  # one study without a reference diameter
    measured[1] = np.nan  # one aorta not measurable
    return measured, aaa, d_true


def _dice(node: int, server_round: int) -> list[tuple[int, int, int]]:
    return [(5 + node % 3, 10, 12 + server_round)]  # one labelled study: Dice overlap counts


def _val_stats(node: int, server_round: int) -> dict:
    return dict(evaluation_stats(*_val_data(node, server_round), _dice(node, server_round))) | {"skipped-studies": 1}


def _instruction(node: int, stage: str) -> Message:
    return Message(content=RecordDict({}), dst_node_id=node, message_type=stage)


def _reply(node: int, stage: str, server_round: int, *, name: str = "metrics") -> Message:
    """Built as fedaaa.client.app._reply builds it: the statistics under ``name``, weights under "arrays"."""
    if stage == "train":
        content = RecordDict({name: MetricRecord(_train_metrics(node, server_round))})
        content["arrays"] = ArrayRecord(_state(node, server_round))
    else:
        content = RecordDict({name: MetricRecord(_val_stats(node, server_round))})
    return Message(content=content, reply_to=_instruction(node, stage))


def _error(node: int, stage: str) -> Message:
    return Message(Error(code=0, reason="no usable studies at this site"), reply_to=_instruction(node, stage))


def _replies(stage: str, server_round: int) -> list[Message]:
    """Round 1: all three hospitals answer. Round 2: hospital C fails in training (an error reply) and
    sends its validation statistics under a record name other than "metrics" (ignored)."""
    if server_round == 1:
        return [_reply(n, stage, 1) for n in NODES]
    a, b, c = NODES
    last = _error(c, stage) if stage == "train" else _reply(c, stage, 2, name="val-metrics")
    return [_reply(a, stage, 2), _reply(b, stage, 2), last]


# ---- what the coordinator should record ----------------------------------------------------------------


def _answering(server_round: int) -> tuple[int, ...]:
    return NODES if server_round == 1 else NODES[:2]


def _mean_state(server_round: int) -> dict[str, torch.Tensor]:
    nodes = _answering(server_round)
    w = np.array([_train_metrics(n, server_round)["num-examples"] for n in nodes], dtype=float)
    return {
        k: torch.as_tensor(
            sum(wi / w.sum() * _state(n, server_round)[k].numpy() for wi, n in zip(w, nodes)), dtype=torch.float32
        )
        for k in _state(0, 0)
    }


def _expected(server_round: int) -> dict:
    nodes = _answering(server_round)
    train = [_train_metrics(n, server_round) for n in nodes]
    examples = sum(m["num-examples"] for m in train)
    pooled = [np.concatenate(parts) for parts in zip(*(_val_data(n, server_round) for n in nodes))]
    dice = [c for n in nodes for c in _dice(n, server_round)]
    val = summarize(evaluation_stats(*pooled, dice))  # as if one hospital held every validation study
    return {
        "round": server_round,
        "train_loss": sum(m["train-loss"] * m["num-examples"] for m in train) / examples,
        "train_examples": examples,
        "train_sites": len(nodes),
        "label_free_sites": 0,
        "dp_refused_sites": 0,
        "rejected_updates": 0,
        "sites": [{"site": NODES.index(n), "examples": m["num-examples"]} for n, m in zip(nodes, train)],
        "skipped_studies": sum(m["skipped-studies"] for m in train),
        **{f"val_{k}": v for k, v in val.items()},
        "val_sites": len(nodes),
    }


INITIAL = {"features.w": torch.zeros(2, 3), "head.b": torch.zeros(1)}


def _recorder(tmp_path: Path, **settings) -> server.FederationRecorder:
    run = RunSettings(num_server_rounds=2, min_nodes=2, sites="/secret/a,/secret/b", output_dir=str(tmp_path))
    return server.FederationRecorder(tmp_path, run.with_overrides(**settings))


# Events of a 2-round run: ("end", k) is Flower's evaluate_fn for round k.
FLOWER_ORDER = [("end", 0)] + [(e, k) for k in (1, 2) for e in ("train", "evaluate", "end")]
ORDERS = {
    "flower": FLOWER_ORDER,
    "evaluate_fn before aggregate_evaluate": [("end", 0)]
    + [(e, k) for k in (1, 2) for e in ("train", "end", "evaluate")],
    "evaluate before train, end first": [("end", 0)] + [(e, k) for k in (1, 2) for e in ("end", "evaluate", "train")],
    "rounds interleaved": [("end", 0), ("train", 1), ("train", 2), ("evaluate", 2), ("end", 1)]
    + [("evaluate", 1), ("end", 2)],
    "shuffled": random.Random(7).sample(FLOWER_ORDER, len(FLOWER_ORDER)),
}


def _drive(strategy: server.RecordingStrategy, order: list[tuple[str, int]]) -> None:
    for event, k in order:
        if event == "train":
            arrays, _ = strategy.aggregate_train(k, iter(_replies("train", k)))  # an iterable, as Flower passes it
            for name, tensor in arrays.to_torch_state_dict().items():
                torch.testing.assert_close(tensor, _mean_state(k)[name])
        elif event == "evaluate":
            strategy.aggregate_evaluate(k, iter(_replies("evaluate", k)))
        else:
            strategy.recorder.end_of_round(k, ArrayRecord(INITIAL if k == 0 else _mean_state(k)))


def _rounds_without_time(history_file: Path) -> list[dict]:
    doc = json.loads(history_file.read_text())
    for entry in doc["rounds"]:
        assert isinstance(entry.pop("elapsed_s"), float)
    return doc["rounds"]


def _assert_entry(entry: dict, expected: dict) -> None:
    assert set(entry) == set(expected)
    for key, value in expected.items():
        if key == "sites":  # per hospital by opaque index (the order of its first reply): same studies per site
            assert sorted(e["examples"] for e in entry[key]) == sorted(e["examples"] for e in value)
            assert sorted(e["site"] for e in entry[key]) == list(range(len(value))) or len(value) < len(NODES)
            continue
        if isinstance(value, float) and math.isnan(value):  # undefined (Dice without labels): null in JSON
            assert entry[key] is None or math.isnan(entry[key]), key
            continue
        assert entry[key] == pytest.approx(value, rel=1e-9), key


@pytest.mark.parametrize("order", list(ORDERS), ids=list(ORDERS))
def test_history_and_checkpoints_hold_each_rounds_own_figures_whatever_the_hook_order(tmp_path, order, caplog):
    recorder = _recorder(tmp_path)
    strategy = server.make_strategy(recorder.settings, recorder)
    logging.getLogger("flwr.fedaaa.server").addHandler(caplog.handler)
    try:
        _drive(strategy, ORDERS[order])
    finally:
        logging.getLogger("flwr.fedaaa.server").removeHandler(caplog.handler)

    doc = json.loads((tmp_path / "history.json").read_text())
    assert not {"sites", "output-dir", "cache-dir"} & set(doc["settings"])  # local paths stay local
    assert "/secret" not in (tmp_path / "history.json").read_text()
    rounds = _rounds_without_time(tmp_path / "history.json")
    assert [e["round"] for e in rounds] == [0, 1, 2]
    assert rounds[0] == {"round": 0}
    _assert_entry(rounds[1], _expected(1))
    _assert_entry(rounds[2], _expected(2))  # hospital C neither trained nor validated in round 2
    assert rounds[1]["train_sites"] == rounds[1]["val_sites"] == 3
    assert rounds[2]["train_sites"] == rounds[2]["val_sites"] == 2
    assert 0.5 < rounds[1]["val_auroc"] <= 1.0 and rounds[1]["val_n"] == sum(6 + n % 3 for n in NODES)
    assert any("has no 'metrics' record; ignored" in r.getMessage() for r in caplog.records)

    for k in (0, 1, 2):
        state, meta = read_model_file(tmp_path / "checkpoints" / f"round-{k:03d}.safetensors")
        assert meta.round == k
        expected_state = INITIAL if k == 0 else _mean_state(k)
        assert set(state) == set(expected_state)
        for name, tensor in state.items():
            torch.testing.assert_close(tensor, expected_state[name])
        summary = {key: v for key, v in rounds[k].items() if key != "sites"}  # per-site entries: history only
        assert meta.summary == pytest.approx(summary)  # the round's own entry
    assert recorder.trained_rounds == 2


def test_same_history_in_every_order(tmp_path):
    docs = []
    for i, order in enumerate(ORDERS.values()):
        recorder = _recorder(tmp_path / str(i))
        _drive(server.make_strategy(recorder.settings, recorder), order)
        docs.append(_rounds_without_time(tmp_path / str(i) / "history.json"))
    assert all(d == docs[0] for d in docs[1:])


class _Grid(Grid):
    """Stands in for Flower's Grid: every node answers at once through ``answer``."""

    def __init__(self, answer: Callable[[Message], Message | None]) -> None:
        self.answer = answer
        self.sent: list[Message] = []

    def set_run(self, run) -> None:  # pragma: no cover - not used by the strategy
        pass

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(NODES)

    def push_messages(self, messages):  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        self.sent += messages
        return [r for r in map(self.answer, messages) if r is not None]


def _hospitals(msg: Message) -> Message | None:
    """Hospitals as in _replies, answering the messages Flower's own start() loop sends them."""
    node, stage = msg.metadata.dst_node_id, msg.metadata.message_type
    server_round = int(msg.content["config"]["server-round"])
    if server_round == 2 and node == NODES[2]:
        return None if stage == "train" else _reply(node, stage, 2, name="val-metrics")  # C's reply lost
    return _reply(node, stage, server_round)


def _train_configs(grid: _Grid) -> list[ConfigRecord]:
    return [m.content["config"] for m in grid.sent if m.metadata.message_type == "train"]


@pytest.mark.parametrize("mu", [0.0, 0.05])
def test_flower_start_loop_writes_the_same_history_and_final_model(tmp_path, mu):
    recorder = _recorder(tmp_path, proximal_mu=mu, final_lr_factor=0.1)
    strategy = server.make_strategy(recorder.settings, recorder)
    assert type(strategy) is (server.RecordingFedProx if mu else server.RecordingStrategy)
    assert isinstance(strategy, FedProx if mu else FedAvg)
    grid = _Grid(_hospitals)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(INITIAL),
        num_rounds=2,
        train_config=ConfigRecord(recorder.settings.round_config()),
        evaluate_fn=recorder.end_of_round,
    )
    rounds = _rounds_without_time(tmp_path / "history.json")
    _assert_entry(rounds[1], _expected(1))
    _assert_entry(rounds[2], _expected(2))
    train_config = next(m for m in grid.sent if m.metadata.message_type == "train").content["config"]
    assert set(ROUND_KEYS) <= set(train_config) and train_config["proximal-mu"] == mu
    rates = {int(c["server-round"]): c["learning-rate"] for c in _train_configs(grid)}
    assert rates == pytest.approx({1: 2e-3, 2: 2e-4})  # the schedule's first and last rounds' rates

    path = recorder.finish(result.arrays, 2)
    state, meta = read_model_file(path)
    assert meta.round == 2 and meta.summary["val_sites"] == 2
    for name, tensor in state.items():
        torch.testing.assert_close(tensor, _mean_state(2)[name])


def test_undefined_metrics_are_null_in_history(tmp_path):
    """One class only in validation: AUROC is undefined; history.json says null (it is strict JSON)."""
    recorder = _recorder(tmp_path)
    strategy = server.make_strategy(recorder.settings, recorder)
    stats = dict(evaluation_stats(np.array([20.0, 22.0]), np.zeros(2), np.array([21.0, 21.0])))
    replies = [
        Message(RecordDict({"metrics": MetricRecord(stats)}), reply_to=_instruction(n, "evaluate")) for n in NODES
    ]
    recorder.end_of_round(0, ArrayRecord(INITIAL))
    strategy.aggregate_train(1, _replies("train", 1))
    metrics = strategy.aggregate_evaluate(1, replies)
    assert "val_auroc" not in metrics and "val_specificity" in metrics  # Flower's summary keeps finite values
    recorder.end_of_round(1, ArrayRecord(_mean_state(1)))
    text = (tmp_path / "history.json").read_text()
    assert "NaN" not in text
    entry = json.loads(text)["rounds"][1]
    assert entry["val_auroc"] is None and entry["val_sensitivity"] is None and entry["val_n"] == 6
    _, meta = read_model_file(tmp_path / "checkpoints" / "round-001.safetensors")
    assert math.isnan(meta.summary["val_auroc"])


def test_no_update_in_any_round_is_an_error(tmp_path):
    recorder = _recorder(tmp_path)
    strategy = server.make_strategy(recorder.settings, recorder)
    recorder.end_of_round(0, ArrayRecord(INITIAL))
    arrays, metrics = strategy.aggregate_train(1, [_error(n, "train") for n in NODES])
    assert arrays is None and metrics is None
    recorder.end_of_round(1, ArrayRecord(INITIAL))
    assert _rounds_without_time(tmp_path / "history.json")[1] == {"round": 1, "train_sites": 0}  # nobody answered
    with pytest.raises(RuntimeError, match="no hospital returned a model update"):
        recorder.finish(ArrayRecord(INITIAL), 1)


def test_round_keys_and_run_defaults_come_from_train_settings():
    per_round = [f for f in TrainSettings.__dataclass_fields__ if f != "seed"]
    assert ROUND_KEYS == tuple(f.replace("_", "-") for f in per_round)
    assert server.ROUND_KEYS is ROUND_KEYS
    defaults, run = TrainSettings(), RunSettings()
    assert all(getattr(run, f) == getattr(defaults, f) for f in TrainSettings.__dataclass_fields__)
    assert RunSettings(seed=5, batch_size=2).train_settings(3) == TrainSettings(seed=8, batch_size=2)
    assert set(run.round_config()) == set(ROUND_KEYS)


def test_the_learning_rate_falls_along_a_half_cosine_over_the_rounds():
    run = RunSettings(num_server_rounds=5, learning_rate=1e-3, final_lr_factor=0.1)
    rates = [run.round_learning_rate(k) for k in range(1, 7)]
    assert rates[0] == pytest.approx(1e-3) and rates[4] == pytest.approx(1e-4) and rates[5] == pytest.approx(1e-4)
    assert rates[2] == pytest.approx(0.55e-3)  # half-way: the mean of the two
    assert all(a > b for a, b in zip(rates[:4], rates[1:5]))
    assert {RunSettings(num_server_rounds=5).round_learning_rate(k) for k in (1, 3, 5)} == {2e-3}  # constant
    assert RunSettings(num_server_rounds=1).round_learning_rate(1) == 2e-3
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="final-lr-factor"):
            RunSettings(final_lr_factor=bad).validate()


@pytest.mark.slow
def test_importing_the_server_app_loads_no_imaging_stack():
    code = (
        "import sys, fedaaa.server.app, fedaaa.common.clinical, fedaaa.common.config, fedaaa.common.metrics\n"
        "heavy = {m.split('.')[0] for m in sys.modules} & {'pydicom', 'monai', 'scipy', 'nibabel'}\n"
        "assert not heavy, sorted(heavy)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    light = (
        "import sys, fedaaa.common.clinical, fedaaa.common.settings, fedaaa.common.config\n"
        "assert not {m.split('.')[0] for m in sys.modules} & {'numpy', 'torch', 'flwr'}\n"
        "import fedaaa.common.metrics\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", light], check=True, cwd=ROOT)


def test_clinical_constants():
    from fedaaa.common.clinical import AAA_THRESHOLD_MM, CATEGORIES, diameter_category

    assert AAA_THRESHOLD_MM == 30.0
    assert diameter_category(29.9)[0] == "ectatic (25-29 mm)" and diameter_category(30.0)[0] == "AAA 30-34 mm"
    assert [c.upper_mm for c in CATEGORIES] == sorted(c.upper_mm for c in CATEGORIES)
    assert diameter_category(80.0)[1].startswith("vascular surgery referral")


# ---- update validation, robust aggregation, resume --------------------------------------------------------

BASE = {"features.w": torch.arange(6, dtype=torch.float32).reshape(2, 3) + 1.0, "head.b": torch.tensor([2.0])}


def _honest(node: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(node)
    return {k: v + 0.005 * torch.randn(v.shape, generator=g) for k, v in BASE.items()}


def _train_reply(node: int, state: dict[str, torch.Tensor], examples: int = 4) -> Message:
    content = RecordDict({"metrics": MetricRecord({"train-loss": 0.5, "num-examples": examples})})
    content["arrays"] = ArrayRecord({k: v.clone() for k, v in state.items()})
    return Message(content=content, reply_to=_instruction(node, "train"))


def _configured(tmp_path: Path, **settings) -> server.RecordingStrategy:
    """A strategy that has sent BASE out for round 1 (so it knows what the updates change)."""
    recorder = _recorder(tmp_path, **settings)
    strategy = server.make_strategy(recorder.settings, recorder)
    list(strategy.configure_train(1, ArrayRecord(BASE), ConfigRecord({}), _Grid(lambda m: None)))
    return strategy


def test_bad_updates_are_rejected_with_a_reason_and_the_others_averaged(tmp_path, caplog):
    strategy = _configured(tmp_path)
    good = {21: _honest(21), 22: _honest(22), 23: _honest(23)}
    nan = _honest(24) | {"head.b": torch.tensor([float("nan")])}
    shape = _honest(25) | {"features.w": torch.ones(3, 2)}
    dtype = _honest(26) | {"head.b": torch.tensor([2.0], dtype=torch.float64)}
    names = {"features.w": BASE["features.w"], "head.bias": BASE["head.b"]}
    scaled = {k: BASE[k] + 100 * (v - BASE[k]) for k, v in _honest(28).items()}  # x100 update
    replies = [_train_reply(n, s) for n, s in good.items()]
    replies += [_train_reply(n, s) for n, s in zip((24, 25, 26, 27, 28), (nan, shape, dtype, names, scaled))]
    logging.getLogger("flwr.fedaaa.server").addHandler(caplog.handler)
    try:
        arrays, metrics = strategy.aggregate_train(1, iter(replies))
    finally:
        logging.getLogger("flwr.fedaaa.server").removeHandler(caplog.handler)
    for name, tensor in arrays.to_torch_state_dict().items():  # the mean of the three honest updates only
        torch.testing.assert_close(tensor, sum(s[name] for s in good.values()) / 3)
    assert metrics["rejected_updates"] == 5 and metrics["train_sites"] == 3
    warnings = {r.getMessage() for r in caplog.records if "rejected" in r.getMessage()}
    for reason in ("NaN or infinite", "has shape (3, 2)", "dtype torch.float64", "weight names differ", "times"):
        assert sum(reason in w for w in warnings) == 1, (reason, warnings)
    strategy.recorder.end_of_round(1, arrays)
    (entry,) = [e for e in json.loads((tmp_path / "history.json").read_text())["rounds"] if e["round"] == 1]
    assert sum("rejected" in s for s in entry["sites"]) == 5 and entry["rejected_updates"] == 5


def test_with_two_hospitals_the_scaled_update_is_the_one_rejected(tmp_path):
    strategy = _configured(tmp_path)
    honest = _honest(21)
    scaled = {k: BASE[k] + 100 * (v - BASE[k]) for k, v in _honest(22).items()}
    arrays, metrics = strategy.aggregate_train(1, [_train_reply(21, honest), _train_reply(22, scaled)])
    for name, tensor in arrays.to_torch_state_dict().items():
        torch.testing.assert_close(tensor, honest[name])
    assert metrics["rejected_updates"] == 1


def test_an_update_larger_than_the_model_is_rejected_even_without_others_to_compare(tmp_path):
    strategy = _configured(tmp_path, min_nodes=1)
    replaced = {k: 100 * v for k, v in BASE.items()}
    arrays, metrics = strategy.aggregate_train(1, [_train_reply(21, replaced)])
    assert arrays is None and metrics is None  # the model is unchanged
    # the next round's honest update compares with nothing rejected before it and goes through
    arrays, _ = strategy.aggregate_train(2, [_train_reply(21, _honest(21))])
    assert arrays is not None


def test_too_few_answers_keep_the_model(tmp_path):
    strategy = _configured(tmp_path, min_nodes=3)
    arrays, metrics = strategy.aggregate_train(1, [_train_reply(21, _honest(21)), _error(22, "train")])
    assert arrays is None and metrics is None


@pytest.mark.parametrize(
    ("name", "cls", "expected"),
    [
        ("median", "RecordingMedian", lambda states: torch.as_tensor(np.median(torch.stack(states).numpy(), axis=0))),
        ("trimmed-mean", "RecordingTrimmedMean", lambda states: torch.stack(states).sort(dim=0).values[1:-1].mean(0)),
        ("krum", "RecordingKrum", None),
    ],
)
def test_robust_aggregation_is_selectable(tmp_path, name, cls, expected):
    strategy = _configured(tmp_path, strategy=name, trim_beta=0.25)
    assert type(strategy).__name__ == cls
    states = [_honest(n) for n in (21, 22, 23, 24)]
    arrays, _ = strategy.aggregate_train(1, [_train_reply(n, s) for n, s in zip((21, 22, 23, 24), states)])
    got = arrays.to_torch_state_dict()
    for key in BASE:
        if expected is None:  # Krum picks one of the updates as it is
            assert any(torch.equal(got[key], s[key]) for s in states)
        else:
            torch.testing.assert_close(got[key], expected([s[key] for s in states]))


def test_a_restarted_coordinator_resumes_from_its_last_checkpoint(tmp_path):
    """Round 1 of 2 runs, the coordinator stops; a new one on the same folder runs round 2 only, numbered 2,
    and the history, checkpoints and final model are those of an uninterrupted run."""
    recorder = _recorder(tmp_path, num_server_rounds=2, final_lr_factor=0.1)
    strategy = server.make_strategy(recorder.settings, recorder)
    strategy.start(
        grid=_Grid(_hospitals),
        initial_arrays=ArrayRecord(INITIAL),
        num_rounds=1,
        train_config=ConfigRecord(recorder.settings.round_config()),
        evaluate_fn=strategy.end_of_round,
    )
    before = json.loads((tmp_path / "history.json").read_text())["rounds"]
    assert [e["round"] for e in before] == [0, 1]

    again = _recorder(tmp_path, num_server_rounds=2, final_lr_factor=0.1)
    done, weights = again.resume()
    assert done == 1
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, _mean_state(1)[name])
    strategy = server.make_strategy(again.settings, again)
    strategy.round_offset = done
    grid = _Grid(_hospitals)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(weights),
        num_rounds=1,
        train_config=ConfigRecord(again.settings.round_config()),
        evaluate_fn=strategy.end_of_round,
    )
    assert {int(m.content["config"]["server-round"]) for m in grid.sent} == {2}  # hospitals are told round 2
    rates = [c["learning-rate"] for c in _train_configs(grid)]
    assert len(rates) == len(NODES) and rates == pytest.approx([2e-4] * len(NODES))  # and round 2's rate
    rounds = json.loads((tmp_path / "history.json").read_text())["rounds"]
    assert [e["round"] for e in rounds] == [0, 1, 2]
    assert rounds[1] == before[1]  # round 1 as it was written before the restart
    assert rounds[2]["elapsed_s"] >= rounds[1]["elapsed_s"]  # one continuous clock
    _assert_entry({k: v for k, v in rounds[2].items() if k != "elapsed_s"}, _expected(2))
    state, _ = read_model_file(again.finish(result.arrays, 2))
    for name, tensor in state.items():
        torch.testing.assert_close(tensor, _mean_state(2)[name])

    other = _recorder(tmp_path, num_server_rounds=3, learning_rate=0.01)  # another run's settings: refused
    with pytest.raises(ConfigError, match="holds another run.*learning-rate"):
        other.resume()
    assert _recorder(tmp_path / "fresh").resume() == (0, None)


def test_a_run_starts_from_the_initial_model_file(tmp_path):
    """run-config initial-model: round 1 starts from that file's weights (a model pre-trained elsewhere); a file
    of another network or a relative path is refused in one sentence naming it; without it the start is random."""
    from dataclasses import replace

    from fedaaa.common.model import initial_state
    from fedaaa.common.model_file import ModelMeta, write_model_file
    from fedaaa.common.settings import ArchSettings

    arch = ArchSettings()
    pre = {k: v + 0.25 for k, v in initial_state(arch).items()}
    path = write_model_file(tmp_path / "pre.safetensors", pre, ModelMeta(arch=arch))
    got = server._start(RunSettings(initial_model=str(path)), arch)
    assert sorted(got) == sorted(pre) and all(torch.equal(got[k], pre[k]) for k in pre)
    random_start = server._start(RunSettings(), arch)
    assert any(not torch.equal(random_start[k], pre[k]) for k in pre)

    other = replace(arch, channels=tuple(c * 2 for c in arch.channels))
    wrong = write_model_file(tmp_path / "wide.safetensors", initial_state(other), ModelMeta(arch=other))
    with pytest.raises(ConfigError, match="wide.safetensors: its network"):
        server._start(RunSettings(initial_model=str(wrong)), arch)
    with pytest.raises(ConfigError, match="absolute"):
        RunSettings.from_run_config({"initial-model": "pre.safetensors"})
