"""evad.cli: the commands that span stages, above all of them.

``evad-export`` (checkpoint -> ONNX -> engine: models, export, engines), ``evad-parity`` (a
backend against the torch reference: export's judge, the runtime's backend choice) and
``evad-trt-run`` (the runtime, with the demo video and model as defaults: datasets, export).
Each stage's own command stays in its stage (``evad-build-engine``, ``evad-flops``,
``evad-train``, ``evad-eval``, ``evad-build-plugins``).
"""
