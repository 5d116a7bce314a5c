"""The subnets of a supernet as discrete points: one op per choice and one width per channel
group. The sandwich rule trains them (`search.sandwich`) and the front's samplers search them
(`search.front`); both read this one description, so that what is trained is what is searched.

A width keeps the channels of highest rank in a fixed order per group (the mask logits, ties
broken by position): a narrower subnet's channels are a subset of every wider one's, as in
slimmable networks and Once-for-All, so that each channel's weights serve every width.

Spaces whose choices pick one op each (macro, model) have such points; a DARTS cell's genotype
(two edges per node) is no op per choice and is refused.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from maskednas.ops.masks import WidthRounding


@dataclass(frozen=True)
class Subnet:
    """One op per choice and one width per channel group (every group of the supernet)."""
    ops: dict[str, str]
    widths: dict[str, int] = field(default_factory=dict)

    def params(self) -> dict[str, object]:
        """As the flat parameters a sampler suggests (`op:<choice>`, `width:<group>`)."""
        return {**{f"op:{k}": v for k, v in self.ops.items()},
                **{f"width:{k}": v for k, v in self.widths.items()}}

    @classmethod
    def from_params(cls, params: dict[str, object]) -> Subnet:
        return cls({k[3:]: v for k, v in params.items() if k.startswith("op:")},
                   {k[6:]: int(v) for k, v in params.items() if k.startswith("width:")})


def check_subnet_space(net) -> None:
    """Refuse a space whose derived ops are no single op per choice (DARTS cells)."""
    if net.cell_based:
        raise ValueError(f"the {net.space_name!r} space derives cells (two edges per node), not one "
                         f"op per choice: the sandwich rule and the front search the macro and "
                         f"model spaces")


class SubnetSpace:
    """The discrete subnets of `net`: its op choices, and per group the widths
    `width_fractions` of its size give (rounded as derivation rounds them)."""

    def __init__(self, net, width_fractions, rounding: WidthRounding = WidthRounding()) -> None:
        check_subnet_space(net)
        self.net, self.rounding = net, rounding
        full = net.full_widths()
        self.choices = {name: tuple(names) for name, (names, _) in
                        net.choice_rows(net.op_weights()).items()}
        self.width_choices = {
            g: tuple(sorted({rounding(max(1, round(f * size)), size, net.channel_step(g), net.channel_unit(g))
                             for f in width_fractions}))
            for g, size in full.items()}
        self._rank_scores = {g: _rank_scores(mask.logits.detach().cpu()) for g, mask in net.masks.items()}
        self._keep_cache: dict[tuple[str, int], torch.Tensor] = {}
        self._keep_vectors: dict[tuple[str, int], torch.Tensor] = {}  # on the masks' device
        self._largest = self._smallest = None

    # -- points ---------------------------------------------------------------------------------
    def largest(self) -> Subnet:
        """Every group at full width (its widest choice), every choice its costliest op."""
        if self._largest is None:
            widths = {g: c[-1] for g, c in self.width_choices.items()}
            self._largest = Subnet(self.net.derive_ops(self.net.single_path_weights(widths, largest=True)), widths)
        return self._largest

    def smallest(self) -> Subnet:
        """Every group at its narrowest choice, every choice its cheapest op."""
        if self._smallest is None:
            widths = {g: c[0] for g, c in self.width_choices.items()}
            self._smallest = Subnet(self.net.derive_ops(self.net.single_path_weights(widths, largest=False)), widths)
        return self._smallest

    def sample(self, generator: torch.Generator | None = None) -> Subnet:
        """Uniformly: each choice's op and each group's width (host-side draws)."""
        pick = lambda options: options[int(torch.randint(len(options), (), generator=generator))]
        return Subnet({k: pick(v) for k, v in self.choices.items()},
                      {g: pick(c) for g, c in self.width_choices.items()})

    def grown(self, subnet: Subnet, share: float, ops_too: bool = False) -> Subnet:
        """`subnet` with every group moved `share` of the way to its full width; `ops_too`: also
        each choice whose op differs from the largest subnet's switched to that op once `share`
        passes its turn (the choices in order, evenly spaced), so that share 1 is the largest
        subnet. The cost grows with `share` either way."""
        full = self.net.full_widths()
        widths = {g: self.rounding(round(w + share * (full[g] - w)), full[g], self.net.channel_step(g),
                                   self.net.channel_unit(g))
                  for g, w in subnet.widths.items()}
        ops = dict(subnet.ops)
        if ops_too:
            largest = self.largest().ops
            changed = [k for k in ops if ops[k] != largest[k]]
            for turn, k in enumerate(changed, start=1):
                if share >= turn / (len(changed) + 1):
                    ops[k] = largest[k]
        return Subnet(ops, widths)

    def wider(self, subnet: Subnet, group: str) -> Subnet | None:
        """`subnet` with `group` one width step wider (None: already at full width)."""
        size, w = self.net.full_widths()[group], subnet.widths[group]
        if w >= size:
            return None
        step = self.rounding.divisor(self.net.channel_step(group), self.net.channel_unit(group))
        return Subnet(subnet.ops, {**subnet.widths, group: min(size, (w // step + 1) * step)})

    # -- what a point is ------------------------------------------------------------------------
    def keep(self, subnet: Subnet, groups=None) -> dict[str, torch.Tensor]:
        """Kept channel indices (ascending) of `groups` (default: every group)."""
        groups = subnet.widths if groups is None else groups
        out = {}
        for g in groups:
            key = (g, subnet.widths[g])
            if key not in self._keep_cache:
                self._keep_cache[key] = self.net.keep_channels(g, self._rank_scores[g], key[1])
            out[g] = self._keep_cache[key]
        return out

    def architecture(self, subnet: Subnet, mean=(), std=()):
        used = self.net.used_groups(subnet.ops)
        return self.net.architecture(subnet.ops, {g: subnet.widths[g] for g in used}, mean, std)

    def activate(self, subnet: Subnet) -> None:
        """Hard-mask the supernet to `subnet` (every group hardened; `net.soft_mask()` undoes
        it), as `net.hard_mask` would, from keep vectors cached on the device."""
        self.net.restrict_ops(subnet.ops)
        for g, w in subnet.widths.items():
            mask = self.net.masks[g]
            if (g, w) not in self._keep_vectors:
                keep = torch.zeros(mask.channels, dtype=torch.bool)
                keep[self.keep(subnet, [g])[g]] = True
                self._keep_vectors[g, w] = keep.to(mask.keep.device)
            mask.harden_to(self._keep_vectors[g, w])


def _rank_scores(logits: torch.Tensor) -> torch.Tensor:
    """Distinct scores in the order of the logits (highest first), ties broken by position: the
    top-k of a fixed strict order are nested in k."""
    order = torch.sort(logits, descending=True, stable=True).indices
    scores = torch.empty(len(logits))
    scores[order] = -torch.arange(len(logits), dtype=torch.float32)
    return scores
