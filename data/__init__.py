"""TFDS builders of upgpt-jax: ``synthetic_people`` (embedded, no download) and ``deepfashion_upgpt``.

Importing a builder package registers its dataset with TFDS. Prepare either with
``python -m upgpt_jax.data.prepare``; read without TensorFlow with
``tfds.builder_from_directory(DIR).as_data_source(split)`` or ``tfds.data_source(NAME, data_dir=...)``.
"""
