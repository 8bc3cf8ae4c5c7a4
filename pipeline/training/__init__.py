"""Training stage: SFNO checkpoints per seed with DDP, validation and calibration.

Modules (importing this package stays light; torch loads with the modules):

- ``config``: the ``model`` and ``training`` config sections;
- ``dataset``: the analysis store checked and normalised, windows, the resumable sampler;
- ``losses``, ``optim``: area-weighted loss, AdamW with warm-up + cosine;
- ``trainer``: the loop of one seed on every rank (``Trainer.fit``, ``Trainer.calibrate``);
- ``checkpoint``: atomic self-contained checkpoints, ``load_checkpoint(path) -> (model, info)``;
- ``forecast``: ``Forecaster`` (physical state in, physical states out; ``step``, ``rollout``);
- ``validation``: RMSE per channel and lead against persistence and climatology;
- ``calibration``: the 48 h RMSE beside each checkpoint, ``load_calibration(directory)``;
- ``run``: the torchrun entry point ``python -m pipeline.training.run CONFIG --seed K``;
- ``launch``: torchrun command lines and a watched subprocess per seed.
"""
