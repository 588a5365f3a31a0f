"""Shared by tests/test_ext_*.py: skip (with the reason) when hdkd._C is not built."""
from __future__ import annotations

import pytest

from hdkd.ops.ext.build import load

EXT, EXT_REASON = load()
requires_ext = pytest.mark.skipif(EXT is None, reason=f"hdkd._C unavailable: {EXT_REASON}")
