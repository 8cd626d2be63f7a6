"""The pseudonym map, ``row_token,entity_id``; its format lives in :mod:`pplink.entity_files`.

Kept so existing imports work; new code imports :mod:`pplink.entity_files`.
"""

from pplink.entity_files import MAP_HEADER, read_entity_map, write_entity_map

__all__ = ["MAP_HEADER", "read_entity_map", "write_entity_map"]
