"""Load shapes: one module per shape, each a registered pydantic class (see ``base``).

Importing this package registers every shape and builds ``LoadSpec``, the scenario's
``load`` field: a union discriminated by ``shape``. A new shape is one module here, its
line below, and its test.
"""

from functools import reduce
from operator import or_
from typing import Annotated

from pydantic import Field

from loadgen.config.shapes import (  # noqa: F401  (registers each shape)
    burst,
    concurrency,
    constant,
    gamma,
    poisson,
    ramp,
    trace,
)
from loadgen.config.shapes.base import SHAPES

LoadSpec = Annotated[reduce(or_, (SHAPES[n] for n in sorted(SHAPES))), Field(discriminator="shape")]
OPEN_SHAPES = tuple(name for name, cls in SHAPES.items() if not cls.closed)
