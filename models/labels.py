"""Action label names: AVA v2.2 (80 classes, ids 1..80; output i is id i + 1)."""

from __future__ import annotations

__all__ = ["AVA_ACTIONS", "AVA_EVAL_IDS", "SYNTHETIC_ACTIONS", "SYNTHETIC_PRESETS", "label_names",
           "synthetic_only", "trained_on"]

AVA_ACTIONS: tuple[str, ...] = (
    # person movement (ids 1-14)
    "bend/bow (at the waist)", "crawl", "crouch/kneel", "dance", "fall down", "get up",
    "jump/leap", "lie/sleep", "martial art", "run/jog", "sit", "stand", "swim", "walk",
    # object manipulation (ids 15-63)
    "answer phone", "brush teeth", "carry/hold (an object)", "catch (an object)", "chop",
    "climb (e.g., a mountain)", "clink glass", "close (e.g., a door, a box)", "cook", "cut", "dig",
    "dress/put on clothing", "drink", "drive (e.g., a car, a truck)", "eat", "enter", "exit",
    "extract", "fishing", "hit (an object)", "kick (an object)", "lift/pick up",
    "listen (e.g., to music)", "open (e.g., a window, a car door)", "paint", "play board game",
    "play musical instrument", "play with pets", "point to (an object)", "press",
    "pull (an object)", "push (an object)", "put down", "read",
    "ride (e.g., a bike, a car, a horse)", "row boat", "sail boat", "shoot", "shovel", "smoke",
    "stir", "take a photo", "text on/look at a cellphone", "throw", "touch (an object)",
    "turn (e.g., a screwdriver)", "watch (e.g., TV)", "work on a computer", "write",
    # person interaction (ids 64-80)
    "fight/hit (a person)", "give/serve (an object) to (a person)", "grab (a person)",
    "hand clap", "hand shake", "hand wave", "hug (a person)", "kick (a person)", "kiss (a person)",
    "lift (a person)", "listen to (a person)", "play with kids", "push (another person)",
    "sing to (e.g., self, a person, a group)", "take (an object) from (a person)",
    "talk to (e.g., self, a person, a group)", "watch (a person)",
)

# The 60 classes the AVA evaluation scores (ava_action_list_v2.1_for_activitynet_2018).
AVA_EVAL_IDS: tuple[int, ...] = (
    1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 20, 22, 24, 26, 27, 28, 29, 30, 34, 36,
    37, 38, 41, 43, 45, 46, 47, 48, 49, 51, 52, 54, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66,
    67, 68, 69, 70, 72, 73, 74, 76, 77, 78, 79, 80,
)


# The actions of evad.datasets.synthetic (the demo model's classes, ids 1..8).
SYNTHETIC_ACTIONS: tuple[str, ...] = ("walk", "run", "jump", "wave", "sit", "crouch", "spin",
                                      "carry")


def label_names(num_classes: int, names: tuple[str, ...] = ()) -> list[str]:
    """Names of the model's outputs: ``names`` when it has one per class, AVA's for 80 classes,
    else ``class_<id>`` (ids from 1)."""
    if len(names) == num_classes:
        return list(names)
    if num_classes == len(AVA_ACTIONS):
        return list(AVA_ACTIONS)
    return [f"class_{i + 1}" for i in range(num_classes)]


#: presets whose only training data is this project's synthetic generator
SYNTHETIC_PRESETS = ("demo",)


def synthetic_only(preset_name: str, random_weights: bool = False) -> bool:
    """Whether a model knows the synthetic stick figures only (its preset's trained weights),
    so real footage would give it nothing meaningful (the runtime says so). Random weights know
    nothing, so they are not this."""
    return preset_name in SYNTHETIC_PRESETS and not random_weights


def trained_on(preset_name: str, num_classes: int, random_weights: bool = False) -> str:
    """What a model's weights were trained on, as far as its preset and class count tell:
    the demo preset knows synthetic stick figures only; 80 classes is AVA v2.2, 24 UCF101-24,
    21 JHMDB-21 (the official releases)."""
    if random_weights:
        return "nothing (random weights)"
    if synthetic_only(preset_name):
        return "synthetic stick-figure clips only (not real footage)"
    return {80: "AVA v2.2 (80 actions)", 24: "UCF101-24", 21: "JHMDB-21"}.get(
        num_classes, f"{num_classes} action classes")
