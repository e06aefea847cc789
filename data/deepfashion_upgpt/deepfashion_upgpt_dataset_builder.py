"""TFDS's entry point for :mod:`upgpt_jax.data.builders.deepfashion_upgpt`:

    tfds build data/deepfashion_upgpt --manual_dir DF --data_dir DIR

``tfds build`` takes a folder's builder to be the one class *defined* in ``<folder>_dataset_builder.py``:
hence a subclass, unregistered because the package's class holds the dataset's name.
"""
from upgpt_jax.data.builders.deepfashion_upgpt import DeepfashionUpgpt


class Builder(DeepfashionUpgpt, skip_registration=True):
    pass
