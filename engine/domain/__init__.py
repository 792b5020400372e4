"""The ground floor: the vocabulary every other part of nextick stands on.

``quote`` (the quote record and its flags), ``instrument`` (the instrument table), ``calendar``
(sessions), ``timestamps`` (nanosecond time: constants, conversions, unit detection), ``validate``
(the bad-input rules), ``latency`` (stage stamps and percentiles) and ``source`` (the quote source
protocol). Modules here import the standard library, numpy and msgspec, and each other; nothing
from ``feeds``, ``strategies``, ``bench`` or the rest of ``engine`` (tests/test_layers.py checks it).
"""
