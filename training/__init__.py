"""evad.training: the released losses (Hungarian matching, deep supervision, action BCE) and a
trainer for any preset (``evad-train``)."""
