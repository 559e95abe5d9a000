"""Built-in dataset generators: one module per category (its good-part renderer and its defect table),
the drawing primitives they share (`draw`), and the registry and MVTec-layout writer (`writer`)."""

from pipeline.data.generators.writer import (CATEGORIES, DEFECT_TYPES, generate_builtin, generate_category,
                                             render_sample)

__all__ = ["CATEGORIES", "DEFECT_TYPES", "generate_builtin", "generate_category", "render_sample"]
