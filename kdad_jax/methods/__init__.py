"""Method registry: ``config.method`` -> a factory building the method's pure functions."""

from kdad_jax.errors import UserError
from kdad_jax.methods import (dskd, efficientad, mixed, patch_teacher_pretraining, stfpm, students,
                              teacher_pretraining)
from kdad_jax.methods.base import Method

_FACTORIES = {
    "efficientad": efficientad.make,
    "efficientad_teacher": teacher_pretraining.make,
    "stfpm": stfpm.make,
    "dskd": dskd.make,
    "mixed": mixed.make,
    "students": students.make,
    "students_teacher": patch_teacher_pretraining.make,
    "eca_mskdad": stfpm.make,  # the same method with ECA, augmented pairs and relative distances
}


def get_method(config) -> Method:
    if config.method not in _FACTORIES:
        raise UserError(f"unknown method {config.method!r}; known: {sorted(_FACTORIES)}")
    try:
        return _FACTORIES[config.method](config)
    except ValueError as e:  # the factories validate config values (sizes, choices) with ValueError
        raise UserError(str(e)) from None
