"""Flower ClientApp: a hospital trains and evaluates the shared model on its own studies.

Only weights and whitelisted scalar statistics leave this process: no pixels, paths, identifiers
or per-study predictions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.logger import FLOWER_LOGGER
from flwr.common.serde import recorddict_to_proto

from fedaaa.common.cache import InputCache
from fedaaa.common.config import PREPROCESS, RunSettings
from fedaaa.common.errors import ConfigError
from fedaaa.common.model import AortaNet
from fedaaa.common.privacy import LedgerStore, PrivacySettings, check_network, train_private
from fedaaa.common.site import LoadedSplit, Site
from fedaaa.common.training import evaluate_local, pick_device, train_local

log = logging.getLogger("flwr.fedaaa.client")


def audit_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """With node config ``audit-dir``, every reply this site sends is also written there, for its privacy
    officer: ``NNNNNN-<type>-round-K.bin`` holds the exact bytes of the reply's records (Flower's protobuf
    serialisation), and ``.json`` beside it what they are (array names, shapes, dtypes and digests, the
    metrics and their values). File names carry no identifier."""
    reply = call_next(msg, context)
    folder = context.node_config.get("audit-dir")
    if folder:
        write_audit(Path(str(folder)), msg, reply)
    return reply


def write_audit(folder: Path, msg: Message, reply: Message) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = msg.content["config"] if not msg.has_error() and "config" in msg.content else {}
    server_round = int(config.get("server-round", 0))
    stem = f"{time.time_ns()}-{os.getpid()}-{msg.metadata.message_type}-round-{server_round}"
    summary: dict = {"message_type": msg.metadata.message_type, "round": server_round, "run": int(msg.metadata.run_id)}
    if reply.has_error():
        summary["error"] = reply.error.reason
        payload = b""
    else:
        payload = recorddict_to_proto(reply.content).SerializeToString()
        summary["arrays"] = {
            record: {
                name: {"shape": list(a.shape), "dtype": a.dtype, "sha256": hashlib.sha256(a.data).hexdigest()}
                for name, a in arrays.items()
            }
            for record, arrays in reply.content.array_records.items()
        }
        summary["metrics"] = {record: dict(m) for record, m in reply.content.metric_records.items()}
        summary["configs"] = {record: dict(c) for record, c in reply.content.config_records.items()}
    summary |= {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    (folder / f"{stem}.bin").write_bytes(payload)
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(summary, indent=1, default=str))
    return path


app = ClientApp(mods=[audit_mod])


class _ToFlowerLog(logging.Handler):
    """Hands FedAAA's own records (``fedaaa.*``: a study skipped at this site, with its reason) to
    Flower's logger, so that they reach the node's log like the ClientApp's own lines instead of
    falling to Python's last-resort handler."""

    def emit(self, record: logging.LogRecord) -> None:
        FLOWER_LOGGER.handle(record)


def route_fedaaa_logs_to_flower() -> None:
    """Attach the hand-over once per process (INFO and above)."""
    fedaaa_log = logging.getLogger("fedaaa")
    if not any(isinstance(h, _ToFlowerLog) for h in fedaaa_log.handlers):
        fedaaa_log.addHandler(_ToFlowerLog(logging.INFO))
    if fedaaa_log.getEffectiveLevel() > logging.INFO:
        fedaaa_log.setLevel(logging.INFO)


route_fedaaa_logs_to_flower()

# Loaded splits stay in memory for the life of the process (a simulation's actors live across rounds;
# a deployed SuperNode starts a process per message and relies on the on-disk cache instead).
_LOADED: dict[tuple[str, str], LoadedSplit] = {}

