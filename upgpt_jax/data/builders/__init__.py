"""TFDS builders of upgpt-jax, one module per dataset: ``synthetic_people`` (embedded, no download)
and ``deepfashion_upgpt`` (manual download).

Importing a builder's module registers its dataset with TFDS. Prepare either with
``python -m upgpt_jax.data.prepare`` (or ``tfds build data/<name>``: the repository's ``data/``
folder holds TFDS's entry points, which subclass these builders); read without TensorFlow with
``tfds.builder_from_directory(DIR).as_data_source(split)`` or ``tfds.data_source(NAME, data_dir=...)``.
"""
