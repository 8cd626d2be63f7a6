"""The node-local token file, ``row_token,record_id``; its format lives in :mod:`pplink.entity_files`.

Kept so existing imports work; new code imports :mod:`pplink.entity_files`.
"""

from pplink.entity_files import TOKENS_HEADER, read_tokens, write_tokens

__all__ = ["TOKENS_HEADER", "read_tokens", "write_tokens"]
