"""Dataset converters: each reads one source format and hands the shared engine a ``Job``.

* ``registry`` — every dataset in one table (``DATASETS``): its converter module and help line, its
  standard schedule (the recipe preset's base) and the ``tools/convert`` command that makes its shard;
* ``validate`` — the engine's first half: ``Split``/``Job``/``Problems``, path, label and decode checks,
  the "first 20 problems plus a count" report, ``--skip-bad``;
* ``engine`` — the second half: ``FileSource`` and ``run(job, WriteOptions)``, which writes every split
  with :func:`fastlt.shards.write_shard` (train first; its counts define every split's groups);
* ``images`` — one JPEG/PNG reader for validation and writing (simplejpeg fast path, PIL fallback);
* ``longtail`` — the exponential long-tail profile and the CIFAR-LT reference draw;
* one module per source format: ``digits`` (embedded), ``cifar``, ``oltr`` (ImageNet-LT, Places-LT),
  ``inat``, ``imagefolder``; each exposes ``add_arguments(parser)`` and ``build(args) -> Job``;
* ``synthetic`` — iNat-2018-layout photographs for benchmarks and tests (``tools/convert synth-inat``).
"""
