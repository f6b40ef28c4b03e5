"""Model presets: every size and behavioural number of an EVAD model, in one place.

The four released configurations (``docs/model.md``, "Presets") plus
``tiny``, which has every module type of the real model at small sizes, for tests.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from evad.errors import ConfigError
from evad.models.labels import SYNTHETIC_ACTIONS, label_names, synthetic_only, trained_on
from evad.runner import ModelSpec

__all__ = ["LOC_ACTIVATIONS", "POOLER_TYPES", "PRESETS", "TIED_BEFORE", "Preset", "get_preset",
           "model_spec"]

# The values of MODEL.ROI_BOX_HEAD.POOLER_TYPE that detectron2's ROIPooler runs on EVAD's
# axis-aligned boxes (its "ROIAlignRotated" needs (R, 6) rotated boxes and fails on them).
POOLER_TYPES = ("ROIAlignV2", "ROIAlign", "ROIPool")
# MODEL.SparseRCNN.ACTIVATION values the official RCNNHead can run: its _get_activation_fn also
# returns glu, but glu halves DIM_FEEDFORWARD and linear2 then cannot take the result.
LOC_ACTIVATIONS = ("relu", "gelu")


# Bounds that no EVAD configuration comes near (ViT-L: width 1024, depth 24, 16 heads), so that
# a corrupt or hostile config is refused instead of allocating tens of GB.
_INT_RANGES = {
    "embed_dim": (8, 4096), "depth": (1, 64), "num_heads": (1, 64), "patch_size": (1, 64),
    "tubelet_size": (1, 16), "num_frames": (1, 256), "fpn_dim": (8, 4096),
    "num_proposals": (1, 1000), "loc_stages": (1, 16), "loc_heads": (1, 64),
    "dynamic_dim": (1, 1024), "loc_ffn_dim": (1, 16384), "num_cls_layers": (0, 16),
    "num_reg_layers": (0, 16), "pooler_resolution": (1, 64), "pooler_sampling_ratio": (-1, 64),
    "decoder_dim": (8, 4096), "decoder_depth": (1, 64), "decoder_heads": (1, 64),
    "action_pooler_resolution": (1, 64), "action_pooler_stride": (1, 256),
    "action_hidden": (1, 16384), "num_classes": (1, 10000), "num_eval_act_classes": (0, 10000),
    "frame_stride": (1, 64), "short_side": (32, 4096), "max_long_side": (32, 16384),
}
_FLOAT_RANGES = {"mlp_ratio": (0.01, 64.0), "decoder_mlp_ratio": (0.0, 64.0),
                 "keyframe_weight": (0.0, 1e6), "person_threshold": (0.0, 1.0),
                 "layer_norm_eps": (0.0, 1.0)}
_MAX_ENCODER_PARAMS = 2e9


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
    # Encoder attention logit scale (ViT.QK_SCALE); None: head_dim ** -0.5. The decoder always
    # uses its own head_dim ** -0.5: the official head never passes QK_SCALE to it.
    qk_scale: float | None = None
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
    pooler_resolution: int = 7  # box-head RoI bins per side (MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION)
    pooler_sampling_ratio: int = 2  # samples per bin and axis, both RoI poolers
    pooler_type: str = "ROIAlignV2"  # both RoI poolers, one of POOLER_TYPES
    loc_activation: str = "relu"  # of each stage's FFN, one of LOC_ACTIVATIONS
    box_weights: tuple[float, float, float, float] = (2.0, 2.0, 1.0, 1.0)
    # Classification branch (context refinement decoder).
    decoder_dim: int = 384
    decoder_depth: int = 6
    decoder_heads: int = 6
    decoder_mlp_ratio: float = 4.0  # MODEL.CRD.MLP_RATIO (its own key, not ViT.MLP_RATIO)
    # Actor RoI pooling on the decoder's token map (DETECTION.ROI_XFORM_RESOLUTION and
    # DETECTION.SPATIAL_SCALE_FACTOR): bins per side, then the max over the bins and the mean
    # over time; the stride (input pixels per token, a power of two) scales the actor boxes.
    action_pooler_resolution: int = 7
    action_pooler_stride: int = 16
    action_hidden: int = 2048
    num_classes: int = 80
    labels: tuple[str, ...] = ()  # class names when not AVA's (see evad.models.labels)
    box_extend: tuple[float, float] = (0.4, 0.2)  # (x, y) fraction of the box size
    # Official test-time action scores: softmax over the 14 AVA pose classes instead of their
    # sigmoid (MODEL.SparseRCNN.SOFTMAX_POSE), and only each actor's top k scores kept, the rest
    # 0 (MODEL.SparseRCNN.NUM_EVAL_ACT_CLASSES; 0 keeps all). Both are folded into the logits so
    # that the sigmoid every consumer applies gives the official scores (see EVADHead.classify).
    softmax_pose: bool = False
    num_eval_act_classes: int = 0
    # Inference constants and pre-processing.
    person_threshold: float = 0.7
    frame_stride: int = 4
    short_side: int = 288
    max_long_side: int = 1333
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)
    layer_norm_eps: float = 1e-6

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
        """Raise ConfigError when a field has the wrong type, is out of range, or contradicts
        another (the message names the field)."""
        self._validate_types()
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
        self._validate_heads()

    def _validate_types(self) -> None:
        """Each field of the type it declares and in a range a real EVAD can have, so that a
        bad config is refused before torch allocates for it (a cfg asking for a 4096-wide,
        64-deep encoder would need over 50 GB)."""
        for name, (lo, hi) in _INT_RANGES.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"{self.name}: {name} = {v!r} must be an integer in {lo}..{hi}")
        for name, (lo, hi) in _FLOAT_RANGES.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                    math.isfinite(v) and lo <= v <= hi):
                raise ConfigError(f"{self.name}: {name} = {v!r} must be a finite number in "
                                  f"[{lo:g}, {hi:g}]")
        for name, n, positive in (("mean", 3, False), ("std", 3, True), ("box_extend", 2, False),
                                  ("box_weights", 4, True), ("pretrain_grid", 3, True),
                                  ("fpn_taps", 4, False)):
            v = getattr(self, name)
            ok = isinstance(v, tuple) and len(v) == n and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                and (x > 0 if positive else x >= 0) for x in v)
            if not ok:
                raise ConfigError(f"{self.name}: {name} = {v!r} must be {n} finite numbers"
                                  + (" > 0" if positive else " >= 0"))
        if not all(isinstance(x, str) for x in self.labels) or (
                self.labels and len(self.labels) != self.num_classes):
            raise ConfigError(f"{self.name}: labels must be {self.num_classes} names (one per "
                              f"class) or none, not {len(self.labels)}")
        if not isinstance(self.softmax_pose, bool):
            raise ConfigError(f"{self.name}: softmax_pose = {self.softmax_pose!r} must be true "
                              "or false")
        if self.qk_scale is not None and (isinstance(self.qk_scale, bool) or not isinstance(
                self.qk_scale, (int, float))):
            raise ConfigError(f"{self.name}: qk_scale = {self.qk_scale!r} must be null or a "
                              "number")
        params = self.depth * self.embed_dim ** 2 * (4 + 2 * self.mlp_ratio)
        if params > _MAX_ENCODER_PARAMS:
            raise ConfigError(f"{self.name}: an encoder of depth {self.depth} and width "
                              f"{self.embed_dim} has {params / 1e9:.1f} G parameters; EVAD's "
                              f"largest (ViT-L) has 0.3 G and this reference builds at most "
                              f"{_MAX_ENCODER_PARAMS / 1e9:.0f} G")

    def _validate_heads(self) -> None:
        """The RoI poolers, activations and score options, with the official behaviour each
        limit comes from."""
        if self.qk_scale is not None and not (math.isfinite(self.qk_scale) and self.qk_scale):
            raise ConfigError(f"{self.name}: qk_scale must be None (head_dim ** -0.5) or a "
                              "non-zero number (the official `qk_scale or head_dim ** -0.5` "
                              "reads 0 as None)")
        if self.pooler_type not in POOLER_TYPES:
            raise ConfigError(f"{self.name}: pooler_type {self.pooler_type!r} is not one of "
                              f"{', '.join(POOLER_TYPES)} (detectron2's ROIPooler types for "
                              "axis-aligned boxes)")
        if self.pooler_sampling_ratio <= 0 and self.pooler_type != "ROIPool":
            raise ConfigError(f"{self.name}: pooler_sampling_ratio must be > 0; detectron2's "
                              "adaptive mode (0: ceil(RoI size / bins) samples per bin, per RoI) "
                              "is not implemented by evad::roi_align_3d")
        if self.pooler_resolution < 1 or self.action_pooler_resolution < 1:
            raise ConfigError(f"{self.name}: RoI pooler resolutions must be >= 1")
        s = self.action_pooler_stride
        if int(s) != s or s < 1 or int(s) & (int(s) - 1):
            raise ConfigError(f"{self.name}: action_pooler_stride {s} must be a power of two >= 1 "
                              "(detectron2's ROIPooler asserts its feature stride is one)")
        if self.loc_activation not in LOC_ACTIVATIONS:
            raise ConfigError(f"{self.name}: loc_activation {self.loc_activation!r} is not one "
                              f"of {', '.join(LOC_ACTIVATIONS)} (the official RCNNHead FFN runs "
                              "relu or gelu; its glu halves the width linear2 expects)")
        if int(self.decoder_dim * self.decoder_mlp_ratio) < 1:
            raise ConfigError(f"{self.name}: decoder_mlp_ratio {self.decoder_mlp_ratio} leaves "
                              "no decoder MLP channels")
        if not 0 <= self.num_eval_act_classes <= self.num_classes:
            raise ConfigError(f"{self.name}: num_eval_act_classes {self.num_eval_act_classes} "
                              f"must be in 0..num_classes = {self.num_classes} (the official "
                              "torch.topk fails beyond the class count)")

    def to_dict(self) -> dict:
        """JSON-able fields (keep_rates keys become strings)."""
        d = dataclasses.asdict(self)
        d["keep_rates"] = {str(k): v for k, v in self.keep_rates.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preset:
        """Inverse of ``to_dict``. Dicts written before the action pooler and decoder MLP had
        fields of their own (export metadata) describe models where they followed the box
        pooler, the patch size and the encoder MLP, so those ties are kept for them."""
        d = dict(d)
        for new, old in TIED_BEFORE.items():
            if new not in d and old in d:
                d[new] = d[old]
        d["keep_rates"] = {int(k): float(v) for k, v in d.get("keep_rates", {}).items()}
        for key in ("pretrain_grid", "fpn_taps", "box_weights", "box_extend", "mean", "std",
                    "labels"):
            if key in d:
                d[key] = tuple(d[key])
        p = cls(**d)
        p.validate()
        return p


#: fields that earlier versions of this reference did not have -> the field each followed
#: then: a preset dict (export metadata) or a config this project wrote before the field had
#: its own value keeps the tie (``Preset.from_dict``, ``evad.models.checkpoint_cfg``)
TIED_BEFORE = {"action_pooler_resolution": "pooler_resolution",
               "action_pooler_stride": "patch_size", "decoder_mlp_ratio": "mlp_ratio"}

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
        # It was trained with 5 x 5 actor RoIs too.
        pooler_resolution=5, action_pooler_resolution=5,
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


def model_spec(preset: Preset, name: str, random_weights: bool = False) -> ModelSpec:
    """What the clip path and the runtime need of a preset's torch model: its clip, resize
    and normalisation; no fixed input (the torch reference pads to multiples of 32).

    Args:
        preset: the architecture and its data numbers.
        name: what the model is, for messages (``checkpoint x.pth``).
        random_weights: the weights are random (not trained), as ``trained_on`` says.
    """
    return ModelSpec(name, None, preset.num_frames, preset.frame_stride, preset.short_side,
                     preset.max_long_side, (preset.mean[0], preset.mean[1], preset.mean[2]),
                     (preset.std[0], preset.std[1], preset.std[2]), preset.person_threshold,
                     label_names(preset.num_classes, preset.labels), None, preset.name,
                     trained_on(preset.name, preset.num_classes, random_weights),
                     synthetic_only(preset.name, random_weights),
                     preset.patch_size, preset.tubelet_size)


def preset_metadata(preset: Preset, labels: list[str] | None = None) -> dict[str, Any]:
    """The keys of a model's evad metadata that its preset alone fixes (the architecture, the
    class names, the clip, resize and normalisation numbers, the person threshold): what an
    export (``evad.export.metadata.build_metadata``) and the torch model
    (``evad.models.runner.model_metadata``) record alike. ``labels`` overrides the preset's
    class names."""
    return {
        "preset_name": preset.name,
        "preset": preset.to_dict(),
        "num_classes": preset.num_classes,
        "labels": labels or label_names(preset.num_classes, preset.labels),
        "num_frames": preset.num_frames,
        "frame_stride": preset.frame_stride,
        "mean": list(preset.mean),
        "std": list(preset.std),
        "short_side": preset.short_side,
        "max_long_side": preset.max_long_side,
        "person_threshold": preset.person_threshold,
    }
