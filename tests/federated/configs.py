"""Run configs for tests: a base dict with a few keys changed (``section__key=value``)."""

import json

from pocketlearn.federated.config import RunConfig, parse_config


def config_with(base: dict, **changes) -> RunConfig:
    raw = json.loads(json.dumps(base))
    for key, value in changes.items():
        *parents, leaf = key.split("__")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return parse_config(raw)
