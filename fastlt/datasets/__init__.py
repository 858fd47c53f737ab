"""Dataset converters: each reads one source format and hands the shared engine a ``Job``.

* ``registry`` — every dataset in one table (``DATASETS``): its converter module and help line, its
  standard schedule (the recipe preset's base) and the ``tools/convert`` command that makes its shard;
* ``validate`` — the rules: ``Split``/``Job``/``Problems``, path and label checks, the "first 20 problems
  plus a count" report, ``--skip-bad``;
* ``engine`` — ``run(job, WriteOptions)``: every image decoded once, in the worker process that validates
  it and makes its row; all splits written under temporary names and published together (train first; its
  counts define every split's groups);
* ``images`` — source image → shard row (strict libjpeg-turbo decode, DCT scaling, area resize, one
  encode, or the source JPEG itself), with ``turbojpeg`` (the TurboJPEG API), ``jpeg`` (scan damage
  libjpeg misses) and ``resize``;
* ``longtail`` — the exponential long-tail profile and the CIFAR-LT reference draw;
* one module per source format: ``digits`` (embedded), ``cifar``, ``oltr`` (ImageNet-LT, Places-LT),
  ``inat``, ``imagefolder``; each exposes ``add_arguments(parser)`` and ``build(args) -> Job``;
* ``synthetic`` — iNat-2018-layout photographs for benchmarks and tests (``tools/convert synth-inat``).
"""
