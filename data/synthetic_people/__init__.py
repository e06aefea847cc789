"""The ``synthetic_people`` TFDS builder (see :mod:`.synthetic_people_dataset_builder`)."""
from data.synthetic_people.synthetic_people_dataset_builder import SyntheticPeople

__all__ = ["SyntheticPeople"]
