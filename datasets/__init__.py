"""evad.datasets: the procedural action clips of the demo model, AVA-format annotation I/O and
the clip dataset the trainer reads."""

# Bumped whenever the same seed would render or annotate differently (caches key on it); kept
# here, free of imports, so the torch-free runtime can read it.
# 2: person boxes gained a margin (evad.datasets.synthetic.BOX_MARGIN).
# 3: taller figures (0.4-0.7 of the frame), thicker limbs, a larger carried parcel.
GENERATOR_VERSION = 3