# The only metric keys a hospital ever sends.
TRAIN_KEYS = {
    "train-loss",
    "num-examples",
    "skipped-studies",
    "site-index",  # simulation only: the virtual hospital's partition (deployed sites are indexed by the server)
    # Every site sends these (Flower aggregates only replies with the same keys); dp-target-epsilon 0: no DP
    "dp-target-epsilon",
    "dp-epsilon",  # the epsilon spent in this run so far (cumulative)
    "dp-delta",
    "dp-refused",  # 1: this round would have exceeded the site's budget; it trained nothing
}
NO_DP = {"dp-target-epsilon": 0.0, "dp-epsilon": 0.0, "dp-delta": 0.0, "dp-refused": 0}
EVALUATE_KEYS = {
    "num-examples",
    "tp",
    "fp",
    "tn",
    "fn",
    "unmeasured",
    "diameter-n",
    "diameter-err-sum",
    "diameter-abs-err-sum",
    "diameter-sq-err-sum",
    "dice-n",
    "dice-inter",
    "dice-pred",
    "dice-true",
    "hist-pos",
    "hist-neg",
    "skipped-studies",
}


def site_folder(context: Context, settings: RunSettings) -> Path:
    """The site folder from node config (deployment) or the partition's entry in run config (simulation)."""
    if "data-path" in context.node_config:
        return Path(str(context.node_config["data-path"]))
    sites = settings.site_list()
    partition = int(context.node_config.get("partition-id", -1))
    if not 0 <= partition < len(sites):
        raise ConfigError(
            f"no site folder for this node: set node config data-path (partition {partition}, {len(sites)} sites)"
        )
    return Path(sites[partition])


def site_privacy(context: Context, settings: RunSettings) -> PrivacySettings | None:
    """The hospital's own DP choice, from its node config. A simulated hospital (no ``data-path``, a
    ``partition-id``) takes the researcher's ``sim-dp-epsilon`` instead: one value for every site or one per
    partition. A deployed site ignores that key, so a coordinator can never set a site's privacy."""
    if "data-path" in context.node_config or "partition-id" not in context.node_config:
        return PrivacySettings.from_node_config(context.node_config)
    values = [v.strip() for v in settings.sim_dp_epsilon.split(",") if v.strip()]
    if not values:
        return None
    partition = int(context.node_config["partition-id"])
    value = values[0] if len(values) == 1 else values[partition] if partition < len(values) else "0"
    if float(value) == 0:
        return None
    config = {"dp-epsilon": value}
    if settings.sim_dp_max_grad_norm > 0:
        config["dp-max-grad-norm"] = str(settings.sim_dp_max_grad_norm)
    if settings.sim_dp_rounds > 0:
        config["dp-rounds"] = str(settings.sim_dp_rounds)
    return PrivacySettings.from_node_config(config)


def state_dir(context: Context) -> Path | None:
    """The site's own writable state folder (privacy ledger), from node config ``state-dir``."""
    value = context.node_config.get("state-dir")
    return Path(str(value)) if value else None


def _split(context: Context, settings: RunSettings, split: str) -> LoadedSplit:
    root = site_folder(context, settings)
    key = (str(root), split)
    if key not in _LOADED:
        cache_dir = context.node_config.get("cache-dir") or settings.cache_dir or None
        workers = int(context.node_config.get("decode-workers", 1))
        _LOADED[key] = Site(root).load(split, PREPROCESS, InputCache(PREPROCESS, cache_dir), workers=workers)
    return _LOADED[key]


def _model_from(msg: Message, device: torch.device) -> AortaNet:
    model = AortaNet()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model.to(device)


def _prepare(
    msg: Message, context: Context, split_name: str
) -> tuple[RunSettings, int, torch.device, AortaNet, LoadedSplit]:
    """Settings (run config overridden by what the coordinator sent), round, device, model and data."""
    settings = RunSettings.from_run_config(context.run_config)
    config = msg.content["config"] if "config" in msg.content else {}
    overrides = {k.replace("-", "_"): v for k, v in config.items() if k not in ("server-round", RUN_KEY)}
    settings = settings.with_overrides(**overrides)
    device = pick_device(str(context.node_config.get("device", settings.device)))
    split = _split(context, settings, split_name)
    if split.data is None:
        raise RuntimeError(f"no usable {split_name} studies at this site ({len(split.skipped)} skipped)")
    return settings, int(config.get("server-round", 0)), device, _model_from(msg, device), split


