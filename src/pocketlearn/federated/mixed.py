"""Mixed-method rounds: each device trains the way its memory allows, and one rule combines the updates.

What travels (the *wire* form of an update) depends on the method's kind:
- ``dense`` (backprop, bias, sparse): the change of the parameters it trained, under their own names.
- ``lora``: the B factors only. Every LoRA client of round r starts its adapters from the same seed, so all
  share one A per layer, and A stays frozen (FFA-LoRA: Sun et al., "Improving LoRA in Privacy-preserving
  Federated Learning", ICLR 2024). The update of the adapted weight is then ΔW = (α/r)·B·A, linear in B.
- ``zo`` (mezo): one coefficient per seed of a pool of K seeds shared by the round (FedKSeed: Qin et al.,
  "Federated Full-Parameter Tuning of Billion-Sized Language Models with Communication Cost under 18
  Kilobytes", ICML 2024). Its update is Δθ = -lr·Σ_j c_j·z(seed_j), linear in c.

The rule. Every wire form maps to a delta of the global parameters by a *linear* map E_kind (identity on the
trained subset, B ↦ (α/r)·B·A, c ↦ -lr·Σ_j c_j z_j). Each global parameter p becomes

    Δp = Σ_k w_k·E_k(u_k)[p] / Σ_{k updates p} w_k,

the sample-weighted mean over the clients that actually updated p (HeteroFL-style partial averaging: Diao et
al., ICLR 2021), and the strategy's server optimizer is applied once to that mean. Because every E is
linear, Σ_k w_k·E(u_k) = E(Σ_k w_k·u_k): a server may sum each kind's wire updates first (secure
aggregation, central DP) and expand each sum once, and gets the same mean — the property the private and
secure paths below rely on.

Differential privacy. A client's wire update is divided by its kind's unit (``dp.kind_scale``: the spaces of
deltas, B factors and coefficients have different scales) and the whole normalised vector is clipped to the
bound C; each kind's sum then gets Gaussian noise of std z·C on *every* coordinate of that kind, every round
(so which tensors are released says nothing about which kinds took part), and is multiplied back by its unit.
Adding or removing one client moves the normalised tuple of sums by at most C in L2, so the release is one
Gaussian mechanism of noise multiplier z: exactly what DP-FedAvg's accountant charges per round at the same
sampling rate. Expanding, averaging and the server step are post-processing. The denominators are public: the
expected number of sampled clients whose method updates the parameter.

Secure aggregation runs one protocol per method over its clients' weighted wire vectors, so a LoRA or ZO
client masks and sends its compact update, not a model-sized vector; the server unmasks each method's sum
only (a method with a lone client this round joins another group's protocol, or its sum would be its update).
Values are clipped to ``secagg.clip`` per coordinate as in single-method runs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from pocketlearn.errors import ConfigError
from pocketlearn.federated.simulate import base_name
from pocketlearn.federated.updates import ClientUpdate, RoundUpdates
from pocketlearn.methods import available_methods, get_method_class, methods_where
from pocketlearn.methods.base import WireKind


class ZeroOrder(NamedTuple):
    """What the server needs to read a round's ZO updates: the pooled seeds and the clients' MeZO settings."""

    pool: list[int]
    lr: float
    names: list[str]  # the perturbed parameters, sorted (the order z is drawn in)
    n_perturbations: int


ZO_WIRE = "zo.coefficients"
DEFAULT_POOL = 64


def mixed_methods() -> list[str]:
    """The registered methods that can join a mixed run (those with a wire kind), in registry order."""
    return methods_where(lambda m: m.wire_kind is not None)


def kind_of(method: str) -> WireKind:
    """How a ``method`` client's update travels: its class's ``wire_kind``."""
    kind = get_method_class(method).wire_kind if method in available_methods() else None
    if kind is None:
        raise ConfigError(f"method {method!r} cannot take part in a mixed-method run; use one of {mixed_methods()}")
    return kind


def round_seed(seed: int, rnd: int) -> int:
    """The seed every client of round ``rnd`` shares (LoRA's A, the ZO seed pool), and the server with them."""
    return int(np.random.SeedSequence([seed, rnd, 7]).generate_state(1)[0] >> 1)


def round_options(method: str, options: Mapping[str, object], seed: int, rnd: int) -> dict[str, object]:
    """The options a client of ``method`` trains with in round ``rnd`` of a mixed run."""
    out = dict(options)
    kind = kind_of(method)
    if kind == "lora":
        out.update(train_a=False, init_seed=round_seed(seed, rnd))
    elif kind == "zo":
        if float(str(out.get("weight_decay", 0.0))) or out.get("subset", "all") == "lora":
            raise ConfigError("mezo in a mixed run needs weight_decay = 0 and subset 'all' or 'bias' (its update "
                              "must be linear in its coefficients)")
        out.setdefault("seed_pool", DEFAULT_POOL)
        out["pool_seed"] = round_seed(seed, rnd)
    return out


@dataclass
class Expansion:
    """The server's linear maps of one round: from each method's wire update to deltas of the global weights."""

    params: dict[str, Tensor]  # the global parameters (base names)
    updated: dict[str, set[str]] = field(default_factory=dict)  # method -> global names its clients update
    lora: dict[str, tuple[str, Tensor, float]] = field(default_factory=dict)  # B name -> (weight, A, α/r)
    zo: ZeroOrder | None = None  # the ZO clients' seed pool and settings
    wire: dict[str, dict[str, torch.Size]] = field(default_factory=dict)  # method -> its wire tensors' shapes

    @classmethod
    def build(cls, template: nn.Module, params: dict[str, Tensor], options: Mapping[str, Mapping[str, Any]]
              ) -> Expansion:
        """``options``: each method of the round with its :func:`round_options` (and ``lr``)."""
        from pocketlearn.methods import make_method
        from pocketlearn.methods.lora import factor_weight, lora_layers
        from pocketlearn.methods.mezo import MezoConfig, pool_seeds

        out = cls(params)
        for method, opts in options.items():
            m = make_method(method, copy.deepcopy(template), **opts)
            wire = {base_name(n): p.shape for n, p in m.trainable_parameters().items()}
            trained = list(wire)
            kind = kind_of(method)
            if kind == "lora":
                for layer_name, layer in lora_layers(m.model).items():
                    weight = f"{layer_name}.weight"
                    a = factor_weight(layer, "lora_A").detach().clone()
                    out.lora[f"{layer_name}.lora_B.default.weight"] = (weight, a, float(layer.scaling["default"]))
                trained = [out.lora[n][0] if n in out.lora else n for n in trained if ".lora_A." not in n]
            elif kind == "zo":
                cfg = m.config
                assert isinstance(cfg, MezoConfig), f"{method}: a zeroth-order wire form is MeZO's (seed pool)"
                out.zo = ZeroOrder(pool_seeds(cfg.pool_seed, cfg.seed_pool), cfg.lr, sorted(trained),
                                   cfg.n_perturbations)
                wire = {ZO_WIRE: torch.Size([cfg.seed_pool])}
            out.wire[method] = wire
            unknown = set(trained) - set(params)
            if unknown:
                raise ConfigError(f"{method} trains {sorted(unknown)[:3]}, which the global model does not have")
            out.updated[method] = set(trained)
        return out

    def to_params(self, wire: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Wire tensors (one client's, or a weighted sum of many: the map is linear) as global-parameter deltas."""
        out: dict[str, Tensor] = {}
        for name, t in wire.items():
            if name == ZO_WIRE:
                from pocketlearn.methods.mezo import expand_coefficients

                assert self.zo is not None, "coefficients arrived, but no method of this run trains zeroth-order"
                zo = self.zo
                delta = expand_coefficients({n: self.params[n] for n in zo.names}, t, zo.pool, zo.lr)
            elif name in self.lora:
                weight, a, scale = self.lora[name]
                delta = {weight: (scale * (t.flatten(1) @ a.flatten(1))).view(self.params[weight].shape)}
            else:
                delta = {name: t}
            for n, d in delta.items():
                out[n] = out[n] + d if n in out else d
        return out

    def zo_wire(self, updates: RoundUpdates, histories: list[list[tuple[int, float]]]) -> RoundUpdates:
        """ZO clients' wire form: each client's (seed, g) history as one coefficient per pooled seed."""
        from pocketlearn.methods.mezo import pool_coefficients

        assert self.zo is not None, "a ZO history arrived, but no method of this run trains zeroth-order"
        coefficients = torch.stack([pool_coefficients(h, self.zo.pool, self.zo.n_perturbations) for h in histories])
        return RoundUpdates(updates.client_ids, updates.num_samples, {ZO_WIRE: coefficients})

    def expand(self, method: str, updates: RoundUpdates) -> RoundUpdates:
        """Every client's wire update in ``updates`` as rows of global-parameter deltas."""
        kind = kind_of(method)
        if kind == "dense":
            return updates
        if not len(updates):  # a group of real devices none of which answered
            empty = {n: self.params[n].new_zeros((0, *self.params[n].shape)) for n in sorted(self.updated[method])}
            return RoundUpdates([], updates.num_samples.clone(), empty)
        if kind == "zo":  # all clients at once: each pooled z is drawn once
            deltas = self.to_params({ZO_WIRE: updates.deltas[ZO_WIRE]})
        else:
            rows = [self.to_params(updates.client_delta(k)) for k in range(len(updates))]
            deltas = {n: torch.stack([r[n] for r in rows]) for n in rows[0]}
        return RoundUpdates(list(updates.client_ids), updates.num_samples.clone(), deltas)

    def combine(self, sums: Mapping[str, Mapping[str, Tensor]], weights: Mapping[str, float]) -> dict[str, Tensor]:
        """Σ-then-expand: per method, a weighted sum of its wire updates and the total weight behind it.

        Returns each global parameter's mean delta over the methods that update it (parameters no method of
        the round updates are left out).
        """
        total: dict[str, Tensor] = {}
        denominator: dict[str, float] = {}
        for method, wire in sums.items():
            for name, delta in self.to_params(wire).items():
                total[name] = total[name] + delta if name in total else delta.clone()
            for name in self.updated[method]:
                denominator[name] = denominator.get(name, 0.0) + weights[method]
        return {n: t / denominator[n] for n, t in total.items() if denominator.get(n, 0.0) > 0}



@dataclass
class MixedMethods:
    """What a mixed run's server hands out per method, and how it reads what comes back."""

    template: nn.Module  # the global model's architecture (weights are the server's params)
    options: dict[str, dict[str, object]]  # method -> its options (its lr included), before round_options
    seed: int
    shares: dict[str, float]  # method -> share of the eligible clients that train with it (public)

    def round_options(self, rnd: int) -> dict[str, dict[str, object]]:
        return {m: round_options(m, o, self.seed, rnd) for m, o in self.options.items()}

    def expansion(self, params: dict[str, Tensor], rnd: int) -> Expansion:
        return Expansion.build(self.template, params, self.round_options(rnd))

    def updater_share(self, expansion: Expansion) -> dict[str, float]:
        """Per global parameter, the share of eligible clients whose method updates it."""
        share: dict[str, float] = {}
        for method, names in expansion.updated.items():
            for n in names:
                share[n] = share.get(n, 0.0) + self.shares.get(method, 0.0)
        return share


def one_row(means: Mapping[str, Tensor], weight: float) -> RoundUpdates:
    """A round's combined mean as one client's update, for the strategy's server step."""
    return RoundUpdates([-1], torch.tensor([weight]), {n: m.unsqueeze(0) for n, m in means.items()})


def secure_combine(groups: list[tuple[str, RoundUpdates]], expansion: Expansion, *, threshold: float, clip: float,
                   neighbours: int | None, seed: int) -> tuple[RoundUpdates, int, int]:
    """One secure aggregation per method over its wire updates, weighted on the clients; then the rule.

    A method with a single client this round would have its sum, that is its one update, unmasked: it joins
    the smallest other group instead, in one protocol over both wire spaces (that client sends the longer
    vector). Returns the combined mean as one row, and the protocol's bytes sent and received.
    """
    from pocketlearn.federated.secagg import round_thresholds
    from pocketlearn.federated.secagg.run import Ledger, secure_sum_deltas

    total = float(sum(float(u.num_samples.sum()) for _, u in groups))
    weights = {m: float(u.num_samples.sum()) / total for m, u in groups}
    sums: dict[str, dict[str, Tensor]] = {m: {} for m, _ in groups}
    sent = received = 0
    for i, (methods, u) in enumerate(protocol_groups(groups)):
        u.scale_clients(u.num_samples / total)
        ledger = Ledger.empty(len(u))
        shares, survivors = round_thresholds(threshold, len(u), neighbours)
        sums[methods[0]] = secure_sum_deltas(u, threshold=shares, clip=clip, neighbours=neighbours,
                                             seed=seed * 101 + i, ledger=ledger, min_survivors=survivors)
        sent, received = sent + int(ledger.sent.sum()), received + int(ledger.received.sum())
    return one_row(expansion.combine(sums, weights), total), sent, received


def protocol_groups(groups: list[tuple[str, RoundUpdates]]) -> list[tuple[list[str], RoundUpdates]]:
    """Methods' client groups for secure aggregation, a lone client merged into the smallest other group."""
    out = [([m], u) for m, u in groups]
    while len(out) > 1 and min(len(u) for _, u in out) < 2:
        out.sort(key=lambda g: len(g[1]))
        (m1, u1), (m2, u2) = out[0], out[1]
        both = [ClientUpdate(u.client_ids[k], int(u.num_samples[k]), u.client_delta(k)) for u in (u1, u2)
                for k in range(len(u))]
        out = [(m1 + m2, RoundUpdates.stack(both)), *out[2:]]
    return out


def kind_unit(kind_scale: Mapping[str, float], method: str) -> float:
    """The unit a ``method`` client's wire update is divided by before clipping (``dp.kind_scale``, default 1)."""
    return float(kind_scale.get(kind_of(method), 1.0))


def private_combine(groups: list[tuple[str, RoundUpdates]], expansion: Expansion, mixed: MixedMethods,
                    mechanism: object) -> dict[str, Tensor]:
    """DP-FedAvg in the wire space (see the module docstring): each global parameter's private mean delta."""
    config = mechanism.config  # type: ignore[attr-defined]
    unit = {n: kind_unit(config.kind_scale, m) for m, shapes in expansion.wire.items() for n in shapes}
    clients = [ClientUpdate(u.client_ids[k], 1, {n: t / unit[n] for n, t in u.client_delta(k).items()})
               for _, u in groups for k in range(len(u))]
    always = {n: shape for shapes in expansion.wire.values() for n, shape in shapes.items()}
    means = mechanism.privatize(RoundUpdates.stack(clients), mechanism.rounds + 1, always)  # type: ignore[attr-defined]
    deltas = expansion.to_params({n: m * unit[n] for n, m in means.items()})  # Σ over clients / expected clients
    share = mixed.updater_share(expansion)
    return {n: d / share[n] for n, d in deltas.items() if share.get(n, 0.0) > 0}
