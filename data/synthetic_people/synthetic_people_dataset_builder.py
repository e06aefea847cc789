"""TFDS's entry point for :mod:`upgpt_jax.data.builders.synthetic_people`:

    tfds build data/synthetic_people --data_dir DIR

``tfds build`` takes a folder's builder to be the one class *defined* in ``<folder>_dataset_builder.py``:
hence a subclass, unregistered because the package's class holds the dataset's name.
"""
from upgpt_jax.data.builders.synthetic_people import SyntheticPeople


class Builder(SyntheticPeople, skip_registration=True):
    pass