def _reply(msg: Message, metrics: dict, allowed: set[str], arrays: ArrayRecord | None = None) -> Message:
    leaked = set(metrics) - allowed
    if leaked:  # a programming error, never silently sent
        raise RuntimeError(f"refusing to send non-whitelisted metrics: {sorted(leaked)}")
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    settings, server_round, device, model, split = _prepare(msg, context, "train")
    privacy = site_privacy(context, settings)
    if privacy is None:
        metrics = train_local(model, split.data, settings.train_settings(server_round), device, _workers(context))
        metrics |= NO_DP
    else:
        metrics = _train_private(model, split, context, settings, server_round, device, privacy, _run_key(msg, context))
    metrics["skipped-studies"] = len(split.skipped)
    if "partition-id" in context.node_config and "data-path" not in context.node_config:
        metrics["site-index"] = int(context.node_config["partition-id"])
    if metrics["num-examples"]:
        log.info(
            "round %d: trained on %d labelled studies (%d skipped), loss %.4f",
            server_round,
            metrics["num-examples"],
            len(split.skipped),
            metrics["train-loss"],
        )
    elif not split.data.masked:  # a site without aorta labels validates and calibrates; its weights do not count
        log.info(
            "round %d: no study with an aorta label at this site: nothing to train, weights unchanged", server_round
        )
    return _reply(msg, metrics, TRAIN_KEYS, ArrayRecord(model.cpu().state_dict()))


def _train_private(
    model: AortaNet,
    split: LoadedSplit,
    context: Context,
    settings: RunSettings,
    server_round: int,
    device: torch.device,
    privacy: PrivacySettings,
    run: str,
) -> dict:
    """DP-SGD under the site's budget; the reply carries the cumulative epsilon, and a refusal when the round
    would exceed the budget (the site trains nothing this round; it still evaluates)."""
    check_network(model)
    store = LedgerStore(state_dir(context), context.state)
    metrics, outcome = train_private(
        model,
        split.data,
        settings.train_settings(server_round),
        device,
        privacy,
        store,
        run=run,
        server_round=server_round,
        planned_rounds=settings.num_server_rounds,
    )
    if outcome.trained:
        log.info("round %d: DP epsilon spent %.3f of %g", server_round, outcome.epsilon, outcome.target_epsilon)
    elif split.data.masked:
        log.warning("round %d: DP budget: not training: %s", server_round, outcome.reason)
    ledger = store.load(run)
    metrics |= {
        "dp-epsilon": round(outcome.epsilon, 6),
        "dp-target-epsilon": outcome.target_epsilon,
        "dp-refused": int(not outcome.trained and bool(split.data.masked)),
    }
    metrics["dp-delta"] = ledger.delta if ledger is not None else 0.0
    return metrics


RUN_KEY = "run-key"  # the coordinator's name for a run that outlives a restart (fedaaa.server.app)


def _run_key(msg: Message, context: Context) -> str:
    """The run a DP site's ledger files this round under: the coordinator's run key, which a run resumed after
    a coordinator restart keeps (a new Flower run id would start a fresh budget), else Flower's run id."""
    config = msg.content["config"] if "config" in msg.content else {}
    return str(config.get(RUN_KEY) or context.run_id)


def _workers(context: Context) -> int | None:
    """The hospital's ``loader-workers``: processes that make training patches and measure validation maps
    (None: automatic, see :func:`~fedaaa.common.training.loader_workers`)."""
    workers = int(context.node_config.get("loader-workers", -1))  # -1: automatic, as in hospital.toml
    return None if workers < 0 else workers


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    _, _, device, model, split = _prepare(msg, context, "val")
    stats = evaluate_local(model, split.data, device, _workers(context))
    stats["skipped-studies"] = len(split.skipped)
    return _reply(msg, stats, EVALUATE_KEYS)
