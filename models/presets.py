"""Model presets: every size and behavioural number of an EVAD model, in one place.

The four released configurations (``shared/docs/evad-architecture.md``, "Presets") plus
``tiny``, which has every module type of the real model at small sizes, for tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from evad.errors import ConfigError
from evad.models.labels import SYNTHETIC_ACTIONS

__all__ = ["PRESETS", "Preset", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """Sizes and constants of one EVAD model.

    Block indices are 0-based. ``keep_rates`` maps a pruning block to its keep rate (fraction of
    the current token count, keyframe tokens included); blocks not listed do not prune.
    """

    name: str
    # Encoder (VideoMAE ViT with keyframe-centric token pruning).
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    tubelet_size: int = 2
    num_frames: int = 16
    pretrain_grid: tuple[int, int, int] = (8, 14, 14)  # (t, h, w) of the position table
    keep_rates: dict[int, float] = field(default_factory=dict)
    keyframe_weight: float = 1.0
    fpn_taps: tuple[int, int, int, int] = (2, 5, 8, 11)
    # Localization branch (Sparse R-CNN).
    fpn_dim: int = 256
    num_proposals: int = 100
    loc_stages: int = 6
    loc_heads: int = 8
    dynamic_dim: int = 64
    loc_ffn_dim: int = 2048
    num_cls_layers: int = 1
    num_reg_layers: int = 3
    pooler_resolution: int = 7
    pooler_sampling_ratio: int = 2
    box_weights: tuple[float, float, float, float] = (2.0, 2.0, 1.0, 1.0)
    # Classification branch (context refinement decoder).
    decoder_dim: int = 384
    decoder_depth: int = 6
    decoder_heads: int = 6
    action_hidden: int = 2048
    num_classes: int = 80
    labels: tuple[str, ...] = ()  # class names when not AVA's (see evad.models.labels)
    box_extend: tuple[float, float] = (0.4, 0.2)  # (x, y) fraction of the box size
    # Inference constants and pre-processing.
    person_threshold: float = 0.7
    frame_stride: int = 4
    short_side: int = 288
    max_long_side: int = 1333
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)
    layer_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def loc_hidden(self) -> int:
        """Width of the proposal features (= FPN channels, as in Sparse R-CNN)."""
        return self.fpn_dim

    def replace(self, **overrides) -> Preset:
        """A copy with fields replaced; ``keep_rate`` sets every pruning block's rate at once."""
        if "keep_rate" in overrides:
            rate = overrides.pop("keep_rate")
            if rate is not None:
                from evad.models.keyframe_topk_prune import keep_fraction

                keep_fraction(rate)  # validates the range
                blocks = self.keep_rates.keys() or self.default_pruning_blocks()
                overrides["keep_rates"] = {} if rate == 1.0 else {b: float(rate) for b in blocks}
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown preset field(s) {sorted(unknown)} for preset {self.name!r}")
        new = dataclasses.replace(self, **overrides)
        new.validate()
        return new

    def default_pruning_blocks(self) -> tuple[int, ...]:
        """Blocks that prune when a keep rate < 1 is set: after each quarter of the depth."""
        q = self.depth // 4
        return (q, 2 * q, 3 * q)

    def validate(self) -> None:
        """Raise ConfigError when fields contradict each other."""
        if self.embed_dim % self.num_heads or self.decoder_dim % self.decoder_heads:
            raise ConfigError(f"{self.name}: widths must be divisible by the head counts")
        if self.fpn_dim % self.loc_heads:
            raise ConfigError(f"{self.name}: fpn_dim must be divisible by loc_heads")
        for b, r in self.keep_rates.items():
            if not 0 <= b < self.depth:
                raise ConfigError(f"{self.name}: pruning block {b} outside 0..{self.depth - 1}")
            if not 0.0 < r <= 1.0:
                raise ConfigError(f"{self.name}: keep rate {r} at block {b} must be in (0, 1]")
        if len(self.fpn_taps) != 4 or not all(0 <= b < self.depth for b in self.fpn_taps):
            raise ConfigError(f"{self.name}: fpn_taps must be 4 blocks in 0..{self.depth - 1}")
        if self.num_frames % self.tubelet_size or self.num_frames // self.tubelet_size < 1:
            raise ConfigError(f"{self.name}: num_frames must be a multiple of tubelet_size")
        if self.pretrain_grid[0] != self.num_frames // self.tubelet_size:
            raise ConfigError(f"{self.name}: pretrain_grid[0] = {self.pretrain_grid[0]} must be "
                              f"num_frames / tubelet_size = {self.num_frames // self.tubelet_size}")

    def to_dict(self) -> dict:
        """JSON-able fields (keep_rates keys become strings)."""
        d = dataclasses.asdict(self)
        d["keep_rates"] = {str(k): v for k, v in self.keep_rates.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preset:
        d = dict(d)
        d["keep_rates"] = {int(k): float(v) for k, v in d.get("keep_rates", {}).items()}
        for key in ("pretrain_grid", "fpn_taps", "box_weights", "box_extend", "mean", "std",
                    "labels"):
            if key in d:
                d[key] = tuple(d[key])
        p = cls(**d)
        p.validate()
        return p


_VIT_B = Preset(name="vit_b", box_extend=(0.0, 0.0))
_KTP_B = {3: 0.7, 6: 0.7, 9: 0.7}

PRESETS: dict[str, Preset] = {
    "vit_b": _VIT_B,
    "vit_b_ktp": dataclasses.replace(_VIT_B, name="vit_b_ktp", keep_rates=_KTP_B,
                                     box_extend=(0.4, 0.2)),
    "vit_b_ktp_ew": dataclasses.replace(
        _VIT_B, name="vit_b_ktp_ew", keep_rates={3: 0.6, 6: 0.6, 9: 0.6}, keyframe_weight=4.0,
        box_extend=(0.4, 0.2),
    ),
    "vit_l_ktp": Preset(
        name="vit_l_ktp", embed_dim=1024, depth=24, num_heads=16,
        keep_rates={6: 0.7, 12: 0.7, 18: 0.7}, fpn_taps=(5, 11, 17, 23),
        decoder_dim=512, decoder_depth=12, decoder_heads=8,
    ),
    # Every module type of vit_b_ktp at small sizes: for tests (16x288x512 in well under 2 s).
    "tiny": Preset(
        name="tiny", embed_dim=192, depth=12, num_heads=3, keep_rates=_KTP_B,
        fpn_dim=64, num_proposals=20, loc_stages=2, loc_heads=4, dynamic_dim=16, loc_ffn_dim=256,
        decoder_dim=96, decoder_depth=2, decoder_heads=3, action_hidden=256,
    ),
    # The shipped demo model (trained on evad.datasets.synthetic): small enough to train on a
    # 2-core CPU and to commit as fp16 under 5 MB.
    "demo": Preset(
        name="demo", embed_dim=96, depth=8, num_heads=3, keep_rates={2: 0.7, 4: 0.7, 6: 0.7},
        fpn_taps=(1, 3, 5, 7), fpn_dim=64, num_proposals=16, loc_stages=3, loc_heads=4,
        dynamic_dim=16, loc_ffn_dim=256, decoder_dim=96, decoder_depth=2, decoder_heads=3,
        action_hidden=256, num_classes=8, labels=SYNTHETIC_ACTIONS, short_side=128,
        # 8 frames 2 apart: about 1 s of the 15 fps synthetic videos (the released 16 x 4 spans
        # 2 s of 30 fps video) at half the encoder cost, so the demo trains within the hour.
        num_frames=8, frame_stride=2, pretrain_grid=(4, 14, 14),
        # 3 stages (each stage's proposal self-attention is what suppresses duplicates; 2 vs 3
        # was not measured in isolation); 5 x 5 RoIs keep the fp16 weights under 5 MB with it.
        pooler_resolution=5,
    ),
}


def get_preset(name: str, **overrides) -> Preset:
    """The preset called ``name``, with fields overridden (``num_classes=24``, ``keep_rate=0.6``).

    Raises:
        ConfigError: unknown preset name or field.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    return preset.replace(**overrides) if overrides else preset
