"""The nucleus pipeline, one module per stage, composed by :mod:`bundle.pipeline.segmenter`.

``check`` (inputs, output names, output folder) -> ``tiles`` (cores and read windows) -> ``predict`` (the network
on a tile, ``runtimes``: PyTorch or OpenVINO, ``inferers``: flip TTA) -> ``split`` (instances) -> ``measure``
(nuclei) -> ``report`` (``report.json``); reading and writing files is in :mod:`bundle.io`.
"""
