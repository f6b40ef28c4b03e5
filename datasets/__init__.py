"""evad.datasets: the procedural action clips of the demo model, AVA-format annotation I/O and
the clip dataset the trainer reads."""
