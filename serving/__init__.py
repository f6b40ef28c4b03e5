"""Serving and scale-out: a Triton Inference Server model repository from an export, the
Python-backend model that answers videos and clips, a loopback server launcher and a load test.
Downstream of the runtime: it serves what ``evad-trt-run`` computes."""
