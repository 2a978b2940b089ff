"""``pocketlearn ids``: an intrusion-detection model that fine-tunes itself on each device when traffic drifts."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console


def ids_command(
    detector: Annotated[str, typer.Option(help="Drift detector on the error stream: adwin | page-hinkley.")] = "adwin",
    method: Annotated[str, typer.Option(help="On-device training method (pocketlearn methods).")] = "backprop",
    device: Annotated[str, typer.Option(help="Device preset whose memory budget each update must fit.")] = "phone-1g",
    data: Annotated[str, typer.Option(help="kdd | phishing | PATH.csv in the KDD / NSL-KDD column layout.")] = "kdd",
    devices: Annotated[int, typer.Option(min=1, help="Devices, each with its own drifting stream.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the split and the streams.")] = 0,
    secagg: Annotated[bool, typer.Option(help="Share updates by secure aggregation: the server sees only the sum."
                                         )] = False,
    config_file: Annotated[str | None, typer.Option("--config", help="Settings from a TOML (examples/ids.toml); "
                                                    "the options above are then ignored.")] = None,
) -> None:
    """Frozen cloud model vs. on-device updates on drift vs. federated sharing, on the same streams."""
    from dataclasses import replace

    from rich.table import Table

    from pocketlearn.apps.ids.run import IdsConfig, LearnerConfig, load_ids_config, run_ids
    from pocketlearn.apps.ids.stream import ScenarioConfig
    from pocketlearn.devices import format_bytes

    console = Console()
    learner = LearnerConfig(detector=detector, method=method, seed=seed)
    if method != "backprop":
        learner = replace(learner, method_options={"lr": 0.05})
    scenario = ScenarioConfig(devices=devices, seed=seed)
    if data == "phishing":  # a small stream with a label flip: shorter windows, so retraining sees the new concept
        scenario = replace(scenario, first_onset=100, stagger=40)
        learner = replace(learner, window=120, min_window=40)
    config = IdsConfig(data=data, device=device, learner=learner, scenario=scenario,
                       strategy_options={"secagg_clip": 1.0} if secagg else {})
    if config_file:
        config = load_ids_config(config_file)
        data, devices, detector = config.data, config.scenario.devices, config.learner.detector
        method, device = config.learner.method, config.device
    result = run_ids(config)  # pocketlearn's errors reach main(): one line on stderr, exit 2
    onsets = result.first_onsets()
    table = Table(title=f"IDS on {data} ({devices} devices, {detector}, {method} on {device})")
    for col in ("mode", "prequential acc", "acc after drift", "alarms", "updates kept/tried"):
        table.add_column(col)
    for mode, res in result.modes.items():
        ups = [u for us in res.updates for u in us]
        table.add_row(mode, f"{res.accuracy():.3f}", f"{res.accuracy_after(onsets):.3f}",
                      str(sum(len(d) for d in res.detections)), f"{sum(u.swapped for u in ups)}/{len(ups)}")
    console.print(table)
    console.print(f"cloud model accuracy on its training part: {result.cloud_accuracy:.3f}; classes "
                  f"{result.scenario.classes} (cloud knew {result.scenario.known})")
    for event, delays in result.detection_delays().items():
        console.print(f"detection delay after {event}: {delays} stream positions (None: not detected)")
    console.print(f"false alarms in the stable prefix: {result.false_alarms()}; estimated peak memory per update: "
                  f"{format_bytes(result.peak_update_bytes())}; federated rounds: {result.federated_rounds}")
